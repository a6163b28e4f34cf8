"""Results not computed twice: whether a result directory already holds a runtime's evaluation, and taking the
per-sample outputs of a result made by a runtime of the same identity (runtime, precision, artifact files'
sha256, executed precision; the device for an on-device runtime) on this machine, e.g. a target's ExecuTorch
artifact byte-identical to another target's, both run here."""
from __future__ import annotations

import filecmp
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lpmr_edge.data import PreprocessedSets
from lpmr_edge.errors import UserError
from lpmr_edge.manifest import MANIFEST_NAME, atomic_write_json, machine_info, read_json, sha256_json
from lpmr_edge.runtimes.base import Runtime
from lpmr_edge.suite.config import load_suite
from lpmr_edge.suite.outputs import METRICS_FILE, OUTPUTS_DIR
from lpmr_edge.suite.run import EvalSettings, Progress, evaluate


def holds_result(out_dir: Path, identity: str, suite: str, sequential: Mapping[str, Any] | None = None) -> bool:
    """True if ``out_dir`` holds a finished result of a runtime of this ``identity`` with ``suite``'s settings
    (by content) and ``metrics["sequential"]`` (None: a full evaluation)."""
    metrics, manifest = out_dir / METRICS_FILE, out_dir / MANIFEST_NAME
    if not (metrics.is_file() and manifest.is_file()):
        return False
    stored = read_json(metrics, "metrics")
    return read_json(manifest, "results manifest").get("runtime", {}).get("identity") == identity \
        and sha256_json(stored.get("suite")) == sha256_json(asdict(load_suite(suite))) \
        and stored["metrics"].get("sequential") == sequential


def same_outputs_result(results_root: Path, identity: str, suite: str, out_dir: Path) -> Path | None:
    """A finished full evaluation with ``suite`` in ``results_root/<target>/<name>/`` other than ``out_dir``, made
    on this machine by a runtime of this ``identity`` (its per-sample outputs are what ``out_dir``'s would be),
    or None."""
    machine = machine_info()
    for candidate in sorted(results_root.glob(f"*/*/{METRICS_FILE}")):
        directory = candidate.parent  # not a staging directory (hidden) of a result being written
        if directory.name.startswith(".") or directory.resolve() == out_dir.resolve():
            continue
        try:  # another step may be replacing it right now: then it is not a source
            if holds_result(directory, identity, suite) \
                    and read_json(directory / MANIFEST_NAME, "results manifest").get("machine") == machine:
                return directory
        except UserError:
            continue
    return None


def _run_directory(result: Path) -> Path:
    """The run directory of a result directory (``<run>/results/<target>/<name>``): what ``reused_outputs``
    names its source relative to."""
    return Path(result).resolve().parents[2]


def evaluate_reusing(runtime: Runtime, out_dir: Path, source: Path, suite: str, log: Callable[[str], None],
                     progress: Progress | None, preprocessed: PreprocessedSets | None = None) -> None:
    """Evaluate ``suite`` through ``runtime`` into ``out_dir`` starting from the per-sample outputs of ``source``
    (``same_outputs_result``): every set they hold is reused (each is checked against the runtime identity,
    dataset and prompts before use; anything else runs), the metrics are scored from them (taken from ``source``
    when every set was reused: the same outputs, suite and seed score the same), and the manifest's
    ``reused_outputs`` names ``source`` (relative to the run's directory, ``source/../..``) and the sets
    taken as they were. ``out_dir`` appears complete or not at all."""
    from lpmr_edge.export import staged_directory

    origin = source.resolve().relative_to(_run_directory(source)).as_posix()
    with staged_directory(out_dir) as staging:
        shutil.copytree(source / OUTPUTS_DIR, staging / OUTPUTS_DIR)
        evaluate(runtime, staging, EvalSettings(suite=suite), progress=progress, preprocessed=preprocessed,
                 scored_by=source)
        sets = [path.stem for path in sorted((source / OUTPUTS_DIR).glob("*.npz"))
                if (staging / OUTPUTS_DIR / path.name).read_bytes() == path.read_bytes()]
        manifest = read_json(staging / MANIFEST_NAME, "results manifest")
        manifest["reused_outputs"] = {
            "from": origin, "sets": sets,
            "why": "a runtime of the same identity (runtime, precision, artifact files' sha256, executed precision) "
                   "evaluated the same suite on this machine: its per-sample outputs are this runtime's"}
        atomic_write_json(staging / MANIFEST_NAME, manifest)
    log(f"  suite: per-sample outputs of {origin} reused (same runtime identity)")


def scored_alike(directory: Path) -> Path | None:
    """The result whose per-sample outputs ``directory``'s evaluation took (its manifest's ``reused_outputs``), if
    the two hold byte-identical outputs and the same metrics (apart from when they were written): whatever is
    computed from one, e.g. a comparison, is then the other's. None otherwise."""
    manifest = directory / MANIFEST_NAME
    origin = read_json(manifest, "results manifest").get("reused_outputs", {}).get("from") \
        if manifest.is_file() else None
    source = None if origin is None else _run_directory(directory) / origin
    if source is None or not (source / METRICS_FILE).is_file():
        return None

    def scored(result: Path) -> dict[str, Any]:
        return {key: value for key, value in read_json(result / METRICS_FILE, "metrics").items() if key != "created"}

    names = sorted(path.name for path in (directory / OUTPUTS_DIR).glob("*.npz"))
    alike = scored(directory) == scored(source) \
        and names == sorted(path.name for path in (source / OUTPUTS_DIR).glob("*.npz")) \
        and all(filecmp.cmp(directory / OUTPUTS_DIR / name, source / OUTPUTS_DIR / name, shallow=False)
                for name in names)
    return source if alike else None
