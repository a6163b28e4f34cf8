"""The artifact contract: what an exported artifact directory is, and the checks a runtime makes before
trusting it.

An artifact is a directory with the two towers' files and ``manifest.json`` (format ``FORMAT``; see
``lpmr_edge/export/__init__.py`` for the layout). Runtimes load it through ``verify_artifact`` (every
file's sha256, the format and the runtime it was made for), report ``foreign_machine_warnings``, and
artifacts that carry reference inputs and outputs (``verification`` in the manifest) are checked with
``verify_reference_outputs`` on the machine that runs them. Imports nothing of export, quantize, data or
the runtimes.
"""
from __future__ import annotations

import platform
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lpmr_edge.backends import backend
from lpmr_edge.errors import UserError
from lpmr_edge.manifest import verify_manifest

FORMAT = "lpmr-edge-artifact/1"
TOWERS = ("image", "text")


def verify_artifact(directory: Path, runtime: str | None = None) -> dict[str, Any]:
    """An artifact's manifest after checking every file hash, the format, (if given) the runtime it was made
    for and that its tower files are that runtime's kind."""
    manifest = verify_manifest(directory)
    if manifest.get("format") != FORMAT or runtime not in (None, manifest.get("runtime")):
        wanted = f" for runtime '{runtime}'" if runtime else ""
        raise UserError(f"{directory} is not an artifact{wanted} in format {FORMAT} (format "
                        f"{manifest.get('format')!r}, runtime {manifest.get('runtime')!r}); export one with "
                        f"`lpmr-edge export{f' --runtime {runtime}' if runtime else ''}`")
    suffix = backend(manifest["runtime"]).file_suffix
    for tower in TOWERS:
        name = manifest["towers"][tower]["file"]
        if not name.endswith(suffix):
            raise UserError(f"the {tower} tower of {directory} is {name}, not a {suffix} file of runtime "
                            f"'{manifest['runtime']}'; re-export the artifact")
    return manifest


def foreign_machine_warnings(manifest: Mapping[str, Any], machine: str | None = None, where: str | None = None) -> list[str]:
    """A warning when an artifact runs on another CPU architecture (``machine``, default this one's) than its
    target's; ``where`` names the machine in the warning (default its architecture)."""
    target, machine = manifest["target"], machine or platform.machine()
    if target["arch"] == machine:
        return []
    warning = (f"artifact for target '{target['name']}' ({target['arch']}) runs on {where or machine}: "
               "figures do not describe the target")
    return [warning]


def feature_agreement(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Cosine (mean, min), max abs diff and max abs diff relative to the reference's largest magnitude."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    cosine = (reference * candidate).sum(-1) / np.maximum(
        np.linalg.norm(reference, axis=-1) * np.linalg.norm(candidate, axis=-1), 1e-30)
    max_abs = float(np.abs(reference - candidate).max())
    return {"cosine_mean": float(cosine.mean()), "cosine_min": float(cosine.min()), "max_abs_diff": max_abs,
            "relative_max_diff": max_abs / max(float(np.abs(reference).max()), 1e-30)}


def verify_reference_outputs(artifact_dir: Path, manifest: Mapping[str, Any],
                             run: Callable[[str, np.ndarray], np.ndarray], where: str) -> dict[str, dict[str, float]]:
    """Run an artifact's reference inputs (its manifest's ``verification``) through ``run(tower, inputs)`` and
    compare with the outputs recorded at export; the agreement per tower, or a UserError naming ``where``
    when a tower is outside the manifest's tolerance."""
    verification = manifest["verification"]
    tolerance = verification["tolerance"]
    with np.load(Path(artifact_dir) / verification["file"]) as reference:
        agreement = {tower: feature_agreement(reference[names["expected"]], run(tower, reference[names["input"]]))
                     for tower, names in verification["towers"].items()}
    failed = [tower for tower, result in agreement.items()
              if result["cosine_min"] < tolerance["cosine_min"]
              or result["relative_max_diff"] > tolerance["relative_max_diff"]]
    if failed:
        raise UserError(f"{', '.join(failed)} tower output(s) on {where} differ from the exporting host's beyond "
                        f"{tolerance}: {agreement}; do not trust results from this device/runtime build until "
                        "that is explained")
    return agreement
