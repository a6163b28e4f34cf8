"""`lpmr-edge eval --device emu-arm64` runs the suite on the emulated arm64 root: aarch64 arithmetic,
timings marked emulated. Needs the root of `make arm-root` and root privileges (skipped without them);
most of its time is importing torch and executorch under QEMU."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from device_fixtures import one_line_error, processes_inside, run_cli, wait_until

from lpmr_edge.devices.emulated import EmulatedArm64
from lpmr_edge.runtimes.factory import open_runtime
from lpmr_edge.suite import EvalSettings, evaluate

pytestmark = pytest.mark.slow
pytest_plugins = ["device_fixtures"]

LIMIT = 16  # one image shard


def test_eval_on_emulated_arm64(emulator: EmulatedArm64, emulated_device: str, executorch_artifact: Path,
                                tmp_path: Path) -> None:
    local = tmp_path / "local"
    evaluate(open_runtime(artifact=executorch_artifact), local, EvalSettings(limit=LIMIT, batch_size=LIMIT))
    run = run_cli("eval", "--device", emulated_device, "--artifact", str(executorch_artifact),
                  "--limit", str(LIMIT), "--batch-size", str(LIMIT), "--out", str(tmp_path / "arm"), "--json")
    assert run.exit_code == 0, run.output
    described = json.loads((tmp_path / "arm" / "manifest.json").read_text())["runtime"]
    assert described["device"] == {**described["device"], "kind": "emu-arm64", "machine": "aarch64", "emulated": True}
    assert described["timing"]["emulated"] is True and described["timing"]["note"].startswith("emulated")
    assert described["warnings"] == []  # an arm artifact on an aarch64 device
    arm, x86 = (np.load(directory / "outputs" / "id.npz")["features"] for directory in (tmp_path / "arm", local))
    assert arm.shape == x86.shape == (LIMIT, 64)
    np.testing.assert_allclose(arm, x86, rtol=0, atol=1e-4 * np.abs(x86).max())
    wait_until(lambda: not processes_inside(emulator.root), "the emulated device server to end")


def test_an_unbuilt_root_is_one_line(tmp_path: Path, openvino_artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LPMR_EDGE_ARM_ROOT", str(tmp_path / "no-root"))
    message = one_line_error(run_cli("eval", "--device", "emu-arm64", "--artifact", str(openvino_artifact)))
    assert f"no usable emulated arm64 root at {tmp_path / 'no-root'}" in message and "make arm-root" in message
