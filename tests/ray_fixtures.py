"""A one-node Ray cluster on loopback for the tests that run work on the Ray engine (loaded with
``pytest_plugins``); always stopped."""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

RAY = Path(sys.executable).with_name("ray")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def ray_cluster() -> Iterator[tuple[str, dict[str, str]]]:
    """A one-node Ray cluster on loopback (2 CPUs, no dashboard, no usage stats, its own auth token, not the
    one a local ``ray.init()`` may have left in ~/.ray); yields its address and the environment to reach it.
    Always stopped, and only it: ``ray stop`` would end every Ray on the machine, another test worker's too."""
    state = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # Ray's socket paths must stay short
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    port = free_port()
    try:
        subprocess.run([str(RAY), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                        "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={state}"],
                       env=env, check=True, capture_output=True, timeout=180)
        yield f"127.0.0.1:{port}", env
    finally:
        killed = _kill_cluster(state)
        shutil.rmtree(state, ignore_errors=True)
    assert killed, f"no process named the Ray cluster's directory {state}: it was not stopped"


def _kill_cluster(state: Path) -> int:
    """Kill the processes of the cluster kept in ``state``: those naming it on their command line (GCS, raylet,
    monitors) and their children (the raylet's agents and workers, which rename themselves); how many."""
    named = [process for process in psutil.process_iter(["cmdline"])
             if any(str(state) in argument for argument in process.info["cmdline"] or ())]
    family = set(named)
    for process in named:
        with contextlib.suppress(psutil.NoSuchProcess):
            family.update(process.children(recursive=True))
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    _, alive = psutil.wait_procs(family, timeout=60)
    assert not alive, f"Ray processes left running: {alive}"
    return len(family)
