"""`lpmr-edge run --target … --device emu-arm64 --model lpmr-tiny-fmnist`: the whole pipeline with the
ExecuTorch artifacts evaluated on the emulated aarch64 device, compared with the same artifacts evaluated
on this x86 host.

To fit CI, the target is the arm target reduced to ExecuTorch fp32 + int8 and the suite is small (256 ID
images, one OOD set); the stock arm target and the quick suite take the same code path. Stated tolerance:
top-1 within one prediction of the x86 run and ECE within 0.001 (XNNPACK's aarch64 and x86 kernels agree to
~1e-7 relative on these towers). Opening each artifact on the device runs both towers' reference inputs
(the artifact's reference.npz, whose outputs the exporting x86 host computed with the same program) and
must agree within the artifact's own tolerance (fp32: cosine >= 0.99999 and max|diff| <= 1e-4 x max|x86|;
int8: cosine >= 0.999 and <= 2e-2); the results record that agreement per tower and the test checks it.
Needs the root of `make arm-root` (skipped without it). Run with the Python device server, the default; the
native runner on the same emulated device (both towers, fp32 and int8, against x86 within the artifact's
tolerance, with the root's Python hidden) is tested in test_native_runner.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import target_toml
from device_fixtures import processes_inside, run_cli, wait_until

from lpmr_edge.devices.emulated import EmulatedArm64
from lpmr_edge.runtimes.factory import open_runtime
from lpmr_edge.suite import EvalSettings, evaluate

pytestmark = pytest.mark.slow
pytest_plugins = ["device_fixtures"]

ID_IMAGES = 256
ECE_TOLERANCE = 1e-3
TARGET = target_toml("arm-et", "the arm target, ExecuTorch fp32 and int8 only", "aarch64", threads=2, batch=1,
                     precisions={"executorch": ["fp32", "int8"]})
SUITE = f"""name = "small"
limit = {ID_IMAGES}
bootstrap_resamples = 200

[ood]
sets = ["digits"]
"""


def _headline(result_dir: Path) -> tuple[float, float]:
    metrics = json.loads((result_dir / "metrics.json").read_text())["metrics"]
    return metrics["accuracy"]["top1"], metrics["calibration"]["ece"]


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory, with the reduced arm target and the small suite (shared with ``host_headlines``)."""
    directory = tmp_path_factory.mktemp("emulated-run")
    (directory / "arm-et.toml").write_text(TARGET)
    (directory / "small.toml").write_text(SUITE)
    return directory


@pytest.fixture(scope="module")
def host_headlines(shared_run: Path) -> dict[str, tuple[float, float]]:
    """Top-1 and ECE of each exported artifact evaluated on this x86 host (computed once, after the first run)."""
    headlines = {}
    for precision in ("fp32", "int8"):
        on_host = shared_run / "x86" / precision
        evaluate(open_runtime(artifact=shared_run / "run" / "artifacts" / "arm-et" / f"executorch-{precision}"),
                 on_host, EvalSettings(suite=str(shared_run / "small.toml")))
        headlines[precision] = _headline(on_host)
    return headlines


def test_run_on_the_emulated_device_matches_x86(emulator: EmulatedArm64, emulated_device: str, shared_run: Path,
                                                request: pytest.FixtureRequest) -> None:
    out = shared_run / "run"
    run = run_cli("run", "--model", "lpmr-tiny-fmnist", "--target", str(shared_run / "arm-et.toml"),
                  "--suite", str(shared_run / "small.toml"), "--device", emulated_device,
                  "--out", str(out), "--json")
    assert run.exit_code == 0, run.output
    wait_until(lambda: not processes_inside(emulator.root), "the emulated device servers to end")

    assert not (out / "results" / "arm-et" / "bench.json").exists()  # emulated timings are not latencies
    report = json.loads((out / "report" / "report.json").read_text())
    devices = {row["variant"]: row["device"] for table in report["tables"] for row in table["rows"]}
    assert devices == {"torch fp32": "host (x86_64)", "executorch fp32": "emu-arm64 (aarch64, emulated)",
                       "executorch int8": "emu-arm64 (aarch64, emulated)"}

    for precision in ("fp32", "int8"):
        on_device = out / "results" / "arm-et" / f"executorch-{precision}"
        described = json.loads((on_device / "manifest.json").read_text())["runtime"]
        assert described["device"]["machine"] == "aarch64" and described["timing"]["emulated"] is True
        artifact = described["artifact"]
        assert artifact["target"]["arch"] == artifact["abi"]["arch"] == "aarch64"
        tolerance = artifact["verification"]["tolerance"]
        assert described["reference_outputs"].keys() == {"image", "text"}, described["reference_outputs"]
        for tower, agreement in described["reference_outputs"].items():  # the device against the x86 host
            assert agreement["cosine_min"] >= tolerance["cosine_min"], (precision, tower, agreement)
            assert agreement["relative_max_diff"] <= tolerance["relative_max_diff"], (precision, tower, agreement)
        assert described["device"]["runner"]["kind"] == "python" and described["device"]["python"] is not None
        host_top1, host_ece = request.getfixturevalue("host_headlines")[precision]
        device_top1, device_ece = _headline(on_device)
        assert abs(device_top1 - host_top1) <= 1 / ID_IMAGES, (precision, device_top1, host_top1)
        assert abs(device_ece - host_ece) <= ECE_TOLERANCE, (precision, device_ece, host_ece)
