"""The emulated arm64 device runs ExecuTorch (XNNPACK) and OpenVINO artifacts like x86 does.

Needs the root from `make arm-root` (skipped without it) and root privileges. Each emulated run
takes about a minute, mostly importing torch and executorch under QEMU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from lpmr_edge.devices.emulated import EmulatedArm64
from lpmr_edge.devices.emulated import RUNNER

pytestmark = pytest.mark.slow

BATCH = 4


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


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """fp32 and int8 .pte and an fp32 OpenVINO IR of TinyNet, the fixed input and torch's output."""
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
            "et-fp32": _export_pte(model, example, out / "tiny-fp32.pte"),
            "et-int8": _export_pte(_quantize_int8(model, example), example, out / "tiny-int8.pte"),
            "ov-fp32": out / "tiny.xml",
        }


@pytest.fixture(scope="module")
def device() -> EmulatedArm64:
    dev = EmulatedArm64()
    if not dev.built():
        pytest.skip(f"no emulated arm64 root at {dev.root}; build it with `make arm-root` (as root)")
    return dev


def _run_x86(runtime: str, artifact: Path, input_npy: Path, out: Path) -> tuple[np.ndarray, dict]:
    env = {k: v for k, v in os.environ.items() if k != "LPMR_EDGE_EMULATED"}
    subprocess.run(
        [sys.executable, str(RUNNER), "--runtime", runtime, "--artifact", str(artifact), "--input",
         str(input_npy), "--output", str(out / "output.npy"), "--meta", str(out / "meta.json")],
        check=True, env=env,
    )
    return np.load(out / "output.npy"), json.loads((out / "meta.json").read_text())


def _run_arm(device: EmulatedArm64, runtime: str, artifact: Path, input_npy: Path, out: Path):
    result = device.run_runner(runtime, artifact, input_npy, out, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return np.load(out / "output.npy"), json.loads((out / "meta.json").read_text())


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


@pytest.mark.parametrize(
    ("name", "runtime"), [("et-fp32", "executorch"), ("ov-fp32", "openvino")]
)
def test_fp32_matches_x86(device: EmulatedArm64, artifacts: dict[str, Path], tmp_path: Path,
                          name: str, runtime: str) -> None:
    x86, _ = _run_x86(runtime, artifacts[name], artifacts["input"], tmp_path / "x86")
    arm, meta = _run_arm(device, runtime, artifacts[name], artifacts["input"], tmp_path / "arm")
    assert arm.shape == x86.shape == (BATCH, 16)
    assert np.max(np.abs(arm - x86)) <= 1e-4 * np.max(np.abs(x86))
    assert meta["measured_on"] == {**meta["measured_on"], "machine": "aarch64", "emulated": True}
    assert meta["timing"].startswith("emulated")
    if runtime == "openvino":
        assert meta["inference_precision"] == "f32"


def test_int8_pte_bit_exact_on_arm64(
    device: EmulatedArm64, artifacts: dict[str, Path], tmp_path: Path
) -> None:
    x86, _ = _run_x86("executorch", artifacts["et-int8"], artifacts["input"], tmp_path / "x86")
    arm, _ = _run_arm(device, "executorch", artifacts["et-int8"], artifacts["input"], tmp_path / "arm")
    assert not np.allclose(x86, np.load(artifacts["torch"]), atol=1e-4), "the int8 artifact is not quantized"
    np.testing.assert_array_equal(arm, x86)


def test_runner_rejects_bad_input(artifacts: dict[str, Path], tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(RUNNER), "--runtime", "openvino", "--artifact", str(artifacts["et-fp32"]),
         "--input", str(artifacts["input"]), "--output", str(tmp_path / "y.npy")],
        check=False, capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "runner: openvino needs a .xml file, got tiny-fp32.pte"
