"""The deployment report: per-target tables, trade-off plots, the study's claims checked, the recommendation.

``write_report`` reads result directories (see ``lpmr_edge.results``) and writes, into one directory that
replaces any previous report only once everything is written:

  report.html   one self-contained page (plots inlined as base64 PNG; no script, no network)
  report.md     the same tables and verdicts in Markdown, linking the plot files
  report.json   everything in machine-readable form (see ``build_report``)
  plots/*.png   the figures

Every quantized result is compared with its FP32 reference (``lpmr_edge.results.reference_for``) by a
``Comparator``: by default ``PairedComparator`` (the suite's paired bootstrap on the stored per-sample
outputs, ``lpmr_edge.compare``; one that ``lpmr-edge run`` kept beside the result is read), falling back
to ``unpaired_delta`` (the two stored CIs combined) for results without outputs. The claims are judged
over those comparisons by ``lpmr_edge.claims``.
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lpmr_edge import plots
from lpmr_edge.claims import Delta, assess_claims, delta_from_interval
from lpmr_edge.errors import UserError
from lpmr_edge.manifest import atomic_write_bytes, now_utc
from lpmr_edge.pick import Choice, Constraints, pick
from lpmr_edge.report_document import (
    PLOTS_DIR,
    document,
    render_html,
    render_markdown,
)
from lpmr_edge.results import (
    BONFERRONI_MEAN,
    Result,
    comparable,
    group_results,
    load_results,
    paired_keys,
    reference_for,
)
from lpmr_edge.samples import with_joint_intervals
from lpmr_edge.suite.families import COMPARISON_METRICS, FAMILIES, METRICS, MetricSpec
from lpmr_edge.suite.families.classification import ID_SET
from lpmr_edge.suite.families.spectrum import spectrum_of_results
from lpmr_edge.suite.outputs import outputs_path

FORMAT = "lpmr-edge-report/1"
HTML_FILE, MARKDOWN_FILE, JSON_FILE = "report.html", "report.md", "report.json"


Comparator = Callable[[Result, Result, MetricSpec, Mapping[str, float]], "Delta | None"]  # margins by metric key


def unpaired_delta(result: Result, reference: Result, spec: MetricSpec, margins: Mapping[str, float]) -> Delta | None:
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
    return delta_from_interval(spec, value, ci, "unpaired: difference of bootstrap estimates, CIs combined",
                               margin=margins.get(spec.key, 0.0))


class PairedComparator:
    """Deltas from ``lpmr_edge.compare.compare``: a paired bootstrap over the per-sample outputs both
    results stored. Falls back to ``unpaired_delta`` for a pair it cannot compare, recording why in
    ``fallbacks``. A metric over several instances (the OOD sets) reads compare's delta of their mean,
    bootstrapped jointly (``ood.mean.*``: the ID images drawn once for all sets)."""

    method = "paired bootstrap on the same samples"

    def __init__(self, n_resamples: int | None = None) -> None:
        self.n_resamples = n_resamples
        self.fallbacks: dict[str, str] = {}  # "<target> <variant> vs <reference>" -> why
        self._comparisons: dict[tuple[Path, Path, tuple], Mapping[str, Any] | None] = {}

    def _comparison(self, result: Result, reference: Result, margins: Mapping[str, float]) -> Mapping[str, Any] | None:
        """compare's output for the pair with ``margins`` (computed once)."""
        key = (result.directory, reference.directory, tuple(sorted(margins.items())))
        if key in self._comparisons:
            return self._comparisons[key]
        self._comparisons[key] = None
        pair = f"{result.target} {result.variant} vs {reference.variant}"
        if not (has_outputs(result) and has_outputs(reference)):
            self.fallbacks[pair] = "no per-sample outputs stored beside the metrics"
            return None
        from lpmr_edge.compare import compare, stored_comparison

        try:
            self._comparisons[key] = (
                stored_comparison(result.directory, reference.directory, self.n_resamples, margins)
                or compare(result.directory, reference.directory, self.n_resamples, margins=margins))
        except UserError as error:
            self.fallbacks[pair] = str(error)
        return self._comparisons[key]

    def comparison_only(self, result: Result, reference: Result,
                        margins: Mapping[str, float]) -> dict[str, Mapping[str, Any]]:
        """The paired deltas of the metrics that exist only against a reference (``COMPARISON_METRICS``, e.g.
        mCE), by compare key; empty when the pair cannot be compared."""
        keys = {spec.key for spec in COMPARISON_METRICS}
        deltas = (self._comparison(result, reference, margins) or {}).get("deltas", {})
        return {key: delta for key, delta in deltas.items() if delta.get("metric") in keys}

    def __call__(self, result: Result, reference: Result, spec: MetricSpec,
                 margins: Mapping[str, float]) -> Delta | None:
        comparison = self._comparison(result, reference, margins)
        if comparison is None:
            return unpaired_delta(result, reference, spec, margins)
        keys = paired_keys(spec, result.raw["metrics"])  # a mean over instances: their joint mean's key
        entry = comparison["deltas"].get(keys[0]) if len(keys) == 1 else None
        if entry is None:
            return None
        mcnemar = comparison["mcnemar"].get(keys[0].split(".")[0]) if keys[0].endswith(".top1") else None
        return delta_from_interval(spec, entry["delta"], tuple(entry["ci"]) if None not in entry["ci"] else None,
                                   self.method, entry["p_value"], mcnemar["p_value"] if mcnemar else None,
                                   entry["margin"], entry["p_beyond_margin"], entry["p_equivalence"])


@dataclass(frozen=True)
class Row:
    """One result in a target's table, with its reference and its deltas against it."""

    result: Result
    reference: Result | None
    deltas: Mapping[str, Delta]
    spectrum: Mapping[str, Any] | None  # the spectrum family's diagnostic against the reference
    compared: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # comparison-only metrics (compare's deltas)

    def to_json(self) -> dict[str, Any]:
        """JSON form: the result's summary plus ``reference``, per-metric ``delta`` and ``spectrum``
        (the spectral diagnostic without its per-rank arrays)."""
        summary = self.result.describe()
        for key, delta in self.deltas.items():
            summary["metrics"][key]["delta"] = delta.to_json()
        spectrum = {k: v for k, v in self.spectrum.items() if k != "per_rank"} if self.spectrum else None
        return {**summary, "device": device_label(self.result),
                "reference": self.reference.variant if self.reference else None,
                "reference_dir": str(self.reference.directory) if self.reference else None, "spectrum": spectrum,
                "compared": {key: {name: delta[name] for name in ("label", "metric", "result", "delta", "ci",
                                                                  "p_value", "n", "significant", "lower_is_better")}
                             for key, delta in self.compared.items()}}


def device_label(result: Result) -> str:
    """Which device produced a result's numbers: the device the runtime ran on, or this host."""
    device = result.manifest["runtime"].get("device")
    if device:
        emulated = ", emulated" if device.get("emulated") else ""
        return f"{device.get('label', device.get('kind', '?'))} ({device.get('machine', '?')}{emulated})"
    return f"host ({result.manifest.get('machine', {}).get('arch', '?')})"


def has_outputs(result: Result) -> bool:
    """True if the result directory holds its clean-ID per-sample outputs (needed for paired statistics)."""
    return outputs_path(result.directory, ID_SET).is_file()


def _spectrum(result: Result, reference: Result) -> dict[str, Any] | None:
    """The spectral diagnostic of a result's clean-ID features against its reference's, if both stored them."""
    if not (has_outputs(result) and has_outputs(reference)):
        return None
    try:
        return spectrum_of_results(result.directory, reference.directory)
    except UserError:
        return None


def usable(result: Result, spec: MetricSpec) -> bool:
    """False when the result flags the metric as unusable (e.g. worst-group accuracy with too small groups):
    no delta and no claim evidence then."""
    estimate = result.metrics.get(spec.key)
    return estimate is None or estimate.status is None


def metric_margins(constraints: Constraints) -> dict[str, float]:
    """The practical margin of every metric under ``constraints`` (``--margin``, else pick's defaults)."""
    return {spec.key: constraints.margin(spec) for spec in METRICS}


def build_rows(results: Sequence[Result], comparator: Comparator,
               margins: Mapping[str, float] | None = None) -> dict[tuple[str, str], list[Row]]:
    """Every result with its reference, deltas (tested against ``margins``, default pick's) and spectral
    diagnostic, grouped by (model, target)."""
    margins = metric_margins(Constraints()) if margins is None else margins
    rows: dict[tuple[str, str], list[Row]] = {}
    for key, group in group_results(results).items():
        for result in group:
            reference = reference_for(result, results)
            if reference is None:
                rows.setdefault(key, []).append(Row(result, None, {}, None))
                continue
            deltas = {spec.key: delta for spec in METRICS
                      if comparable(result, reference, spec) and usable(result, spec) and usable(reference, spec)
                      and (delta := comparator(result, reference, spec, margins))}
            compared = (comparator.comparison_only(result, reference, margins)
                        if isinstance(comparator, PairedComparator) else {})
            rows.setdefault(key, []).append(Row(result, reference, deltas, _spectrum(result, reference), compared))
    return rows


def _provenance(results: Sequence[Result]) -> dict[str, Any]:
    """Models (with their labels), host machines, devices, runtime and tool versions, suites and dates of the inputs."""
    def unique(values: Sequence[Any]) -> list[Any]:
        return [value for i, value in enumerate(values) if value not in values[:i]]

    runtimes = {f"{r.runtime} {r.manifest['runtime'].get('version', '?')}": None for r in results}
    created = sorted(r.raw.get("created", "") for r in results)
    return {
        "models": unique([{"spec": r.model, "label": r.model_label,
                           **({"scoring": r.raw["scoring"]} if r.raw.get("scoring") else {})} for r in results]),
        "machines": unique([r.manifest.get("machine", {}) for r in results]),
        "devices": unique([device_label(r) for r in results]),
        "runtimes": list(runtimes),
        "tool_versions": unique([r.manifest.get("tool_versions", {}) for r in results]),
        "suites": unique([r.raw.get("suite", {}).get("name", "basic") for r in results]),
        "results_created": [created[0], created[-1]],
        "report_created": now_utc(),
    }


def build_report(results: Sequence[Result], constraints: Constraints, comparator: Comparator | None = None,
                 choices: Sequence[Choice] | None = None) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The report.json content and the figures (file name -> PNG bytes); ``choices`` is ``pick(results,
    constraints)`` when the caller has it.

    report.json: ``format``, ``provenance`` (models with labels, host machines, devices, runtimes, tool_versions,
    suites, dates), ``constraints``, ``recommendations`` (``Choice.to_json``), ``metrics`` (key, label,
    higher_is_better, percent, unit, delta), ``tables`` (per model and target: ``rows`` of ``Row.to_json``,
    the runtimes' ``warnings``),
    ``claims`` (``assess_claims``), ``plots`` (per model and target: figure kind -> file).
    """
    results = with_joint_intervals(results)  # the mean over OOD sets: the joint interval where outputs are stored
    comparator = comparator or PairedComparator()
    rows = build_rows(results, comparator, metric_margins(constraints))
    choices = pick(results, constraints) if choices is None else choices
    figures: dict[str, bytes] = {}
    tables, plot_index = [], []
    for (model, target), group_rows in rows.items():
        group = [row.result for row in group_rows]
        references = {row.result.variant: row.reference for row in group_rows if row.reference}
        spectra = {row.result.variant: row.spectrum for row in group_rows if row.spectrum}
        title = target if len({key[0] for key in rows}) == 1 else f"{target} ({model})"
        drawn = {kind.name: kind.draw(group, references, spectra, title) for kind in plots.FIGURES}
        files = {kind: f"{_slug(model)}-{_slug(target)}-{kind}.png" for kind, png in drawn.items() if png}
        figures.update({files[kind]: png for kind, png in drawn.items() if png})
        plot_index.append({"model": model, "target": target, "files": files,
                           "missing": {kind.name: kind.missing(group) for kind in plots.FIGURES
                                       if not drawn[kind.name]}})
        warnings = [r.manifest["runtime"].get("warnings", []) for r in group]
        tables.append({"model": model, "target": target, "rows": [row.to_json() for row in group_rows],
                       "warnings": list(dict.fromkeys(w for listed in warnings for w in listed))})
    report = {
        "format": FORMAT, "provenance": _provenance(results), "constraints": constraints.describe(),
        "recommendations": [choice.to_json() for choice in choices],
        "metrics": [{"key": s.key, "label": s.label, "higher_is_better": s.higher_is_better, "percent": s.percent,
                     "unit": s.unit, "delta": s.delta} for s in METRICS],
        "tables": tables, "claims": assess_claims(rows), "plots": plot_index,
        "notes": _notes(results, comparator),
    }
    return report, figures


def _notes(results: Sequence[Result], comparator: Comparator) -> list[str]:
    notes = [("Latency: median of one image-tower call at the smallest benchmarked batch (`lpmr-edge bench`); "
              "size: the image tower's files. Emulated timings are shown but never used for the Pareto front "
              "or latency constraints."),
             ("Intervals: 95% BCa bootstrap (per-group and worst-group accuracies: exact Clopper–Pearson); a "
              "change against the FP32 reference is the paired BCa interval of the difference on the same "
              "images. A worst-group accuracy whose smallest group is below the suite's min_group_size shows "
              "\"not enough data\" and enters no comparison or claim.")]
    notes += [note for family in FAMILIES for note in family.report_notes([r.raw["metrics"] for r in results])]
    stored_only = [f"{r.target} {r.variant} ({spec.label})" for r in results for spec in METRICS
                   if spec.key in r.metrics and r.metrics[spec.key].method == BONFERRONI_MEAN]
    if stored_only:
        notes.append("Means over OOD sets without stored per-sample outputs (no joint bootstrap possible) show a "
                     "conservative interval from the per-set intervals alone (each widened to 1 - 5%/k, k sets, then "
                     f"their bounds averaged: Bonferroni) for: {'; '.join(stored_only)}")
    fallbacks = getattr(comparator, "fallbacks", {})
    unpaired = "; ".join(fallbacks) + f" (e.g. {next(iter(fallbacks.values()))})" if fallbacks else "all results"
    if comparator is unpaired_delta or fallbacks:
        notes.append("Unpaired deltas (the two results' CIs combined, which overstates the uncertainty of a "
                     f"change on the same images) for: {unpaired}")
    return notes


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


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
                 comparator: Comparator | None = None, choices: Sequence[Choice] | None = None) -> dict[str, Any]:
    """Write the report for the results below ``paths`` into ``out`` (replacing an earlier report only
    when the new one is complete); returns the report.json content."""
    from lpmr_edge.export import staged_directory
    from lpmr_edge.manifest import atomic_write_json

    out = Path(out)
    results = load_results(paths)
    _check_destination(out, results)
    report, figures = build_report(results, constraints or Constraints(), comparator, choices)
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
