"""The arm target's ExecuTorch artifacts of lpmr-tiny-fmnist compute on an emulated aarch64 CPU what they do on x86.

Exports the arm target's fp32 and int8 .pte, runs each tower's fixed reference input (from the artifact's
reference.npz) on x86 in this process and in the emulated arm64 root through the device server (which runs the
ExecuTorch backend's loader, the code the host runtime loads with), and
asserts that they agree within the artifact's own verification tolerance - the check a real device makes
(fp32: cosine >= 0.99999 and max|diff| <= 1e-4 x max|x86|; int8: cosine >= 0.999 and <= 2e-2).
Needs the root from `make arm-root` and root privileges (skipped otherwise); each emulated run takes about a
minute, mostly importing torch and executorch under QEMU.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lpmr_edge.artifact import feature_agreement
from lpmr_edge.devices.emulated import EmulatedArm64
from lpmr_edge.devices.kinds import parse_device
from lpmr_edge.export import export_target
from lpmr_edge.manifest import verify_manifest
from lpmr_edge.runtimes.device import DeviceRuntime
from lpmr_edge.runtimes.executorch.export import run_program
from lpmr_edge.targets import load_target

pytestmark = pytest.mark.slow
pytest_plugins = ["device_fixtures"]

PRECISIONS = ("fp32", "int8")


@pytest.fixture(scope="module")
def device() -> EmulatedArm64:
    emulated = EmulatedArm64()
    if not emulated.available():
        pytest.skip(f"no usable emulated arm64 root at {emulated.root}: build it with `make arm-root` and run as root")
    return emulated


@pytest.fixture(scope="module")
def arm_artifacts(device: EmulatedArm64, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The arm target's fp32 and int8 ExecuTorch artifacts of the trained stand-in (exported only with a device)."""
    paths = export_target("lpmr-tiny-fmnist", load_target("arm"), runtimes=["executorch"], precisions=PRECISIONS,
                          out_root=tmp_path_factory.mktemp("artifacts"))
    return {path.name.removeprefix("executorch-"): path for path in paths}


@pytest.mark.parametrize("tower", ["image", "text"])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_arm64_matches_x86(arm_artifacts: dict[str, Path], emulated_device: str, precision: str,
                           tower: str) -> None:
    artifact = arm_artifacts[precision]
    manifest = verify_manifest(artifact)
    assert manifest["target"]["arch"] == manifest["abi"]["arch"] == "aarch64"
    verification = manifest["verification"]
    with np.load(artifact / verification["file"]) as reference:
        inputs = reference[verification["towers"][tower]["input"]]
    x86 = run_program(artifact / f"{tower}.pte", inputs)
    runtime = DeviceRuntime(artifact, parse_device(emulated_device), threads=manifest["runtime_config"]["threads"])
    try:
        arm = runtime.run_on_device(tower, inputs).features
    finally:
        runtime.close()
    agreement = feature_agreement(x86, arm)
    tolerance = verification["tolerance"]
    assert arm.shape == x86.shape
    assert agreement["cosine_min"] >= tolerance["cosine_min"], agreement
    assert agreement["relative_max_diff"] <= tolerance["relative_max_diff"], agreement
