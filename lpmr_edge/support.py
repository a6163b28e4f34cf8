"""Which architecture works with which runtime and precision here: a coverage matrix measured, not written.

Each cell (model × runtime-precision) exports the artifact through the public export API, checks parity with
torch FP32 on real images (``lpmr_edge.parity``), reads ExecuTorch's delegation report from the artifact
manifest and times the image tower at batch 1 interleaved with the FP32 artifact of the same runtime
(``lpmr_edge.bench``). Cells are stored as one JSON file each under ``<root>/cells`` and are resumable:
a finished cell is read back, not redone. A failing step is recorded as a one-line reason.
"""
from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lpmr_edge.errors import UserError
from lpmr_edge.manifest import MANIFEST_NAME, atomic_write_json, machine_info, now_utc, read_json

DEFAULT_ROOT = Path("lpmr-results/support")
CELLS = (("openvino", "fp32"), ("openvino", "int8"), ("openvino", "int4-w"), ("executorch", "fp32"),
         ("executorch", "int8"))
ARCHITECTURES = ("MobileCLIP-S1", "MobileCLIP2-S0", "MobileCLIP2-S2", "MobileCLIP2-B", "ViT-B-16-SigLIP2", "RN50",
                 "convnext_base", "ViT-S-16", "ViT-B-16", "ViT-B-32")
REASON_CHARACTERS = 160
Log = Callable[[str], None]


@dataclass(frozen=True)
class SupportSettings:
    """How each cell is measured: the target (threads, batch), the parity image set, the latency budget."""

    target: str = "x86"
    dataset: str = "fmnist-test"
    parity_images: int = 64
    threads: int = 2
    bench_repeats: int = 20
    bench_seconds: float = 5.0

    def __post_init__(self) -> None:
        if self.parity_images < 1 or self.threads < 1 or self.bench_repeats < 1 or self.bench_seconds <= 0:
            raise UserError("parity images, threads, bench repeats and bench seconds must be positive")


def model_spec(architecture: str) -> str:
    """The spec a matrix row loads: an open_clip architecture name means seeded random weights; a full spec
    (``ARCH:TAG``, ``hf-hub:ORG/NAME``, ``random:ARCH``, a bundled stand-in) is used as given."""
    from lpmr_edge.models.bundled import BUNDLED_MODELS

    return architecture if ":" in architecture or architecture in BUNDLED_MODELS else f"random:{architecture}"


def one_line(error: BaseException) -> str:
    """``Type: first line of the message``, cut to a table-friendly length."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    reason = f"{type(error).__name__}: {message}" if not isinstance(error, UserError) else message
    return reason if len(reason) <= REASON_CHARACTERS else reason[:REASON_CHARACTERS - 1] + "…"


def _directory_name(architecture: str) -> str:
    return architecture.replace("/", "_").replace(":", "_")


def cell_path(root: Path, architecture: str, runtime: str, precision: str) -> Path:
    """Where one cell's JSON lives."""
    return Path(root) / "cells" / f"{_directory_name(architecture)}__{runtime}-{precision}.json"


def artifacts_root(root: Path, architecture: str) -> Path:
    """Where one architecture's artifacts live (one directory per architecture: artifact paths do not name
    the model)."""
    return Path(root) / "artifacts" / _directory_name(architecture)


def _delegation(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The image tower's delegated-node share and the ops left to portable kernels (ExecuTorch only)."""
    image = (manifest.get("delegation") or {}).get("image")
    if image is None:
        return None
    return {"fraction": image["fraction"], "delegated": image["delegated"], "total": image["total"],
            "non_delegated": image["non_delegated"]}


def _parity(artifact: Path, settings: SupportSettings) -> dict[str, Any]:
    from lpmr_edge.parity import check_parity

    result = check_parity(artifact, n=settings.parity_images, dataset=settings.dataset, threads=settings.threads)
    return {"image_cosine_min": result["image"]["cosine_min"], "text_cosine_min": result["text"]["cosine_min"],
            "top1_agreement": result["top1_agreement"], "n": result["n"], "dataset": result["dataset"],
            "executed_precision": result["executed_precision"]}


def _latency(artifact: Path, fp32_artifact: Path | None, settings: SupportSettings) -> dict[str, Any]:
    """Image-tower batch-1 median latency, interleaved in one run with the same runtime's FP32 artifact."""
    from lpmr_edge.bench import BenchSettings, RuntimeSource, benchmark

    artifacts = [artifact] if fp32_artifact is None or fp32_artifact == artifact else [fp32_artifact, artifact]
    bench = benchmark([RuntimeSource(artifact=str(path)) for path in artifacts],
                      BenchSettings(tower="image", batches=(1,), threads=settings.threads, warmup=2,
                                    repeats=settings.bench_repeats, max_seconds=settings.bench_seconds, rounds=4))
    medians = {row["source"]: row["median_ms"] for row in bench["results"]}
    latency = {"image_b1_ms": medians[str(artifact)], "threads": settings.threads}
    if len(artifacts) == 2:
        latency["fp32_image_b1_ms"] = medians[str(fp32_artifact)]
        latency["ratio_to_fp32"] = medians[str(artifact)] / medians[str(fp32_artifact)]
    return latency


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (exports lower towers in child
    processes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _load() -> float:
    """The 1-minute load average (the machine may be shared: every figure carries it)."""
    return round(os.getloadavg()[0], 2)


def _measured(name: str, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``{name: measure()}`` with when and at which load average it ran, or ``{name_error: reason}``."""
    load_before, measured = _load(), now_utc()
    try:
        result: dict[str, Any] = {name: measure()}
    except Exception as error:  # noqa: BLE001 — any failure is this cell's result, reported in one line
        result = {f"{name}_error": one_line(error)}
    return {**result, f"{name}_measured": measured, f"{name}_load": [load_before, _load()]}


def measure_cell(architecture: str, runtime: str, precision: str, settings: SupportSettings,
                 out_root: Path, fp32_artifact: Path | None = None) -> dict[str, Any]:
    """Export one cell and measure it; every failing step is a one-line reason, never an exception."""
    from lpmr_edge.export import ExportRequest, export_artifact
    from lpmr_edge.targets import load_target

    cell: dict[str, Any] = {"architecture": architecture, "model": model_spec(architecture), "runtime": runtime,
                            "precision": precision, "created": now_utc(), "export_load": _load()}
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    try:
        request = ExportRequest(model=cell["model"], target=load_target(settings.target), runtime=runtime,
                                precision=precision)
        artifact, reused = export_artifact(request, out_root)
    except Exception as error:  # noqa: BLE001 — as above
        return {**cell, "exports": False, "error": one_line(error),
                "export_seconds": round(time.perf_counter() - started, 1)}
    cell.update(exports=True, export_seconds=None if reused else round(time.perf_counter() - started, 1),
                export_cpu_seconds=None if reused else round(_cpu_seconds() - cpu_started, 1),
                artifact=str(artifact),
                delegation=_delegation(read_json(artifact / MANIFEST_NAME, "artifact manifest")))
    return {**cell, **_measured("parity", lambda: _parity(artifact, settings)),
            **_measured("latency", lambda: _latency(artifact, fp32_artifact, settings))}


def remeasure_latency(cell: dict[str, Any], settings: SupportSettings, fp32_artifact: Path | None) -> dict[str, Any]:
    """A stored, exported cell with its latency timed again (parity is deterministic and the export is kept)."""
    kept = {key: value for key, value in cell.items() if not key.startswith("latency")}
    return {**kept, **_measured("latency", lambda: _latency(Path(cell["artifact"]), fp32_artifact, settings))}


def run_support(architectures: Sequence[str] = ARCHITECTURES, cells: Sequence[tuple[str, str]] = CELLS,
                settings: SupportSettings = SupportSettings(), root: Path = DEFAULT_ROOT,
                log: Log | None = None, remeasure_before: str | None = None) -> dict[str, Any]:
    """Measure every (cell, architecture) not yet stored under ``root`` (cell by cell across architectures, so
    the cheap columns finish first) and return the matrix. Quantized cells time against their runtime's FP32
    artifact when that cell exported. With ``remeasure_before`` (an ISO UTC time), stored cells that exported
    and were timed before it are timed again (e.g. on a quieter machine); an interrupted re-timing resumes
    when given the same time."""
    report = log or (lambda message: None)
    for runtime, precision in cells:
        for architecture in architectures:
            path = cell_path(root, architecture, runtime, precision)
            stored = read_cell(root, architecture, runtime, precision)
            stale = (stored is not None and remeasure_before is not None and stored.get("exports")
                     and stored.get("latency_measured", stored["created"]) < remeasure_before)
            if stored is not None and not stale:
                continue
            report(f"{architecture}: {runtime} {precision}" + (" (latency re-timed)" if stale else ""))
            fp32 = read_cell(root, architecture, runtime, "fp32")
            fp32_artifact = Path(fp32["artifact"]) if fp32 and fp32.get("exports") else None
            atomic_write_json(path, remeasure_latency(stored, settings, fp32_artifact) if stale else
                              measure_cell(architecture, runtime, precision, settings,
                                           artifacts_root(root, architecture), fp32_artifact))
    return support_matrix(architectures, cells, settings, root)


def read_cell(root: Path, architecture: str, runtime: str, precision: str) -> dict[str, Any] | None:
    """A stored cell, or None when it was not run."""
    path = cell_path(root, architecture, runtime, precision)
    return read_json(path, "support cell") if path.is_file() else None


def support_matrix(architectures: Sequence[str], cells: Sequence[tuple[str, str]], settings: SupportSettings,
                   root: Path = DEFAULT_ROOT) -> dict[str, Any]:
    """The stored cells as one report (cells not run are listed, not guessed)."""
    stored = {(architecture, runtime, precision): read_cell(root, architecture, runtime, precision)
              for architecture in architectures for runtime, precision in cells}
    return {"machine": machine_info(), "settings": asdict(settings), "created": now_utc(),
            "cells": [cell for cell in stored.values() if cell is not None],
            "not_run": [{"architecture": key[0], "runtime": key[1], "precision": key[2]}
                        for key, cell in stored.items() if cell is None]}


TABLE_COLUMNS = ("architecture", "runtime", "precision", "exports", "export s (CPU s)", "image cos min", "top-1 agr.",
                 "delegated", "not delegated", "image b1 ms", "vs fp32", "load", "note")


def _number(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def table_rows(matrix: dict[str, Any]) -> list[list[str]]:
    """One row per stored cell (``TABLE_COLUMNS``); a failing step shows its one-line reason in ``note``."""
    rows = []
    for cell in matrix["cells"]:
        parity, latency, delegation = cell.get("parity") or {}, cell.get("latency") or {}, cell.get("delegation")
        left_out = ", ".join(f"{op.removeprefix('aten_').removesuffix('_default')}×{count}"
                             for op, count in (delegation or {}).get("non_delegated", {}).items())
        note = cell.get("error") or "; ".join(cell[key] for key in ("parity_error", "latency_error") if key in cell)
        rows.append([cell["architecture"], cell["runtime"], cell["precision"], "yes" if cell["exports"] else "no",
                     _number(cell.get("export_seconds"), 0) + (f" ({cell['export_cpu_seconds']:.0f})"
                                                               if cell.get("export_cpu_seconds") else ""),
                     _number(parity.get("image_cosine_min"), 4),
                     _number(parity.get("top1_agreement"), 3),
                     "—" if delegation is None else f"{delegation['fraction']:.1%}", left_out or "—",
                     _number(latency.get("image_b1_ms"), 1), _number(latency.get("ratio_to_fp32"), 2),
                     _number(max(cell["latency_load"]) if "latency_load" in cell else None, 1), note or ""])
    return rows


def markdown_table(matrix: dict[str, Any]) -> str:
    """The matrix as a Markdown table with the machine, threads, date and the cells not run."""
    machine, settings = matrix["machine"], matrix["settings"]
    heading = (f"Measured {matrix['created'][:10]} on {machine['cpu']} ({machine['arch']}, {machine['cores']} "
               f"cores), {settings['threads']} threads, target `{settings['target']}`; parity on "
               f"{settings['parity_images']} `{settings['dataset']}` images; random weights (`random:ARCH`); `load`: "
               "the 1-minute load average around the cell's latency (the higher of before and after).")
    lines = [heading, "",
             "| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(matrix)]
    not_run: dict[str, list[str]] = {}
    for entry in matrix["not_run"]:
        not_run.setdefault(entry["architecture"], []).append(f"{entry['runtime']} {entry['precision']}")
    if not_run:
        lines += ["", "Not run: " + "; ".join(f"{architecture} ({', '.join(cells)})"
                                              for architecture, cells in not_run.items()) + "."]
    return "\n".join(lines)


def parse_cell(text: str) -> tuple[str, str]:
    """``RUNTIME:PRECISION`` (e.g. ``openvino:int8``) checked against the runtimes' precisions."""
    from lpmr_edge.backends import BACKENDS

    runtime, _, precision = text.partition(":")
    if runtime not in BACKENDS or precision not in BACKENDS[runtime].precisions:
        known = "; ".join(f"{name}: {', '.join(backend.precisions)}" for name, backend in BACKENDS.items())
        raise UserError(f"--cell {text!r} is not RUNTIME:PRECISION of an export runtime ({known})")
    return runtime, precision
