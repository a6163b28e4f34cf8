"""`lpmr-edge run` end to end on a small target: report + recommendation, then kill and resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import target_toml

SMALL_SUITE = """
limit = 300
bootstrap_resamples = 100

[ood]
sets = ["digits"]

[corruptions]
kinds = ["gaussian_noise"]
severities = [1, 5]
images = 100

[shift]

[spurious]
"""


@pytest.fixture(scope="module")
def plan_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    import platform

    folder = tmp_path_factory.mktemp("plan")
    (folder / "tiny-x86.toml").write_text(target_toml(
        "tiny-x86", "test target: OpenVINO fp32/int8 and ExecuTorch fp32", platform.machine(), threads=1, batch=8,
        precisions={"openvino": ["fp32", "int8"], "executorch": ["fp32"]}))
    (folder / "small.toml").write_text(SMALL_SUITE)
    return folder / "tiny-x86.toml", folder / "small.toml"


def _run_command(target: Path, suite: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "lpmr_edge", "run", "--model", "lpmr-tiny-fmnist", "--target", str(target),
            "--suite", str(suite), "--out", str(out), "--max-accuracy-drop", "5", "--json"]


def _mtimes(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.rglob("*")
            if p.is_file() and "report" not in p.parts}


def test_run_kill_and_resume(plan_files: tuple[Path, Path], tmp_path: Path):
    target, suite = plan_files
    out = tmp_path / "run"
    command = _run_command(target, suite, out)
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    deadline = time.monotonic() + 300
    while not (out / "artifacts" / "tiny-x86" / "openvino-fp32" / "manifest.json").is_file():
        assert first.poll() is None, first.communicate()[1]
        assert time.monotonic() < deadline, "first artifact never appeared"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()

    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    assert finished.returncode == 0, finished.stderr
    assert "openvino-fp32: up to date" in finished.stderr
    summary = json.loads(finished.stdout)
    (choice,) = summary["recommendations"]
    assert choice["target"] == "tiny-x86" and choice["recommended"] is not None
    report = out / "report"
    assert {"report.html", "report.md", "report.json"} <= {p.name for p in report.iterdir()}
    report_json = json.loads((report / "report.json").read_text())
    variants = {row["variant"] for table in report_json["tables"] for row in table["rows"]}
    assert {"openvino fp32", "openvino int8", "executorch fp32"} <= variants
    parity = json.loads((out / "results" / "tiny-x86" / "parity.json").read_text())
    fp32 = next(c for c in parity["checks"] if c["artifact"].endswith("openvino-fp32"))
    assert fp32["image"]["cosine_min"] > 0.99999 and fp32["top1_agreement"] == 1.0

    before = _mtimes(out)
    again = subprocess.run(command, capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr
    assert _mtimes(out) == before, "a finished, verified step was redone"
    assert again.stderr.count("up to date") >= 3 + 1 + 1 + 1
