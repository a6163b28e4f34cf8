"""A one-node Ray cluster on loopback for the tests that run work on the Ray engine (loaded with
``pytest_plugins``); always stopped."""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

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
    Always stopped."""
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
        subprocess.run([str(RAY), "stop", "--force"], env=env, capture_output=True, timeout=120, check=False)
        shutil.rmtree(state, ignore_errors=True)
