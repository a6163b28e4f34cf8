"""Faults during a device run: each is a one-line UserError, nothing is left running on the device,
and a re-run resumes from the last completed shard (no shard lost or run twice) to the local result."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from device_fixtures import SshServer

from lpmr_edge.devices.kinds import parse_device
from lpmr_edge.devices.session import DeviceSession
from lpmr_edge.errors import UserError
from lpmr_edge.runtimes.device import DeviceRuntime
from lpmr_edge.runtimes.factory import open_runtime
from lpmr_edge.suite import EvalSettings, evaluate

pytest_plugins = ["device_fixtures"]

SETTINGS = EvalSettings(limit=64, batch_size=16)  # four image shards
FAILING_SHARD = 3  # the fault strikes as image shard 3 is sent
COMPLETED = FAILING_SHARD - 1


@pytest.fixture(scope="module")
def local_result(openvino_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The suite run in this process: what every device run must reproduce."""
    return evaluate(open_runtime(artifact=openvino_artifact), tmp_path_factory.mktemp("local"), SETTINGS)


def strike_before_image_shard(runtime: DeviceRuntime, fault: Callable[[], None], monkeypatch: pytest.MonkeyPatch,
                              shard: int = FAILING_SHARD) -> None:
    """Make ``fault`` happen just before image shard number ``shard`` is sent to the device."""
    request, sent = runtime.session.request, []

    def request_then_fault(header: dict[str, Any], payload: bytes = b"") -> tuple[dict[str, Any], bytes]:
        if header.get("tower") == "image":
            sent.append(header)
            if len(sent) == shard:
                fault()
        return request(header, payload)

    monkeypatch.setattr(runtime.session, "request", request_then_fault)


def resume(artifact: Path, spec: str, out: Path, local_result: dict[str, Any]) -> DeviceRuntime:
    """Re-run the suite on the device; it must complete and match the local result."""
    runtime = DeviceRuntime(artifact, parse_device(spec))
    try:
        assert evaluate(runtime, out, SETTINGS)["metrics"] == local_result["metrics"]
    finally:
        runtime.close()
    return runtime


FAULTS = {
    "sshd session killed": (lambda sshd, runtime: [os.kill(pid, signal.SIGKILL) for pid in sshd.sessions()],
                            "the connection to the device was lost (ssh: "),
    "ssh client killed": (lambda sshd, runtime: os.kill(runtime.session.process.pid, signal.SIGKILL),
                          "the connection to the device was lost: the ssh client was killed by signal 9"),
    "device server killed": (lambda sshd, runtime: os.kill(runtime.session.hello["pid"], signal.SIGKILL),
                             "the device server was killed by signal 9"),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_a_run_cut_mid_way_resumes_from_the_last_shard(fault: str, sshd: SshServer, openvino_artifact: Path,
                                                       local_result: dict[str, Any], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    strike, expected = FAULTS[fault]
    spec = sshd.spec(tmp_path / "device")
    runtime = DeviceRuntime(openvino_artifact, parse_device(spec))
    strike_before_image_shard(runtime, lambda: strike(sshd, runtime), monkeypatch)
    with pytest.raises(UserError) as failure:
        evaluate(runtime, tmp_path / "out", SETTINGS)
    message = str(failure.value)
    assert expected in message and "re-run to resume" in message and "\n" not in message
    assert runtime.shards == {"run_on_device": 1 + COMPLETED}  # the text shard, then the image shards
    sshd.assert_nothing_left()

    resumed = resume(openvino_artifact, spec, tmp_path / "out", local_result)
    assert resumed.shards == {"from_host_store": COMPLETED, "run_on_device": 4 - COMPLETED}
    assert resumed.pushed == []  # the artifact was already on the device
    sshd.assert_nothing_left()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs as the device's workdir: room for the image tower, not for the text tower."""
    mount = tmp_path / "device"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                                           check=False).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_device_disk_is_reported_and_resumed(small_disk: Path, sshd: SshServer, openvino_artifact: Path,
                                                    local_result: dict[str, Any], tmp_path: Path) -> None:
    spec = sshd.spec(small_disk)
    with pytest.raises(UserError) as failure:
        DeviceRuntime(openvino_artifact, parse_device(spec))
    message = str(failure.value)
    assert "out of disk space" in message and "text.bin" in message and "\n" not in message
    assert not list(small_disk.rglob("*.part")), "a partial file was left on the device"
    sshd.assert_nothing_left()

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    resumed = resume(openvino_artifact, spec, tmp_path / "out", local_result)
    assert resumed.pushed == ["text.bin", "text.xml"]  # the image tower arrived before the disk filled up
    sshd.assert_nothing_left()


def _python_wrapper(path: Path, body: str) -> str:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def test_a_wheel_for_another_architecture_is_named(openvino_artifact: Path, tmp_path: Path) -> None:
    """An openvino whose compiled library is for aarch64 shadows the real one on an x86_64 device."""
    package = tmp_path / "site" / "openvino"
    package.mkdir(parents=True)
    library = bytearray(next(Path(np.__file__).parent.rglob("*.so")).read_bytes())
    library[18:20] = (183).to_bytes(2, "little")  # ELF e_machine: AArch64
    (package / "_pyopenvino.cpython-311-x86_64-linux-gnu.so").write_bytes(library)
    (package / "__init__.py").write_text("from openvino._pyopenvino import *\n")
    python = _python_wrapper(tmp_path / "python", f'PYTHONPATH={tmp_path / "site"} exec {sys.executable} "$@"')
    with pytest.raises(UserError) as failure:
        DeviceRuntime(openvino_artifact, parse_device(f"local?python={python}&workdir={tmp_path / 'device'}"))
    message = str(failure.value)
    assert "the installed openvino is built for another architecture" in message and "(aarch64)" in message
    assert "this device is x86_64" in message and "lpmr-edge device setup" in message and "\n" not in message


def _running(cmdline: bytes) -> bool:
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (proc / "cmdline").read_bytes() == cmdline:
                return True
        except OSError:
            continue
    return False


def test_a_silent_device_times_out_and_is_stopped(tmp_path: Path) -> None:
    silent = f"{shutil.which('sleep')}\0{os.getpid()}\0".encode()  # a device "python" that never answers
    python = _python_wrapper(tmp_path / "python", f"exec {shutil.which('sleep')} {os.getpid()}")
    with pytest.raises(UserError, match="did not answer within 1 s, so its server was stopped") as failure:
        DeviceSession(parse_device(f"local?python={python}"), timeout=1)
    assert "\n" not in str(failure.value)
    assert not _running(silent)


def test_a_device_labels_what_it_executes_as_this_process_does(openvino_int8w_artifact: Path, tmp_path: Path) -> None:
    """The device runs the host's own loader: an int8-w artifact's label names the dynamic quantization group
    (the CPU plugin's on-the-fly int8 activations) on the device exactly as in this process."""
    in_process = open_runtime(artifact=openvino_int8w_artifact, threads=1)
    on_device = open_runtime(artifact=openvino_int8w_artifact, threads=1,
                             device=f"local?python={sys.executable}&workdir={tmp_path / 'device'}")
    try:
        assert isinstance(on_device, DeviceRuntime)
        assert "dynamic int8 activations, group" in in_process.describe()["executed_precision"]
        assert on_device.describe()["executed_precision"] == in_process.describe()["executed_precision"]
        assert on_device.describe()["execution"] == in_process.describe()["execution"]
    finally:
        on_device.close()
