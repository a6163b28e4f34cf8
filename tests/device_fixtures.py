"""Fixtures of the device tests (loaded with ``pytest_plugins``): small artifacts and a real OpenSSH server.

The server is Debian's /usr/sbin/sshd (`make sshd`) on 127.0.0.1 and a free port, with its own host key
and a throw-away user key in a temp directory; clients use a temp ssh_config (``-F``) whose known_hosts
holds exactly that host key, so the user's ~/.ssh is never read or written.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from lpmr_edge.devices.emulated import EmulatedArm64
from lpmr_edge.devices.serve import MARKER
from lpmr_edge.errors import UserError
from lpmr_edge.runtimes.executorch.native import build as native_build

SSHD = Path("/usr/sbin/sshd")
ARCHITECTURE = "lpmr-tiny-1layer-device"  # the stand-in with one layer per tower: lowers in seconds
WAIT_SECONDS = 60.0


def run_cli(*args: str) -> Result:
    """``lpmr-edge ARGS`` in this process (a UserError is left in ``result.exception``)."""
    import lpmr_edge.cli.commands  # noqa: F401  (registers the commands)
    from lpmr_edge.cli import app

    return CliRunner().invoke(app, [*args])


def one_line_error(result: Result) -> str:
    """The UserError a failed command ended with, checked to be one line."""
    assert isinstance(result.exception, UserError), result.output
    message = str(result.exception)
    assert "\n" not in message
    return message


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` if it never does."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.1)


def processes_inside(root: Path) -> list[Path]:
    """Processes whose root directory is the emulated root."""
    inside = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if Path(proc / "root").readlink() == root:
                inside.append(proc)
        except OSError:
            continue
    return inside


@pytest.fixture
def emulator() -> EmulatedArm64:
    """The emulated arm64 root of `make arm-root` (the test is skipped without it)."""
    emulator = EmulatedArm64()
    if not emulator.available():
        pytest.skip(f"no usable emulated arm64 root at {emulator.root}: build it with `make arm-root` (as root)")
    return emulator


@pytest.fixture
def emulated_device(emulator: EmulatedArm64) -> Iterator[str]:
    """An ``emu-arm64`` device spec with a private work directory inside the root, removed afterwards."""
    workdir = f"/tmp/lpmr-edge-test-{uuid.uuid4().hex[:8]}"
    try:
        yield f"emu-arm64?workdir={workdir}"
    finally:
        shutil.rmtree(emulator.root / workdir.lstrip("/"), ignore_errors=True)


def _export(runtime: str, target: str, out: Path, precision: str = "fp32") -> Path:
    from lpmr_edge._compat import import_open_clip
    from lpmr_edge.export import ExportRequest, export_artifact
    from lpmr_edge.models.bundled import CONFIG_DIR
    from lpmr_edge.quantize import QuantizationOptions
    from lpmr_edge.targets import load_target

    config = json.loads((CONFIG_DIR / "lpmr-tiny-fmnist.json").read_text())
    for tower in ("vision_cfg", "text_cfg"):
        config[tower]["layers"] = 1
    (out / f"{ARCHITECTURE}.json").write_text(json.dumps(config))
    import_open_clip().add_model_config(out)
    request = ExportRequest(model=f"random:{ARCHITECTURE}", target=load_target(target), runtime=runtime,
                            precision=precision, options=QuantizationOptions(subset_size=16))
    return export_artifact(request, out, isolate=False)[0]


@pytest.fixture(scope="session")
def openvino_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An fp32 OpenVINO IR for the x86 target."""
    return _export("openvino", "x86", tmp_path_factory.mktemp("openvino"))


@pytest.fixture(scope="session")
def openvino_int8w_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An int8-w (weight-only) OpenVINO IR for the x86 target: its label depends on the dynamic quantization group."""
    return _export("openvino", "x86", tmp_path_factory.mktemp("openvino-int8w"), precision="int8-w")


@pytest.fixture(scope="session")
def executorch_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An fp32 ExecuTorch .pte (XNNPACK) for the arm target; it runs on x86 as well."""
    return _export("executorch", "arm", tmp_path_factory.mktemp("executorch"))


@pytest.fixture(scope="session")
def bundle() -> Path:
    """This host's native ExecuTorch runner bundle, built once (in the user's cache, keyed by content)."""
    return native_build.build_runner(platform.machine())


@pytest.fixture(scope="session")
def aarch64_bundle() -> Path:
    """The aarch64 native runner bundle, cross-built once (in the user's cache, keyed by content)."""
    return native_build.build_runner("aarch64")


@pytest.fixture
def prebuilt(bundle: Path, aarch64_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """The session's bundles are what the ExecuTorch record's native runner builds (each test has its own cache,
    so a run there would otherwise fetch the device's executorch wheel and compile the runner again)."""
    built = {platform.machine(): bundle, "aarch64": aarch64_bundle}
    monkeypatch.setattr(native_build, "build_runner", lambda arch: built[arch])
    return built


@dataclass
class SshServer:
    """A running sshd and what a client needs to reach it."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes]

    def spec(self, workdir: Path, python: str | None = sys.executable, config: Path | None = None) -> str:
        """A ``--device`` spec for root on this server (``python`` None: the device's private venv)."""
        options = {"python": python, "workdir": workdir, "config": config or self.directory / "ssh_config"}
        return f"ssh://root@127.0.0.1:{self.port}?" + "&".join(f"{name}={value}" for name, value in options.items()
                                                                if value is not None)

    def sessions(self) -> list[int]:
        """The per-connection sshd processes (children of the listener)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in children.read_text().split()] if children.exists() else []

    def servers(self) -> list[int]:
        """Device servers (and their supervisors) started through this sshd, running or orphaned."""
        found = []
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                if MARKER.encode() not in (proc / "cmdline").read_bytes().split(b"\0"):
                    continue
                environment = (proc / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(entry.startswith(b"SSH_CONNECTION=") and entry.endswith(f" {self.port}".encode())
                   for entry in environment):
                found.append(int(proc.name))
        return found

    def assert_nothing_left(self) -> None:
        """Every device server and session started through this sshd has ended."""
        def command(pid: int) -> str | None:
            try:  # a process may end between being listed and being read
                return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:80]
            except OSError:
                return None

        def left() -> list[str]:
            return [line for pid in self.servers() + self.sessions() if (line := command(pid)) is not None]

        with contextlib.suppress(AssertionError):
            wait_until(lambda: not left(), "device servers and sessions to end")
        assert not left(), f"still running: {left()}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _accepts(port: int) -> bool:
    with socket.socket() as client:
        return client.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A real OpenSSH server on 127.0.0.1 for root, key-only, stopped at the end of the session."""
    if not SSHD.is_file():
        pytest.skip(f"no {SSHD}; install it with `make sshd` (Debian openssh-server)")
    if os.geteuid() != 0:
        pytest.skip("the test sshd logs in as root and must run as root")
    directory = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", key, "-f", str(directory / key)],
                       check=True)
    (directory / "authorized_keys").write_text((directory / "user_key.pub").read_text())
    port = _free_port()
    (directory / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {directory / 'host_key'}\n"
        f"AuthorizedKeysFile {directory / 'authorized_keys'}\nPidFile {directory / 'sshd.pid'}\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "UsePAM no\nStrictModes no\n")
    host_key = " ".join((directory / "host_key.pub").read_text().split()[:2])
    (directory / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key}\n")
    (directory / "ssh_config").write_text(
        f"Host *\n  IdentityFile {directory / 'user_key'}\n  IdentitiesOnly yes\n  IdentityAgent none\n"
        f"  UserKnownHostsFile {directory / 'known_hosts'}\n  GlobalKnownHostsFile /dev/null\n"
        "  StrictHostKeyChecking yes\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    with open(directory / "sshd.log", "wb") as log:
        process = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(directory / "sshd_config")], stderr=log)
    server = SshServer(port, directory, process)
    try:
        wait_until(lambda: process.poll() is not None or _accepts(port), "sshd to listen")
        assert process.poll() is None, (directory / "sshd.log").read_text()
        yield server
    finally:
        for session in server.sessions():
            os.kill(session, signal.SIGKILL)
        process.terminate()
        process.wait()
