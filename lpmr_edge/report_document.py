"""The report's document: report.json content -> blocks (headings, paragraphs, tables, figures, lists),
rendered alike to one self-contained HTML page and to Markdown."""
from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lpmr_edge.pick import margin_text, objective_metric
from lpmr_edge.plots import CAPTIONS
from lpmr_edge.results import HOST_TARGET, Estimate, format_estimate
from lpmr_edge.stats import DOES_NOT_HOLD, HOLDS, MIXED
from lpmr_edge.suite.families import METRIC_BY_KEY, METRICS, MetricSpec
from lpmr_edge.suite.families.base import POINTS

PLOTS_DIR = "plots"
PRETRAINED_LABEL = "open_clip pretrained weights"
NOT_MEASURED = "not measured"


def _signed(spec: MetricSpec, value: float) -> str:
    """A change as its metric's delta kind reads it (percentage points, or a plain difference)."""
    return f"{100 * value:+.1f} pp" if spec.delta == POINTS else f"{value:+.4f}"


def _delta_text(spec: MetricSpec, delta: Mapping[str, Any]) -> str:
    """``Δ +0.0123 [+0.0040, +0.0200]`` from a delta's JSON form."""
    ci = delta["ci"]
    interval = f" [{_signed(spec, ci[0])}, {_signed(spec, ci[1])}]" if ci else ""
    return f"Δ {_signed(spec, delta['value'])}{interval}"


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
    size = (metric["sample_size"],) if metric.get("sample_size") else ()
    if metric.get("status"):
        return Cell((metric["status"], *size), "muted")
    estimate = format_estimate(spec, Estimate(metric["value"], tuple(metric["ci"]) if metric["ci"] else None))
    delta = metric.get("delta")
    if delta is None:
        return Cell((estimate, *size))
    marker = ("▲ better" if delta["better"] else "▼ worse") if delta["significant"] else "n.s."
    style = ("better" if delta["better"] else "worse") if delta["significant"] else "muted"
    mcnemar = f", McNemar p={_p(delta['mcnemar_p'])}" if delta.get("mcnemar_p") is not None else ""
    return Cell((estimate, f"{_delta_text(spec, delta)} {marker}{mcnemar}", *size), style)


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


def _comparison_table(table: Mapping[str, Any]) -> list[Block]:
    """The metrics that exist only against the reference (e.g. mCE), one row per compared result."""
    keys = list(dict.fromkeys(key for row in table["rows"] for key in row.get("compared", {})))
    if not keys:
        return []
    labels = {key: row["compared"][key]["label"] for row in table["rows"] for key in row.get("compared", {})}

    def cell(entry: Mapping[str, Any] | None) -> Cell:
        if entry is None:
            return Cell(("—",), "muted")
        low, high = entry["ci"]
        interval = "CI undefined" if low is None else f"CI {low:+.3f} to {high:+.3f}"
        better = (entry["delta"] < 0) == entry["lower_is_better"]
        style = ("better" if better else "worse") if entry["significant"] else "muted"
        return Cell((f"{entry['result']:.3f}", f"Δ {entry['delta']:+.3f}, {interval}, p={_p(entry['p_value'])}",
                     f"n={entry['n']}"), style)

    rows = tuple((Cell((row["variant"],)), Cell((row["reference"],), "muted"),
                  *(cell(row["compared"].get(key)) for key in keys))
                 for row in table["rows"] if row.get("compared"))
    return [Block("paragraph", "Against the reference only (paired bootstrap on the same images; the reference "
                               "scores 1 on each):", style="muted"),
            Block("table", header=("runtime / precision", "vs", *(labels[key] for key in keys)), rows=rows)]


def _recommendation_blocks(report: Mapping[str, Any]) -> list[Block]:
    constraints = report["constraints"]
    objective = objective_metric(constraints["objective"])
    direction = "higher" if objective.higher_is_better else "lower"
    margin = constraints["margins"].get(objective.key.partition(":")[0], 0.0)
    asked = [(f"objective: {constraints['objective']} ({objective.label}, {direction} is better; candidates "
             f"within ±{margin_text(objective, margin)} of the best on a paired equivalence test are tied)")]
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


def _p(value: float | None) -> str:
    return "—" if value is None else f"{value:.2g}" if value >= 0.001 else f"{value:.1e}"


def _evidence_line(spec: MetricSpec, item: Mapping[str, Any]) -> str:
    """One comparison of a claim: the change, its margin tests' p, the Holm-adjusted p, or its duplicate."""
    mcnemar = item["delta"].get("mcnemar_p")
    tests = f"p beyond margin={_p(item['p_value'])}" + (f" (McNemar p={_p(mcnemar)})" if mcnemar is not None else "")
    judged = (f"identical outputs to {item['duplicate_of']}: counted once" if item["duplicate_of"] else
              f"Holm p={_p(item['p_adjusted'])}" + (" beyond the margin" if item["significant"] else
                                                     " equivalent within it" if item["equivalent"] else ""))
    return (f"{item['target']} {item['variant']} vs {item['reference']}: {_delta_text(spec, item['delta'])}, "
            f"{tests}, {judged}")


def _claim_blocks(report: Mapping[str, Any]) -> list[Block]:
    styles = {HOLDS: "better", DOES_NOT_HOLD: "worse", MIXED: "worse"}
    rows = tuple((Cell((claim["statement"],)),
                  Cell((claim["verdict"], claim["summary"]), styles.get(claim["verdict"], "muted")),
                  Cell(tuple(_evidence_line(METRIC_BY_KEY[claim["metric"]], item) for item in claim["evidence"])
                       or ("no quantized result measured this",), equal_lines=True))
                 for claim in report["claims"])
    return [Block("heading", "Does quantization help here?"),
            Block("paragraph", "Each finding of the study, checked on this model and data over all its comparisons "
                  "(quantized − FP32 reference, on the same images), against the metric's practical margin (as "
                  "for the recommendation, --margin). A comparison is better or worse only when its 95% paired "
                  "BCa interval lies wholly beyond the margin (two one-sided tests against ±margin at 2.5% each, "
                  "p = 2 × the smaller), and equivalent within the margin when its 90% interval lies inside it "
                  "(TOST at 5%); each family of p-values of one claim is Holm-corrected together (family-wise 5% "
                  "within the claim). Comparisons whose result and reference produced identical per-sample "
                  "outputs to an earlier one count once. Verdict: holds (some change beyond the margin the "
                  "claimed way, none the other), does not hold (only the other way), mixed (both), equivalent "
                  "within margin (no change beyond it and every comparison equivalent), not significant (the "
                  "rest); the counts say how many. report.json states each claim's rule and margin."),
            Block("table", header=("claim", "verdict (counts after correction)",
                                   "evidence (change vs FP32 reference, 95% CI; p; Holm-corrected p)"), rows=rows)]


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


def document(report: Mapping[str, Any]) -> list[Block]:
    """The report (report.json content) as a sequence of blocks, rendered to HTML and Markdown alike."""
    models = report["provenance"]["models"]
    blocks = [Block("heading", f"lpmr-edge report: {', '.join(m['spec'] for m in models)}", level=1)]
    blocks += [Block("paragraph", f"Model {m['spec']}: {m['label']}. Every number here describes this model only"
                     + ("" if m["label"] == PRETRAINED_LABEL else " — it is not a pretrained CLIP") + "."
                     + (f" Scoring: {m['scoring']['family']}, class probabilities = {m['scoring']['class_probabilities']}."
                        if m.get("scoring") else ""),
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
        blocks += _comparison_table(table)
        blocks += [Block("figure", file, style=CAPTIONS[kind]) for kind, file in plot_entry["files"].items()]
        if table["target"] != HOST_TARGET:  # the reference has nothing to compare; say why only for targets
            blocks += [Block("paragraph", f"No {CAPTIONS[kind].split(':')[0].lower()} plot: {why}.",
                             style="muted") for kind, why in plot_entry["missing"].items()]
    return blocks + _provenance_blocks(report)


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
