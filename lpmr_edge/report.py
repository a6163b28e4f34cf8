"""The deployment report: per-target tables, trade-off plots, the study's claims checked, the recommendation.

``write_report`` reads result directories (see ``lpmr_edge.pick``) and writes, into one directory that
replaces any previous report only once everything is written:

  report.html   one self-contained page (plots inlined as base64 PNG; no script, no network)
  report.md     the same tables and verdicts in Markdown, linking the plot files
  report.json   everything in machine-readable form (see ``build_report``)
  plots/*.png   the figures

Every quantized result is compared with its FP32 reference (``lpmr_edge.pick.reference_for``) by a
``Comparator``: by default ``PairedComparator`` (the suite's paired bootstrap on the stored per-sample
outputs, ``lpmr_edge.compare``), falling back to ``unpaired_delta`` (the two stored CIs combined) for
results without outputs.
"""
from __future__ import annotations

import base64
import html
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lpmr_edge import plots
from lpmr_edge.errors import UserError
from lpmr_edge.manifest import atomic_write_bytes, now_utc
from lpmr_edge.pick import (
    HOST_TARGET,
    METRIC_BY_KEY,
    METRICS,
    OBJECTIVES,
    OOD_SCORE,
    Constraints,
    Estimate,
    MetricSpec,
    Result,
    comparable,
    format_estimate,
    group_results,
    load_results,
    mean_estimate,
    ood_sets,
    pick,
    reference_for,
)

FORMAT = "lpmr-edge-report/1"
HTML_FILE, MARKDOWN_FILE, JSON_FILE, PLOTS_DIR = "report.html", "report.md", "report.json", "plots"
PRETRAINED_LABEL = "open_clip pretrained weights"
HOLDS, DOES_NOT_HOLD, NOT_SIGNIFICANT, NOT_MEASURED = "holds", "does not hold", "not significant", "not measured"


@dataclass(frozen=True)
class Delta:
    """``result - reference`` for one metric, with its 95% CI and whether the change is significant."""

    value: float
    ci: tuple[float, float] | None
    significant: bool
    better: bool  # the change goes the metric's good way (meaningful when significant)
    method: str

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {"value": self.value, "ci": list(self.ci) if self.ci else None, "significant": self.significant,
                "better": self.better, "method": self.method}


Comparator = Callable[[Result, Result, MetricSpec], "Delta | None"]


def delta_from_interval(spec: MetricSpec, value: float, ci: tuple[float, float] | None, method: str) -> Delta:
    """A Delta whose significance is "the CI excludes zero"."""
    significant = ci is not None and (ci[0] > 0 or ci[1] < 0)
    return Delta(value, ci, significant, spec.better(value, 0.0), method)


def unpaired_delta(result: Result, reference: Result, spec: MetricSpec) -> Delta | None:
    """Difference of the two estimates; its CI combines the two CIs' half-widths in quadrature.

    Treats the results as independent, which is conservative for results on the same images.
    """
    if spec.key not in result.metrics or spec.key not in reference.metrics:
        return None
    mine, theirs = result.metrics[spec.key], reference.metrics[spec.key]
    value = mine.value - theirs.value
    ci = None
    if mine.ci and theirs.ci:
        ci = (value - math.hypot(mine.value - mine.ci[0], theirs.ci[1] - theirs.value),
              value + math.hypot(mine.ci[1] - mine.value, theirs.value - theirs.ci[0]))
    return delta_from_interval(spec, value, ci, "unpaired: difference of bootstrap estimates, CIs combined")


PAIRED_KEYS = {"top1": "id.top1", "ece": "id.ece", "nll": "id.nll", "auroc": f"ood.{{set}}.{OOD_SCORE}.auroc",
               "fpr95": f"ood.{{set}}.{OOD_SCORE}.fpr_at_95_tpr", "corrupted": "corruptions.mean.accuracy",
               "shifted": "shift.top1", "worst_group": "spurious.worst_group"}


class PairedComparator:
    """Deltas from ``lpmr_edge.compare.compare``: a paired bootstrap over the per-sample outputs both
    results stored. Falls back to ``unpaired_delta`` for a pair it cannot compare, recording why in
    ``fallbacks``. OOD deltas are averaged over the OOD sets like the OOD metrics (CI: mean of bounds)."""

    method = "paired bootstrap on the same samples"

    def __init__(self, n_resamples: int | None = None) -> None:
        self.n_resamples = n_resamples
        self.fallbacks: dict[str, str] = {}  # "<target> <variant> vs <reference>" -> why
        self._comparisons: dict[tuple[Path, Path], Mapping[str, Any] | None] = {}

    def _comparison(self, result: Result, reference: Result) -> Mapping[str, Any] | None:
        key = (result.directory, reference.directory)
        if key in self._comparisons:
            return self._comparisons[key]
        self._comparisons[key] = None
        pair = f"{result.target} {result.variant} vs {reference.variant}"
        if not (has_outputs(result) and has_outputs(reference)):
            self.fallbacks[pair] = "no per-sample outputs stored beside the metrics"
            return None
        from lpmr_edge.compare import compare

        try:
            self._comparisons[key] = compare(result.directory, reference.directory, self.n_resamples)
        except UserError as error:
            self.fallbacks[pair] = str(error)
        return self._comparisons[key]

    def __call__(self, result: Result, reference: Result, spec: MetricSpec) -> Delta | None:
        comparison = self._comparison(result, reference)
        if comparison is None:
            return unpaired_delta(result, reference, spec)
        pattern = PAIRED_KEYS[spec.key]
        keys = [pattern.format(set=name) for name in ood_sets(result.raw["metrics"])] if "{set}" in pattern \
            else [pattern]
        entries = [comparison["deltas"].get(key) for key in keys]
        if not keys or None in entries:
            return None
        mean = mean_estimate([Estimate(entry["delta"], tuple(entry["ci"]) if None not in entry["ci"] else None)
                              for entry in entries])
        return delta_from_interval(spec, mean.value, mean.ci, self.method)


@dataclass(frozen=True)
class Row:
    """One result in a target's table, with its reference and its deltas against it."""

    result: Result
    reference: Result | None
    deltas: Mapping[str, Delta]
    spectrum: Mapping[str, Any] | None  # lpmr_edge.spectrum diagnostic against the reference

    def to_json(self) -> dict[str, Any]:
        """JSON form: the result's summary plus ``reference``, per-metric ``delta`` and ``spectrum``
        (the spectral diagnostic without its per-rank arrays)."""
        summary = self.result.describe()
        for key, delta in self.deltas.items():
            summary["metrics"][key]["delta"] = delta.to_json()
        spectrum = {k: v for k, v in self.spectrum.items() if k != "per_rank"} if self.spectrum else None
        return {**summary, "device": device_label(self.result),
                "reference": self.reference.variant if self.reference else None,
                "reference_dir": str(self.reference.directory) if self.reference else None, "spectrum": spectrum}


def device_label(result: Result) -> str:
    """Which device produced a result's numbers: the device the runtime ran on, or this host."""
    device = result.manifest["runtime"].get("device")
    if device:
        emulated = ", emulated" if device.get("emulated") else ""
        return f"{device.get('label', device.get('kind', '?'))} ({device.get('machine', '?')}{emulated})"
    return f"host ({result.manifest.get('machine', {}).get('arch', '?')})"


def has_outputs(result: Result) -> bool:
    """True if the result directory holds its clean-ID per-sample outputs (needed for paired statistics)."""
    return (result.directory / "outputs" / "id.npz").is_file()


def _spectrum(result: Result, reference: Result) -> dict[str, Any] | None:
    """The spectral diagnostic of a result's clean-ID features against its reference's, if both stored them."""
    if not (has_outputs(result) and has_outputs(reference)):
        return None
    from lpmr_edge.spectrum import spectrum_of_results

    try:
        return spectrum_of_results(result.directory, reference.directory)
    except UserError:
        return None


def build_rows(results: Sequence[Result], comparator: Comparator) -> dict[tuple[str, str], list[Row]]:
    """Every result with its reference, deltas and spectral diagnostic, grouped by (model, target)."""
    rows: dict[tuple[str, str], list[Row]] = {}
    for key, group in group_results(results).items():
        for result in group:
            reference = reference_for(result, results)
            if reference is None:
                rows.setdefault(key, []).append(Row(result, None, {}, None))
                continue
            deltas = {spec.key: delta for spec in METRICS
                      if comparable(result, reference, spec) and (delta := comparator(result, reference, spec))}
            rows.setdefault(key, []).append(Row(result, reference, deltas, _spectrum(result, reference)))
    return rows


@dataclass(frozen=True)
class Claim:
    """A finding of the study, checked on this model's results.

    ``expectation``: "improve" (quantization *can* improve the metric), "worsen" (it *can* worsen it)
    or "not improve" (it does *not* improve it).
    """

    key: str
    statement: str
    metric: str
    expectation: str


CLAIMS = (
    Claim("accuracy", "Quantization can (rarely) improve accuracy", "top1", "improve"),
    Claim("calibration", "Quantization can improve calibration (lower ECE)", "ece", "improve"),
    Claim("ood", "Quantization can improve OOD detection (higher AUROC)", "auroc", "improve"),
    Claim("noise", "Quantization can improve robustness to noise (corrupted accuracy)", "corrupted", "improve"),
    Claim("covariate_shift", "Quantization does not help under covariate shift (shifted accuracy)", "shifted",
          "not improve"),
    Claim("spurious", "Quantization can worsen reliance on spurious correlations (worst-group accuracy)",
          "worst_group", "worsen"),
)


def verdict(claim: Claim, delta: Delta) -> str:
    """What one quantized result says about a claim."""
    if not delta.significant:
        return NOT_SIGNIFICANT
    supports = {"improve": delta.better, "worsen": not delta.better, "not improve": not delta.better}
    return HOLDS if supports[claim.expectation] else DOES_NOT_HOLD


def overall_verdict(claim: Claim, verdicts: Sequence[str]) -> str:
    """A "can" claim holds if some result shows it; a "does not" claim fails if some result contradicts it."""
    if not verdicts:
        return NOT_MEASURED
    decisive = DOES_NOT_HOLD if claim.expectation == "not improve" else HOLDS
    other = HOLDS if decisive == DOES_NOT_HOLD else DOES_NOT_HOLD
    for candidate in (decisive, other):
        if candidate in verdicts:
            return candidate
    return NOT_SIGNIFICANT


def assess_claims(rows: Mapping[tuple[str, str], Sequence[Row]]) -> list[dict[str, Any]]:
    """Each claim's overall verdict and the evidence of every quantized result."""
    assessed = []
    for claim in CLAIMS:
        spec = METRIC_BY_KEY[claim.metric]
        evidence = [{"model": model, "target": target, "variant": row.result.variant,
                     "reference": row.reference.variant if row.reference else None,
                     "delta": row.deltas[claim.metric].to_json(), "verdict": verdict(claim, row.deltas[claim.metric])}
                    for (model, target), group in rows.items() for row in group if claim.metric in row.deltas]
        assessed.append({"claim": claim.key, "statement": claim.statement, "metric": claim.metric,
                         "metric_label": spec.label, "expectation": claim.expectation,
                         "verdict": overall_verdict(claim, [item["verdict"] for item in evidence]),
                         "evidence": evidence})
    return assessed


def _signed(spec: MetricSpec, value: float) -> str:
    return f"{100 * value:+.1f} pp" if spec.percent else f"{value:+.4f}"


def _delta_text(spec: MetricSpec, delta: Mapping[str, Any]) -> str:
    """``Δ +0.0123 [+0.0040, +0.0200]`` from a delta's JSON form."""
    ci = delta["ci"]
    interval = f" [{_signed(spec, ci[0])}, {_signed(spec, ci[1])}]" if ci else ""
    return f"Δ {_signed(spec, delta['value'])}{interval}"


def _provenance(results: Sequence[Result]) -> dict[str, Any]:
    """Models (with their labels), host machines, devices, runtime and tool versions, suites and dates of the inputs."""
    def unique(values: Sequence[Any]) -> list[Any]:
        return [value for i, value in enumerate(values) if value not in values[:i]]

    runtimes = {f"{r.runtime} {r.manifest['runtime'].get('version', '?')}": None for r in results}
    created = sorted(r.raw.get("created", "") for r in results)
    return {
        "models": unique([{"spec": r.model, "label": r.model_label} for r in results]),
        "machines": unique([r.manifest.get("machine", {}) for r in results]),
        "devices": unique([device_label(r) for r in results]),
        "runtimes": list(runtimes),
        "tool_versions": unique([r.manifest.get("tool_versions", {}) for r in results]),
        "suites": unique([r.raw.get("suite", {}).get("name", "basic") for r in results]),
        "results_created": [created[0], created[-1]],
        "report_created": now_utc(),
    }


def build_report(results: Sequence[Result], constraints: Constraints,
                 comparator: Comparator | None = None) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The report.json content and the figures (file name -> PNG bytes).

    report.json: ``format``, ``provenance`` (models with labels, host machines, devices, runtimes, tool_versions,
    suites, dates), ``constraints``, ``recommendations`` (``Choice.to_json``), ``metrics`` (key, label,
    higher_is_better, percent), ``tables`` (per model and target: ``rows`` of ``Row.to_json``, the runtimes' ``warnings``),
    ``claims`` (``assess_claims``), ``plots`` (per model and target: figure kind -> file).
    """
    comparator = comparator or PairedComparator()
    rows = build_rows(results, comparator)
    choices = pick(results, constraints)
    figures: dict[str, bytes] = {}
    tables, plot_index = [], []
    for (model, target), group_rows in rows.items():
        group = [row.result for row in group_rows]
        references = {row.result.variant: row.reference for row in group_rows if row.reference}
        spectra = {row.result.variant: row.spectrum for row in group_rows if row.spectrum}
        title = target if len({key[0] for key in rows}) == 1 else f"{target} ({model})"
        drawn = {"tradeoff": plots.tradeoff_figure(group, title),
                 "reliability": plots.reliability_figure(group, references, title),
                 "severity": plots.severity_figure(group, title),
                 "spectrum": plots.spectrum_figure(group, spectra, title)}
        files = {kind: f"{_slug(model)}-{_slug(target)}-{kind}.png" for kind, png in drawn.items() if png}
        figures.update({files[kind]: png for kind, png in drawn.items() if png})
        plot_index.append({"model": model, "target": target, "files": files,
                           "missing": {kind: MISSING_PLOT[kind](group) for kind, png in drawn.items() if not png}})
        warnings = [r.manifest["runtime"].get("warnings", []) for r in group]
        tables.append({"model": model, "target": target, "rows": [row.to_json() for row in group_rows],
                       "warnings": list(dict.fromkeys(w for listed in warnings for w in listed))})
    report = {
        "format": FORMAT, "provenance": _provenance(results), "constraints": constraints.describe(),
        "recommendations": [choice.to_json() for choice in choices],
        "metrics": [{"key": s.key, "label": s.label, "higher_is_better": s.higher_is_better, "percent": s.percent}
                    for s in METRICS],
        "tables": tables, "claims": assess_claims(rows), "plots": plot_index,
        "notes": _notes(results, comparator),
    }
    return report, figures


def _missing_timing(group: Sequence[Result]) -> str:
    if any(result.timing for result in group):
        return "only emulated timings on this target (not device latencies)"
    return "no bench JSON beside these results (run `lpmr-edge bench`)"


MISSING_PLOT: dict[str, Callable[[Sequence[Result]], str]] = {
    "tradeoff": _missing_timing,
    "reliability": lambda group: "no quantized result with an FP32 reference here",
    "severity": lambda group: "the suite had no corruptions (use --suite quick or full)",
    "spectrum": lambda group: "no quantized result whose clean-ID outputs can be compared with its reference's",
}


def _notes(results: Sequence[Result], comparator: Comparator) -> list[str]:
    sets = sorted({name for result in results for name in ood_sets(result.raw["metrics"])})
    notes = [("Latency: median of one image-tower call at the smallest benchmarked batch (`lpmr-edge bench`); "
              "size: the image tower's files. Emulated timings are shown but never used for the Pareto front "
              "or latency constraints.")]
    if sets:
        notes.append(f"OOD metrics use the {OOD_SCORE} score averaged over the OOD sets ({', '.join(sets)}); the "
                     "CI of that mean (and of its delta) is the mean of the per-set CIs, which is conservative.")
    fallbacks = getattr(comparator, "fallbacks", {})
    unpaired = "; ".join(fallbacks) + f" (e.g. {next(iter(fallbacks.values()))})" if fallbacks else "all results"
    if comparator is unpaired_delta or fallbacks:
        notes.append("Unpaired deltas (the two results' CIs combined, which overstates the uncertainty of a "
                     f"change on the same images) for: {unpaired}")
    return notes


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


# ----------------------------------------------------------------------------- document

@dataclass(frozen=True)
class Cell:
    """A table cell: lines of text (after the first shown smaller, unless ``equal_lines``) and a style class
    (better, worse, muted or empty)."""

    lines: tuple[str, ...]
    style: str = ""
    equal_lines: bool = False


@dataclass(frozen=True)
class Block:
    """A piece of the document: heading (level 1-3), paragraph, table, figure or list."""

    kind: str
    text: str = ""
    level: int = 2
    style: str = ""
    header: tuple[str, ...] = ()
    rows: tuple[tuple[Cell, ...], ...] = ()
    items: tuple[str, ...] = ()


def _metric_cell(spec: MetricSpec, metric: Mapping[str, Any] | None) -> Cell:
    if metric is None:
        return Cell(("—",), "muted")
    estimate = format_estimate(spec, Estimate(metric["value"], tuple(metric["ci"]) if metric["ci"] else None))
    delta = metric.get("delta")
    if delta is None:
        return Cell((estimate,))
    marker = ("▲ better" if delta["better"] else "▼ worse") if delta["significant"] else "n.s."
    style = ("better" if delta["better"] else "worse") if delta["significant"] else "muted"
    return Cell((estimate, f"{_delta_text(spec, delta)} {marker}"), style)


def _cost_cells(row: Mapping[str, Any]) -> tuple[Cell, Cell]:
    size = Cell((f"{row['size_mb']:.1f} MB",) if row["size_mb"] is not None else ("—",))
    if row["latency_ms"] is None:
        return size, Cell(("not benchmarked",), "muted")
    batch = f"batch {row['latency_batch']}"
    if row["latency_emulated"]:
        return size, Cell((f"{row['latency_ms']:.2f} ms", f"{batch}, emulated: not a latency"), "muted")
    return size, Cell((f"{row['latency_ms']:.2f} ms", batch))


def _target_table(table: Mapping[str, Any]) -> Block:
    specs = [spec for spec in METRICS if any(spec.key in row["metrics"] for row in table["rows"])]
    header = ("runtime / precision", "executed as", "device", "vs", "image tower", "latency (median)",
              *(spec.label for spec in specs))
    rows = tuple((Cell((row["variant"],)), Cell((row["executed_precision"],)), Cell((row["device"],)),
                  Cell((row["reference"] or "(reference)",), "muted"),
                  *_cost_cells(row), *(_metric_cell(spec, row["metrics"].get(spec.key)) for spec in specs))
                 for row in table["rows"])
    return Block("table", header=header, rows=rows)


def _recommendation_blocks(report: Mapping[str, Any]) -> list[Block]:
    constraints = report["constraints"]
    objective = METRIC_BY_KEY[OBJECTIVES[constraints["objective"]]]
    direction = "higher" if objective.higher_is_better else "lower"
    asked = [f"objective: {constraints['objective']} ({objective.label}, {direction} is better)"]
    asked += [f"{label} ≤ {constraints[key]:g}{unit}" for key, label, unit in (
        ("max_latency_ms", "latency", " ms"), ("max_size_mb", "size", " MB"),
        ("max_accuracy_drop_pp", "top-1 drop", " pp")) if constraints[key] is not None]
    if not report["recommendations"]:
        return [Block("heading", "Recommendation"), Block("paragraph", "Nothing to recommend: the inputs hold no "
                      "exported artifact, only the host's torch reference.", style="warning")]
    rows = []
    for choice in report["recommendations"]:
        chosen = choice["recommended"]
        pareto = ", ".join(f"{p['variant']} ({p['latency_ms']:.2f} ms)" for p in choice["pareto"]) or "—"
        rows.append((Cell((choice["target"],)),
                     Cell((chosen["variant"] if chosen else "nothing satisfies the constraints",),
                          "better" if chosen else "worse"),
                     Cell((choice["reason"],)), Cell((pareto,), "muted")))
    return [Block("heading", "Recommendation"), Block("paragraph", "; ".join(asked), style="muted"),
            Block("table", header=("target", "deploy", "why", "Pareto alternatives (objective vs latency)"),
                  rows=tuple(rows), style="recommendation")]


def _claim_blocks(report: Mapping[str, Any]) -> list[Block]:
    styles = {HOLDS: "better", DOES_NOT_HOLD: "worse"}
    rows = tuple((Cell((claim["statement"],)), Cell((claim["verdict"],), styles.get(claim["verdict"], "muted")),
                  Cell(tuple(f"{e['target']} {e['variant']} vs {e['reference']}: "
                             f"{_delta_text(METRIC_BY_KEY[claim['metric']], e['delta'])} → {e['verdict']}"
                             for e in claim["evidence"]) or ("no quantized result measured this",),
                       equal_lines=True))
                 for claim in report["claims"])
    return [Block("heading", "Does quantization help here?"),
            Block("paragraph", "Each finding of the study, checked on this model and data. A change is significant "
                  "when the 95% CI of (quantized − FP32) excludes 0. \"Can improve / can worsen\": holds if some "
                  "quantized result changes the metric that way significantly, does not hold if the significant "
                  "changes all go the other way. \"Does not help\": does not hold if some quantized result "
                  "improves it significantly, holds if some worsens it. Otherwise: not significant."),
            Block("table", header=("claim", "verdict", "evidence (change vs FP32 reference, 95% CI)"), rows=rows)]


def _summary_lines(provenance: Mapping[str, Any]) -> list[str]:
    """Where, with what and when: shown under the title and in the provenance section."""
    machines = [f"{m.get('cpu', '?')} ({m.get('arch', '?')}, {m.get('cores', '?')} cores, {m.get('node', '?')})"
                for m in provenance["machines"]]
    return [f"host: {'; '.join(machines)}", f"devices: {', '.join(provenance['devices'])}",
            f"runtimes: {', '.join(provenance['runtimes'])}",
            "results created {} to {}; report created {}".format(*provenance["results_created"],
                                                                 provenance["report_created"])]


def _provenance_blocks(report: Mapping[str, Any]) -> list[Block]:
    provenance = report["provenance"]
    tools = [", ".join(f"{name} {version}" for name, version in versions.items())
             for versions in provenance["tool_versions"]]
    return [Block("heading", "Provenance"), Block("list", items=(
        *(f"model {m['spec']}: {m['label']}" for m in provenance["models"]), *_summary_lines(provenance),
        *(f"tools: {line}" for line in tools), f"suites: {', '.join(provenance['suites'])}",
        *(f"input: {row['results_dir']}" for table in report["tables"] for row in table["rows"]),
        *report["notes"]))]


FIGURE_CAPTIONS = {"tradeoff": "Trade-off: reliability metrics vs measured latency; the black line is the "
                               "Pareto front, error bars are 95% CIs",
                   "reliability": "Reliability diagrams: FP32 reference (dashed black) vs each quantized result",
                   "severity": "Severity: top-1 accuracy vs corruption severity, mean over corruption kinds",
                   "spectrum": "Spectrum: where the quantization residual lives in the FP32 representation's "
                               "spectrum, and how much each component's variance is damped (gain < 1)"}


def document(report: Mapping[str, Any]) -> list[Block]:
    """The report (report.json content) as a sequence of blocks, rendered to HTML and Markdown alike."""
    models = report["provenance"]["models"]
    blocks = [Block("heading", f"lpmr-edge report: {', '.join(m['spec'] for m in models)}", level=1)]
    blocks += [Block("paragraph", f"Model {m['spec']}: {m['label']}. Every number here describes this model only"
                     + ("" if m["label"] == PRETRAINED_LABEL else " — it is not a pretrained CLIP") + ".",
                     style="" if m["label"] == PRETRAINED_LABEL else "warning") for m in models]
    blocks.append(Block("paragraph", " · ".join(_summary_lines(report["provenance"])), style="muted"))
    blocks += _recommendation_blocks(report)
    blocks += _claim_blocks(report)
    for table, plot_entry in zip(report["tables"], report["plots"]):
        heading = ("Reference: eager torch FP32 on the host" if table["target"] == HOST_TARGET
                   else f"Target {table['target']}")
        blocks += [Block("heading", f"{heading} ({table['model']})")]
        blocks += [Block("paragraph", f"Warning: {warning}.", style="warning") for warning in table["warnings"]]
        blocks.append(_target_table(table))
        blocks += [Block("figure", file, style=FIGURE_CAPTIONS[kind]) for kind, file in plot_entry["files"].items()]
        if table["target"] != HOST_TARGET:  # the reference has nothing to compare; say why only for targets
            blocks += [Block("paragraph", f"No {FIGURE_CAPTIONS[kind].split(':')[0].lower()} plot: {why}.",
                             style="muted") for kind, why in plot_entry["missing"].items()]
    return blocks + _provenance_blocks(report)


# ----------------------------------------------------------------------------- rendering

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; margin: 24px 32px;
       color: #1d232b; background: #fff; }
h1 { font-size: 26px; margin: 0 0 12px; } h2 { font-size: 20px; margin: 28px 0 10px;
     border-bottom: 2px solid #e3e7ec; padding-bottom: 4px; }
p.warning { background: #fff4d6; border-left: 5px solid #e0a100; padding: 8px 12px; font-weight: 600; }
.muted { color: #66707a; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; margin: 6px 0 14px; font-size: 13px; }
th, td { border: 1px solid #d6dbe1; padding: 5px 8px; text-align: left; vertical-align: top; }
th { background: #f1f4f7; }
td .line2 { display: block; font-size: 12px; } td .line { display: block; }
td.better .line2, td.better { color: #0b6b2f; } td.worse .line2, td.worse { color: #b3261e; }
td.better, td.worse { font-weight: 600; } td.muted .line2 { color: #66707a; }
table.recommendation { font-size: 15px; border: 2px solid #2f6fde; }
table.recommendation td.better { font-size: 17px; }
figure { margin: 10px 0 22px; } figure img { max-width: 100%; height: auto; border: 1px solid #e3e7ec; }
figcaption { color: #4a545e; font-size: 13px; }
li { margin: 2px 0; }
"""


def _html_block(block: Block, figures: Mapping[str, bytes]) -> str:
    text = html.escape(block.text)
    if block.kind == "heading":
        return f"<h{block.level}>{text}</h{block.level}>"
    if block.kind == "paragraph":
        return f'<p class="{block.style}">{text}</p>'
    if block.kind == "list":
        return "<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in block.items) + "</ul>"
    if block.kind == "figure":
        data = base64.b64encode(figures[block.text]).decode()
        caption = html.escape(block.style)
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{caption}">'
                f"<figcaption>{caption}</figcaption></figure>")
    header = "".join(f"<th>{html.escape(name)}</th>" for name in block.header)
    body = "".join("<tr>" + "".join(
        f'<td class="{cell.style}">' + "".join(
            f'<span class="line">{html.escape(line)}</span>' if cell.equal_lines
            else html.escape(line) if i == 0 else f'<span class="line2">{html.escape(line)}</span>'
            for i, line in enumerate(cell.lines)) + "</td>"
        for cell in row) + "</tr>" for row in block.rows)
    return (f'<div class="table-wrap"><table class="{block.style}"><thead><tr>{header}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def render_html(blocks: Sequence[Block], figures: Mapping[str, bytes], title: str) -> str:
    """One self-contained HTML page: inline CSS, figures as data: URIs, no script."""
    body = "\n".join(_html_block(block, figures) for block in blocks)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")


def _markdown_cell(cell: Cell) -> str:
    return "<br>".join(line.replace("|", "\\|") for line in cell.lines)


def _markdown_block(block: Block) -> str:
    if block.kind == "heading":
        return f"{'#' * block.level} {block.text}"
    if block.kind == "paragraph":
        return f"> **{block.text}**" if block.style == "warning" else block.text
    if block.kind == "list":
        return "\n".join(f"- {item}" for item in block.items)
    if block.kind == "figure":
        return f"![{block.style}]({PLOTS_DIR}/{block.text})"
    lines = ["| " + " | ".join(block.header) + " |", "|" + "---|" * len(block.header)]
    lines += ["| " + " | ".join(_markdown_cell(cell) for cell in row) + " |" for row in block.rows]
    return "\n".join(lines)


def render_markdown(blocks: Sequence[Block]) -> str:
    """The report in Markdown (plots linked from ``plots/``)."""
    return "\n\n".join(_markdown_block(block) for block in blocks) + "\n"


def _check_destination(out: Path, results: Sequence[Result]) -> None:
    """Refuse to replace a directory that is not an earlier report, or that holds input results."""
    resolved = out.resolve()
    for result in results:
        if result.directory.resolve().is_relative_to(resolved):
            raise UserError(f"--out {out} contains the input result {result.directory}; write the report elsewhere")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory for the report")
    if out.is_dir() and any(out.iterdir()) and not (out / JSON_FILE).is_file():
        raise UserError(f"--out {out} exists and is not an lpmr-edge report; give a new or empty directory")


def write_report(paths: Sequence[Path], out: Path, constraints: Constraints | None = None,
                 comparator: Comparator | None = None) -> dict[str, Any]:
    """Write the report for the results below ``paths`` into ``out`` (replacing an earlier report only
    when the new one is complete); returns the report.json content."""
    from lpmr_edge.export import staged_directory
    from lpmr_edge.manifest import atomic_write_json

    out = Path(out)
    results = load_results(paths)
    _check_destination(out, results)
    report, figures = build_report(results, constraints or Constraints(), comparator)
    blocks = document(report)
    title = blocks[0].text
    with staged_directory(out) as staging:
        for name, png in figures.items():
            atomic_write_bytes(staging / PLOTS_DIR / name, png)
        atomic_write_bytes(staging / HTML_FILE, render_html(blocks, figures, title).encode())
        atomic_write_bytes(staging / MARKDOWN_FILE, render_markdown(blocks).encode())
        atomic_write_json(staging / JSON_FILE, report)
        _make_readable(staging)
    return report


def _make_readable(directory: Path) -> None:
    """Give the report the usual permissions (temp files and directories are created private)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [directory, *directory.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
