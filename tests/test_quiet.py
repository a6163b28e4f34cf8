"""A quiet terminal: library output (C/C++ on the descriptors, subprocesses, warnings, NNCF's logger and
progress) is kept in the log; lpmr-edge's own lines stay visible; ``--verbose`` shows everything."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import target_toml

from lpmr_edge.quiet import captured_output

SCRIPT = """
import logging, subprocess, sys, warnings
from pathlib import Path
import rich
from lpmr_edge.quiet import captured_output

with captured_output(Path(sys.argv[1]), "lpmr-edge test") as capture:
    print("our table", file=capture.stderr)
    print('{"json": 1}')
    subprocess.run([sys.executable, "-c", "import os; os.write(2, b'[cpuinfo_utils.cpp:71] child chatter\\\\n'); "
                    "os.write(1, b'child stdout\\\\n')"], check=True)
    warnings.warn("a dependency's deprecation", FutureWarning)
    logging.getLogger("nncf").warning("NNCF statistics collection")
    rich.get_console().print("NNCF progress 100%")
    sys.stderr.write("pybind11 module printing through sys.stderr\\n")
print(f"kept {capture.lines} lines", file=sys.stderr)
"""


def test_library_output_goes_to_the_log_and_ours_stays_visible(tmp_path: Path):
    log = tmp_path / "lpmr-edge.log"
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(log)], capture_output=True, text=True, check=True)
    assert run.stderr.splitlines() == ["our table", "kept 6 lines"] and run.stdout == '{"json": 1}\n'
    kept = log.read_text()
    for noise in ("child chatter", "child stdout", "a dependency's deprecation", "NNCF statistics collection",
                  "NNCF progress 100%", "pybind11 module printing"):
        assert noise in kept
    assert kept.splitlines()[0].startswith("==> ") and kept.splitlines()[0].endswith("lpmr-edge test")


def test_nothing_captured_writes_no_log(tmp_path: Path):
    with captured_output(tmp_path / "lpmr-edge.log", "quiet") as capture:
        pass
    assert capture.lines == 0 and not (tmp_path / "lpmr-edge.log").exists()


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI in a subprocess, with lines wide enough that rich does not wrap them."""
    return subprocess.run([sys.executable, "-m", "lpmr_edge", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "COLUMNS": "1000"}, check=False)


OUR_LINES = re.compile(r"(executorch-fp32: (exported|up to date) -> .*|warning: .*)")


@pytest.mark.slow
def test_export_and_eval_print_only_our_lines(tmp_path: Path):
    target = tmp_path / "tiny.toml"
    target.write_text(target_toml("tiny", "one ExecuTorch fp32 artifact", "x86_64", 1, 4, {"executorch": ["fp32"]}))
    exported = _cli("export", "--target", str(target), "--model", "lpmr-tiny-fmnist", "--out", "art", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert all(OUR_LINES.fullmatch(line) for line in exported.stderr.splitlines()), exported.stderr
    assert "warning: model 'lpmr-tiny-fmnist' is stand-in trained by lpmr-edge" in exported.stderr  # ours: kept
    evaluated = _cli("eval", "--artifact", "art/tiny/executorch-fp32", "--limit", "8", "--json", "--out", "r",
                     cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert evaluated.stderr.strip() == "" and json.loads(evaluated.stdout)["n"] == 8  # (a progress bar's newline)
    log = (tmp_path / "lpmr-results" / "lpmr-edge.log").read_text()
    assert "cpuinfo_utils.cpp" in log and "==> " in log
    verbose = _cli("--verbose", "eval", "--artifact", "art/tiny/executorch-fp32", "--limit", "8", "--json",
                   "--out", "r", cwd=tmp_path)
    assert verbose.returncode == 0 and "cpuinfo_utils.cpp" in verbose.stderr


def test_the_global_console_follows_sys_stdout_after_a_capture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A capture must not pin rich's global console (NNCF's progress bars) to the stdout of its moment: a
    test runner closes that buffer afterwards, and a later export would write to a closed file."""
    import io

    import rich

    closed_later = io.StringIO()
    monkeypatch.setattr(sys, "stdout", closed_later)
    with captured_output(tmp_path / "lpmr-edge.log", "test"):
        pass
    closed_later.close()
    current = io.StringIO()
    monkeypatch.setattr(sys, "stdout", current)
    rich.get_console().print("after the capture")
    assert "after the capture" in current.getvalue()
