"""The emulated arm64 device runs ExecuTorch (XNNPACK) and OpenVINO artifacts like x86 does.

Both sides run the same loading code: each backend's ``loader`` module, in this process on x86 and shipped
with the device server to the emulated root. Needs the root from `make arm-root` (skipped without it) and
root privileges. Each emulated run takes about a minute, mostly importing torch and executorch under QEMU.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from lpmr_edge.artifact import FORMAT
from lpmr_edge.backends import BACKENDS
from lpmr_edge.devices.emulated import EmulatedArm64
from lpmr_edge.devices.kinds import parse_device
from lpmr_edge.errors import UserError
from lpmr_edge.manifest import write_manifest
from lpmr_edge.runtimes.device import DeviceRuntime

pytestmark = pytest.mark.slow
pytest_plugins = ["device_fixtures"]

BATCH = 4
RUNTIME_CONFIGS = {
    "executorch": {"backend": "XnnpackBackend", "method": "forward", "threads": 1, "executed_precision": "fp32"},
    "openvino": {"device": "CPU", "threads": 1, "properties": {"INFERENCE_PRECISION_HINT": "f32"}},
}


class TinyNet(torch.nn.Module):
    """Conv + linear: the op kinds of the CLIP towers that XNNPACK takes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 8 * 8, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _export_pte(model: torch.nn.Module, example: torch.Tensor, path: Path) -> Path:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    ep = torch.export.export(model, (example,))
    program = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
    path.write_bytes(program.buffer)
    return path


def _quantize_int8(model: torch.nn.Module, example: torch.Tensor) -> torch.nn.Module:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(model, (example,)).module(), quantizer)
    for _ in range(8):
        prepared(torch.randn_like(example))
    return convert_pt2e(prepared)


def _artifact(runtime: str, tower_file: Path, out: Path) -> Path:
    """``tower_file`` (with an IR's .bin) as an artifact of ``runtime`` whose image tower it is (TinyNet has no
    text tower: the text entry names the same file and is never run)."""
    out.mkdir()
    for path in (tower_file, tower_file.with_suffix(".bin")):
        if path.is_file():
            (out / path.name).write_bytes(path.read_bytes())
    tower = {"file": tower_file.name, "inputs": [{"name": "x", "shape": [BATCH, 3, 8, 8], "dtype": "float32"}]}
    write_manifest(out, {"format": FORMAT, "runtime": runtime, "precision": "fp32", "model": {},
                         "target": {"name": "tiny", "arch": "aarch64"}, "runtime_config": RUNTIME_CONFIGS[runtime],
                         "towers": {"image": tower, "text": tower}})
    return out


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """fp32 and int8 .pte and an fp32 OpenVINO IR of TinyNet as artifacts, the fixed input and torch's output."""
    import openvino

    out = tmp_path_factory.mktemp("artifacts")
    torch.manual_seed(0)
    model = TinyNet().eval()
    example = torch.randn(BATCH, 3, 8, 8)
    np.save(out / "input.npy", example.numpy())
    with torch.no_grad():
        np.save(out / "torch.npy", model(example).numpy())
        ov_model = openvino.convert_model(model, example_input=example)
        openvino.save_model(ov_model, out / "tiny.xml", compress_to_fp16=False)
        return {
            "input": out / "input.npy",
            "torch": out / "torch.npy",
            "et-fp32": _artifact("executorch", _export_pte(model, example, out / "tiny-fp32.pte"), out / "et-fp32"),
            "et-int8": _artifact("executorch", _export_pte(_quantize_int8(model, example), example,
                                                           out / "tiny-int8.pte"), out / "et-int8"),
            "ov-fp32": _artifact("openvino", out / "tiny.xml", out / "ov-fp32"),
        }


@pytest.fixture(scope="module")
def device() -> EmulatedArm64:
    dev = EmulatedArm64()
    if not dev.built():
        pytest.skip(f"no emulated arm64 root at {dev.root}; build it with `make arm-root` (as root)")
    return dev


def _run_x86(name: str, artifacts: dict[str, Path]) -> np.ndarray:
    """The image tower on this host through the backend's loader (the code the device runs)."""
    artifact = artifacts[name]
    manifest = json.loads((artifact / "manifest.json").read_text())
    loader = importlib.import_module(BACKENDS[manifest["runtime"]].runner().loader)
    towers, _ = loader.load(artifact, manifest, 1)
    return np.asarray(towers["image"](np.load(artifacts["input"])), dtype=np.float32)


def _run_arm(spec: str, name: str, artifacts: dict[str, Path]) -> tuple[np.ndarray, DeviceRuntime]:
    """The image tower on the emulated device through its device server; the runtime (closed) for its report."""
    runtime = DeviceRuntime(artifacts[name], parse_device(spec), threads=1)
    try:
        return runtime.run_on_device("image", np.load(artifacts["input"])).features, runtime
    finally:
        runtime.close()


def test_device_is_aarch64(device: EmulatedArm64, tmp_path: Path) -> None:
    argv = [device.python, "-c", "import platform; print(platform.machine())"]
    result = device.run(argv, {}, tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "aarch64"
    facts = device.describe()
    assert facts["emulated"] is True
    assert facts["qemu"].startswith("qemu-aarch64 version 10.")
    assert facts["stamp"]["packages"]["executorch"] == "1.5.1"


def test_run_copies_files_and_kills_on_timeout(device: EmulatedArm64, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("hello")
    script = "import shutil; shutil.copy('in.txt', 'out/copy.txt')"
    result = device.run([device.python, "-c", script], {"in.txt": tmp_path / "in.txt"}, tmp_path / "o", 120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "o" / "copy.txt").read_text() == "hello"

    marker = f"lpmr-timeout-test-{uuid.uuid4()}"  # the root may be in use by others at the same time
    with pytest.raises(subprocess.TimeoutExpired):
        device.run([device.python, "-c", "import time; time.sleep(600)", marker], {}, tmp_path / "o2", 10)
    left = [p for p in Path("/proc").glob("[0-9]*") if marker.encode() in _cmdline(p)]
    assert not left, f"processes left behind: {left}"
    assert not (tmp_path / "o2").exists()


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


def test_openvino_fp32_matches_x86(emulated_device: str, artifacts: dict[str, Path]) -> None:
    """(ExecuTorch fp32 on the emulated device: tests/test_emulated_eval.py and tests/test_emulated_run.py.)"""
    x86 = _run_x86("ov-fp32", artifacts)
    arm, runtime = _run_arm(emulated_device, "ov-fp32", artifacts)
    assert arm.shape == x86.shape == (BATCH, 16)
    assert np.max(np.abs(arm - x86)) <= 1e-4 * np.max(np.abs(x86))
    timing = runtime.timing()
    assert runtime.device_info["machine"] == timing["measured_on"] == "aarch64"
    assert timing["emulated"] is True and timing["note"].startswith("emulated")
    assert {facts["inference_precision"] for facts in runtime.loaded["execution"].values()} == {"f32"}


def test_int8_pte_bit_exact_on_arm64(emulated_device: str, artifacts: dict[str, Path]) -> None:
    x86 = _run_x86("et-int8", artifacts)
    arm, _ = _run_arm(emulated_device, "et-int8", artifacts)
    assert not np.allclose(x86, np.load(artifacts["torch"]), atol=1e-4), "the int8 artifact is not quantized"
    np.testing.assert_array_equal(arm, x86)


def test_a_tower_file_of_another_runtime_is_refused(artifacts: dict[str, Path], tmp_path: Path) -> None:
    """An OpenVINO artifact whose tower is a .pte is refused before anything is loaded."""
    broken = _artifact("openvino", artifacts["et-fp32"] / "tiny-fp32.pte", tmp_path / "broken")
    with pytest.raises(UserError, match="tower of .* is tiny-fp32.pte, not a .xml file of runtime 'openvino'"):
        DeviceRuntime(broken, parse_device(f"local?python={sys.executable}&workdir={tmp_path / 'device'}"))


def test_a_tower_file_the_runtime_cannot_read_is_one_line(tmp_path: Path) -> None:
    """The device's loader (the host's own loading code) reports an unreadable IR in one line."""
    (tmp_path / "bad.xml").write_text("not an IR")
    broken = _artifact("openvino", tmp_path / "bad.xml", tmp_path / "broken")
    with pytest.raises(UserError, match="OpenVINO .* cannot load the image tower") as failure:
        DeviceRuntime(broken, parse_device(f"local?python={sys.executable}&workdir={tmp_path / 'device'}"))
    assert "\n" not in str(failure.value)
