"""An emulated arm64 device: a Debian arm64 root run under QEMU 10 user-mode emulation.

The root is built by scripts/build-arm64-root.sh (`make arm-root`). Commands run in it through
its static qemu-aarch64 inside private mount and pid namespaces (needs root), so nothing they
start outlives them, and concurrent runs do not meet. Outputs come from the runtimes' aarch64
code paths (XNNPACK's and OpenVINO's ARM kernels); timings are emulated, never latencies.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from lpmr_edge.errors import UserError

GUEST_PYTHON = "/opt/lpmr-venv/bin/python"
GUEST_HOME = "/root"
GUEST_QEMU = "/opt/lpmr-edge/qemu-aarch64"
GUEST_STAMP = "opt/lpmr-edge/stamp.json"
DEFAULT_CPU = "neoverse-n1"  # Armv8.2 + dotprod + fp16; bit-exact with QEMU 10 (see the build script)
BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build-arm64-root.sh"

# Host side, in fresh mount + pid namespaces: mount /proc, /sys and /dev into the root, then run
# QEMU chrooted there. The environment passes through as the guest's. $1 root, $2 guest cwd,
# $3 cpu; the rest is the guest argv.
_ENTER = f"""
r=$1; cwd=$2; cpu=$3; shift 3
mount -t proc proc "$r/proc"
mount --rbind /sys "$r/sys"
mount --rbind /dev "$r/dev"
exec unshare --root="$r" --wd="$cwd" {GUEST_QEMU} -cpu "$cpu" "$@"
"""


def guest_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The clean environment of a command in the root (plus ``extra``); its PATH also finds the host's
    mount and unshare, which ``command`` runs first."""
    return {"PATH": "/opt/lpmr-venv/bin:/usr/bin:/bin", "HOME": GUEST_HOME, "LANG": "C.UTF-8", **(extra or {}),
            "LPMR_EDGE_EMULATED": "1"}


def default_root() -> Path:
    """Where `make arm-root` builds the root: $LPMR_EDGE_ARM_ROOT or ~/.cache/lpmr-edge/arm64-root."""
    env = os.environ.get("LPMR_EDGE_ARM_ROOT")
    return Path(env) if env else Path.home() / ".cache" / "lpmr-edge" / "arm64-root"


class EmulatedArm64:
    """Run commands on an emulated aarch64 CPU, copying files in and out of a scratch directory."""

    python = GUEST_PYTHON

    def __init__(self, root: Path | None = None, cpu: str | None = None) -> None:
        self.root = root or default_root()
        self.cpu = cpu or os.environ.get("LPMR_EDGE_QEMU_CPU", DEFAULT_CPU)

    def built(self) -> bool:
        """True if the build finished (it writes the stamp last)."""
        return (self.root / GUEST_STAMP).is_file()

    def available(self) -> bool:
        """True if the root is built and this process can enter it (root user)."""
        return (
            self.built()
            and os.access(self.root / GUEST_QEMU.lstrip("/"), os.X_OK)
            and os.geteuid() == 0
            and shutil.which("unshare") is not None
        )

    def ensure_built(self) -> None:
        """Build the root if it is missing (takes minutes); raise UserError if that cannot work."""
        if self.available():
            return
        if os.geteuid() != 0:
            raise UserError("the emulated arm64 device needs root (it mounts and chroots); run as root")
        if not BUILD_SCRIPT.is_file():
            raise UserError(f"no emulated arm64 root at {self.root}; build it with `make arm-root`")
        env = {**os.environ, "LPMR_EDGE_ARM_ROOT": str(self.root)}
        built = subprocess.run(["bash", str(BUILD_SCRIPT)], env=env, check=False).returncode == 0
        if not (built and self.available()):
            raise UserError(f"building the emulated arm64 root at {self.root} failed; run `make arm-root`")

    def stamp(self) -> dict[str, Any]:
        """What the build installed (versions, QEMU, date)."""
        return json.loads((self.root / GUEST_STAMP).read_text())

    def describe(self) -> dict[str, Any]:
        """Device facts for manifests; timings on it are emulated, never latencies."""
        qemu = subprocess.run(
            [str(self.root / GUEST_QEMU.lstrip("/")), "--version"], capture_output=True, text=True, check=True
        )
        return {
            "kind": "emulated",
            "emulated": True,
            "machine": "aarch64",
            "qemu": qemu.stdout.splitlines()[0],
            "cpu_model": self.cpu,
            "root": str(self.root),
            "stamp": self.stamp(),
        }

    def command(self, argv: list[str], cwd: str = "/") -> list[str]:
        """Host command line that runs argv (guest paths) in the root with guest working dir cwd.

        The caller's environment becomes the guest's; its PATH must also find mount and unshare.
        """
        return ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--", "/bin/sh", "-ec", _ENTER,
                "enter", str(self.root), cwd, self.cpu, *argv]

    def run(
        self,
        argv: list[str],
        inputs: dict[str, Path],
        outputs_dir: Path,
        timeout: float,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv (guest paths; argv[0] absolute, e.g. self.python) in a fresh scratch directory.

        Each input is copied to the scratch directory under its key, which is also the working
        directory; files the command writes under `out/` there are copied to outputs_dir. The
        guest gets a clean environment plus env and LPMR_EDGE_EMULATED=1. On timeout everything
        started is killed and subprocess.TimeoutExpired is raised.
        """
        if not self.available():
            raise UserError(f"no usable emulated arm64 root at {self.root}; build it with `make arm-root`")
        if not argv or not argv[0].startswith("/"):
            raise ValueError(f"argv[0] must be an absolute path inside the root, got {argv[:1]}")
        guest_env = guest_environment(env)
        scratch = Path(tempfile.mkdtemp(prefix="lpmr-run-", dir=self.root / "tmp"))
        try:
            for name, src in inputs.items():
                if Path(name).is_absolute() or ".." in Path(name).parts:
                    raise ValueError(f"input name must be a relative path inside the scratch dir: {name}")
                (scratch / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, scratch / name)
            (scratch / "out").mkdir()
            cmd = self.command(argv, cwd="/" + str(scratch.relative_to(self.root)))
            result = _run_killing_group(cmd, timeout, guest_env)
            outputs_dir.mkdir(parents=True, exist_ok=True)
            shutil.copytree(scratch / "out", outputs_dir, dirs_exist_ok=True)
            return result
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def _run_killing_group(
    cmd: list[str], timeout: float, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run cmd in its own process group; on timeout (or interrupt) kill the whole group and re-raise."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except BaseException:
        _kill_group(proc)
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGKILL proc's process group, reap proc, and wait (up to 10 s) until the group is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
