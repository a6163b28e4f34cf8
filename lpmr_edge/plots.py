"""The report's figures, drawn with matplotlib's Agg canvas and returned as PNG bytes.

Every function takes the results of one (model, target) and returns None when the results hold no
data for that figure (e.g. no measured latency, or a suite without corruptions). ``FIGURES`` lists the
kinds the report draws, each with its caption and why it can be missing.
"""
from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lpmr_edge.pick import pareto_front
from lpmr_edge.results import Result
from lpmr_edge.suite.families import METRICS, MetricSpec

FONT = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 9}
DPI = 110
PANEL_INCHES = (4.2, 3.4)


def variant_colours(group: Sequence[Result]) -> dict[str, Any]:
    """One stable colour per variant of a group (the same in every figure)."""
    from matplotlib import colormaps

    palette = colormaps["tab10"].colors
    return {result.variant: palette[i % len(palette)] for i, result in enumerate(group)}


def _figure(panels: int, columns: int) -> tuple[Figure, list[Axes]]:
    rows = math.ceil(panels / columns)
    columns = min(columns, panels)
    figure = Figure(figsize=(PANEL_INCHES[0] * columns, PANEL_INCHES[1] * rows + 0.6), dpi=DPI,
                    layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel().tolist()
    for unused in axes[panels:]:
        unused.set_visible(False)
    return figure, axes[:panels]


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _axis_label(spec: MetricSpec) -> str:
    return f"{spec.label} (%)" if spec.percent else spec.label


def _scale(spec: MetricSpec) -> float:
    return 100.0 if spec.percent else 1.0


def tradeoff_figure(group: Sequence[Result], title: str) -> bytes | None:
    """Each reliability metric against measured latency, Pareto front highlighted; emulated timings
    are left out and named in a note."""
    timed = [result for result in group if result.measured_latency_ms is not None]
    specs = [spec for spec in METRICS if any(spec.key in result.metrics for result in timed)]
    if not timed or not specs:
        return None
    colours = variant_colours(group)
    with rc_context(FONT):
        figure, axes = _figure(len(specs), 4)
        for ax, spec in zip(axes, specs):
            _tradeoff_panel(ax, spec, [r for r in timed if spec.key in r.metrics], colours)
        handles = [ax.plot([], [], "o", color=colours[r.variant], label=r.variant)[0] for r in timed]
        handles.append(axes[0].plot([], [], "-", color="black", lw=1.5, label="Pareto front")[0])
        figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6))
        emulated = [r.variant for r in group if r.timing is not None and r.timing.emulated]
        note = f"; emulated timings excluded: {', '.join(emulated)}" if emulated else ""
        figure.suptitle(f"{title}: reliability vs latency (error bars: 95% CI{note})", wrap=True)
        return _png(figure)


def _tradeoff_panel(ax: Axes, spec: MetricSpec, results: Sequence[Result], colours: Mapping[str, Any]) -> None:
    scale = _scale(spec)
    points = [(r.measured_latency_ms, -spec.goodness(r.metrics[spec.key].value)) for r in results]
    front = set(pareto_front(points))
    for index, result in enumerate(results):
        estimate = result.metrics[spec.key]
        error = ([[scale * (estimate.value - estimate.ci[0])], [scale * (estimate.ci[1] - estimate.value)]]
                 if estimate.ci else None)
        on_front = index in front
        ax.errorbar(result.measured_latency_ms, scale * estimate.value, yerr=error, fmt="o",
                    color=colours[result.variant], ms=8 if on_front else 6, mec="black" if on_front else "none",
                    alpha=1.0 if on_front else 0.55, capsize=3)
    ordered = sorted(front, key=lambda i: points[i][0])
    ax.plot([points[i][0] for i in ordered], [scale * results[i].metrics[spec.key].value for i in ordered],
            "-", color="black", lw=1.5, zorder=0)
    ax.set_xlabel("median latency (ms, measured)")
    ax.set_ylabel(_axis_label(spec))
    ax.set_title(f"{spec.label} ({'higher' if spec.higher_is_better else 'lower'} is better)")
    ax.grid(alpha=0.3)


def reliability_figure(group: Sequence[Result], references: Mapping[str, Result], title: str) -> bytes | None:
    """Reliability diagram of each quantized result overlaid on its FP32 reference's."""
    pairs = [(result, references[result.variant]) for result in group
             if result.variant in references and _diagram(result) and _diagram(references[result.variant])]
    if not pairs:
        return None
    colours = variant_colours(group)
    with rc_context(FONT):
        figure, axes = _figure(len(pairs), 4)
        for ax, (result, reference) in zip(axes, pairs):
            ax.plot([0, 100], [0, 100], ":", color="grey", lw=1, label="perfect calibration")
            for shown, style in ((reference, "--"), (result, "-")):
                bins = [b for b in _diagram(shown) if b["count"]]
                ece = shown.metrics.get("ece")
                ax.plot([100 * b["confidence"] for b in bins], [100 * b["accuracy"] for b in bins], style,
                        marker="o", ms=4, color="black" if shown is reference else colours[shown.variant],
                        label=f"{shown.variant}" + (f" (ECE {ece.value:.3f})" if ece else ""))
            ax.set(xlim=(0, 100), ylim=(0, 100), xlabel="confidence (%)", ylabel="accuracy (%)",
                   title=f"{result.variant} vs {reference.variant}")
            ax.legend(loc="upper left")
            ax.grid(alpha=0.3)
        figure.suptitle(f"{title}: reliability diagrams", wrap=True)
        return _png(figure)


def _diagram(result: Result) -> list[dict[str, Any]]:
    return result.raw["metrics"].get("calibration", {}).get("reliability_diagram") or []


def severity_curve(result: Result) -> list[tuple[int, float]] | None:
    """(severity, accuracy averaged over corruption kinds), severity 0 being the clean images."""
    corruptions = result.raw["metrics"].get("corruptions")
    if not corruptions or "clean_accuracy" not in corruptions:
        return None
    curve = [(0, corruptions["clean_accuracy"])]
    for severity in corruptions["severities"]:
        values = [corruptions[kind][str(severity)]["accuracy"] for kind in corruptions["kinds"]]
        curve.append((int(severity), sum(values) / len(values)))
    return curve


def severity_figure(group: Sequence[Result], title: str) -> bytes | None:
    """Accuracy against corruption severity for every result of the group."""
    curves = {result.variant: curve for result in group if (curve := severity_curve(result))}
    if not curves:
        return None
    colours = variant_colours(group)
    kinds = next(r.raw["metrics"]["corruptions"]["kinds"] for r in group if r.variant in curves)
    with rc_context(FONT):
        figure, (ax,) = _figure(1, 1)
        figure.set_size_inches(7.5, 4.6)
        references = {result.variant for result in group if result.is_reference}
        for variant, curve in curves.items():
            reference = variant in references  # dashed and wider, so a quantized curve on top stays visible
            ax.plot([s for s, _ in curve], [100 * a for _, a in curve], "--o" if reference else "-o",
                    ms=6 if reference else 4, lw=2.5 if reference else 1.5, color=colours[variant], label=variant)
        ax.set(xlabel="corruption severity (0 = clean)", ylabel="top-1 accuracy (%)",
               title=f"{title}: accuracy vs corruption severity\n(mean over {', '.join(kinds)})")
        ax.set_xticks(range(6))
        ax.legend(loc="lower left", ncols=2)
        ax.grid(alpha=0.3)
        return _png(figure)


def spectrum_figure(group: Sequence[Result], spectra: Mapping[str, Mapping[str, Any]], title: str) -> bytes | None:
    """Residual-energy profile (share of the quantization residual per FP32 spectral rank) and spectral gain
    per rank, for every quantized result with a diagnostic; ``spectra`` maps variant -> diagnostic."""
    if not spectra:
        return None
    colours = variant_colours(group)
    with rc_context(FONT):
        figure, (shares, gains) = _figure(2, 2)
        figure.set_size_inches(11, 4.6)
        reference_drawn = False
        for variant, diagnostic in spectra.items():
            per_rank = diagnostic["per_rank"]
            ranks = list(range(1, diagnostic["ranks"] + 1))
            if not reference_drawn:
                shares.semilogy(ranks, [max(v, 1e-12) for v in per_rank["reference_share"]], "--", color="black",
                                label="FP32 variance share")
                for ax in (shares, gains):
                    ax.axvline(diagnostic["head_ranks"] + 0.5, color="grey", lw=1, ls=":",
                               label=f"head | tail (top {diagnostic['head_fraction']:.0%} of ranks)")
                reference_drawn = True
            shares.semilogy(ranks, [max(v, 1e-12) for v in per_rank["residual_share"]], color=colours[variant],
                            label=f"{variant}: residual, {diagnostic['residual_tail_share']:.0%} in tail")
            gains.plot(ranks, [math.nan if v is None else v for v in per_rank["gain"]], color=colours[variant],
                       label=f"{variant}: tail gain {diagnostic['tail_gain']:.3f}")
        gains.axhline(1.0, color="black", lw=1)
        shares.set(xlabel="rank in the FP32 SVD basis (1 = most variance)", ylabel="share of energy (log scale)",
                   title="residual-energy profile")
        gains.set(xlabel="rank in the FP32 SVD basis (1 = most variance)",
                  ylabel="quantized / FP32 variance (gain)", title="spectral gain (< 1: damped)")
        for ax in (shares, gains):
            ax.legend(loc="best")
            ax.grid(alpha=0.3)
        figure.suptitle(f"{title}: spectrum of the clean-ID image features", wrap=True)
        return _png(figure)


@dataclass(frozen=True)
class FigureKind:
    """A figure of the report: ``draw(group, references, spectra, title)`` (None: no data), its caption, and
    ``missing(group)``: why a group has none."""

    name: str
    caption: str
    draw: Callable[[Sequence[Result], Mapping[str, Result], Mapping[str, Mapping[str, Any]], str], bytes | None]
    missing: Callable[[Sequence[Result]], str]


def _missing_timing(group: Sequence[Result]) -> str:
    if any(result.timing for result in group):
        return "only emulated timings on this target (not device latencies)"
    return "no bench JSON beside these results (run `lpmr-edge bench`)"


FIGURES = (  # drawers looked up when called, so each stays replaceable by name
    FigureKind("tradeoff", "Trade-off: reliability metrics vs measured latency; the black line is the Pareto front, "
               "error bars are 95% CIs", lambda group, refs, spectra, title: tradeoff_figure(group, title),
               _missing_timing),
    FigureKind("reliability", "Reliability diagrams: FP32 reference (dashed black) vs each quantized result",
               lambda group, refs, spectra, title: reliability_figure(group, refs, title),
               lambda group: "no quantized result with an FP32 reference here"),
    FigureKind("severity", "Severity: top-1 accuracy vs corruption severity, mean over corruption kinds",
               lambda group, refs, spectra, title: severity_figure(group, title),
               lambda group: "the suite had no corruptions (use --suite quick or full)"),
    FigureKind("spectrum", "Spectrum: where the quantization residual lives in the FP32 representation's "
               "spectrum, and how much each component's variance is damped (gain < 1)",
               lambda group, refs, spectra, title: spectrum_figure(group, spectra, title),
               lambda group: "no quantized result whose clean-ID outputs can be compared with its reference's"),
)
CAPTIONS = {kind.name: kind.caption for kind in FIGURES}
