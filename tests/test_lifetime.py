"""A worker started with ``exit_with_parent`` ends when its parent is SIGKILLed, whether spawned (a child of the
parent) or forked by a fork server (a child of the server); without it, it lives on (the defect this fixes: a
killed export left its worker exporting for nobody)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PARENT = """
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from lpmr_edge.lifetime import exit_with_parent

def work(pid_file):
    open(pid_file, "w").write(str(os.getpid()))
    time.sleep(120)

if __name__ == "__main__":
    pid_file, watched, method = sys.argv[1], sys.argv[2] == "watched", sys.argv[3]
    options = {"initializer": exit_with_parent, "initargs": (os.getpid(),)} if watched else {}
    pool = ProcessPoolExecutor(1, mp_context=get_context(method), **options)
    pool.submit(work, pid_file)
    time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is gone for our purposes
        return stat.read().split(") ", 1)[1][0] != "Z"


def _worker_after_parent_killed(tmp_path: Path, mode: str, method: str = "spawn") -> int:
    """Start a parent whose pool (of start ``method``) runs one sleeping task, check the worker lives on while
    the parent does, SIGKILL the parent, return the worker's pid."""
    script, pid_file = tmp_path / "parent.py", tmp_path / f"{mode}.pid"
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script), str(pid_file), mode, method])
    deadline = time.monotonic() + 120
    while not (pid_file.is_file() and pid_file.read_text()):
        assert time.monotonic() < deadline and parent.poll() is None, "the worker never started"
        time.sleep(0.1)
    assert not _gone_within(int(pid_file.read_text()), 2), "the worker ended while its parent lived"
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    return int(pid_file.read_text())


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_watched_worker_exits_when_its_parent_is_killed(tmp_path: Path, method: str) -> None:
    worker = _worker_after_parent_killed(tmp_path, "watched", method)
    assert _gone_within(worker, 30), f"worker {worker} outlived its killed parent"


def test_an_unwatched_worker_outlives_its_killed_parent(tmp_path: Path) -> None:
    """The control: the check above can fail."""
    worker = _worker_after_parent_killed(tmp_path, "unwatched")
    try:
        assert not _gone_within(worker, 3)
    finally:
        if _alive(worker):
            os.kill(worker, signal.SIGKILL)

