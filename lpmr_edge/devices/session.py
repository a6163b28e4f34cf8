"""The host's end of a device server (lpmr_edge/devices/serve.py): frames over its stdin/stdout.

Starting a session sends the server's source through the device's stdin (nothing is installed for
it), then waits for its hello; a binary runner already copied to the device (lpmr_edge/devices/binary.py) is
started instead. Every read and write waits at most ``timeout`` seconds of silence
(the server reports progress after every batch, so a long shard does not count as silence); on a
timeout, a dropped connection or a dead server the session stops the device process and raises a
one-line UserError.
"""
from __future__ import annotations

import os
import select
import subprocess
import tempfile
from pathlib import Path
from typing import Any, NoReturn

from lpmr_edge.devices import serve
from lpmr_edge.devices.base import Device
from lpmr_edge.devices.binary import InstalledRunner
from lpmr_edge.errors import UserError
from lpmr_edge.manifest import MANIFEST_NAME

DEFAULT_TIMEOUT = 600.0
STOP_GRACE = 5.0
RESUME = "re-run to resume (completed shards are kept)"


class DeviceSession:
    """One device server process (serve.py, or the binary ``runner`` installed there) and the request/reply
    conversation with it."""

    def __init__(self, device: Device, python: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 runner: InstalledRunner | None = None) -> None:
        self.device, self.timeout, self.runner = device, timeout, runner
        self.hello: dict[str, Any] = {}
        source = b"" if runner else Path(serve.__file__).read_bytes()
        self.stderr = ""  # what the device process wrote to stderr, once it has ended
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - read and closed by close()
        argv = runner.argv if runner else [python or device.python, "-c", serve.BOOTSTRAP, serve.MARKER, str(len(source))]
        self.process = device.start(argv, self._stderr)
        assert self.process.stdin is not None and self.process.stdout is not None
        self._to_device, self._from_device = self.process.stdin.fileno(), self.process.stdout.fileno()
        os.set_blocking(self._to_device, False)
        try:
            self._write(source)
            self.hello, _ = self._reply()
        except BaseException:
            self.close()
            raise
        if self.hello.get("protocol") != serve.PROTOCOL:
            self.close()
            raise UserError(f"device {device.label} speaks protocol {self.hello.get('protocol')}, this host "
                            f"{serve.PROTOCOL}; use the same lpmr-edge version on both")

    def request(self, header: dict[str, Any], payload: bytes = b"") -> tuple[dict[str, Any], bytes]:
        """Send one request; its reply header (without ``bytes``) and payload."""
        self._write(serve.frame(header, len(payload)))
        self._write(payload)
        return self._reply()

    def push_artifact(self, artifact_dir: Path, workdir: str) -> list[str]:
        """Send the artifact's manifest, then every file the device lacks (checked by sha256 there); returns them."""
        reply, _ = self.request({"op": "artifact", "workdir": workdir}, (artifact_dir / MANIFEST_NAME).read_bytes())
        for name in reply["missing"]:
            path = artifact_dir / name
            self._write(serve.frame({"op": "put", "file": name}, path.stat().st_size))
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(serve.CHUNK), b""):
                    self._write(chunk)
            self._reply()
        return reply["missing"]

    def close(self, grace: float = STOP_GRACE) -> int:
        """End the server (closing its stdin ends it; killed after ``grace`` seconds) and the connection;
        returns the process's status."""
        if self.process.stdin and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()
        if not self._stderr.closed:
            self._stderr.seek(0)
            self.stderr = self._stderr.read().decode(errors="replace")
            self._stderr.close()
        return self.process.returncode

    def _reply(self) -> tuple[dict[str, Any], bytes]:
        while True:
            header = serve.read_frame_header(self._read_exact, self._read_some)
            if header is None:
                self._lost()
            payload = self._read_exact(header.pop("bytes"))
            if "progress" not in header:
                break
        if "error" in header:
            hint = f"; {self.device.setup_hint()}" if header.get("setup") else ""
            raise UserError(f"device {self.device.label}: {header['error']}{hint}")
        return header, payload

    def _wait(self, fd: int, writing: bool) -> None:
        readable, writable, _ = select.select([] if writing else [fd], [fd] if writing else [], [], self.timeout)
        if not (writable or readable):
            self.close(grace=0)
            raise UserError(f"device {self.device.label} did not answer within {self.timeout:.0f} s, so its server "
                            f"was stopped; {RESUME}")

    def _read_some(self, size: int) -> bytes:
        self._wait(self._from_device, writing=False)
        return os.read(self._from_device, size)

    def _read_exact(self, size: int) -> bytes:
        chunks, missing = [], size
        while missing:
            chunk = self._read_some(min(missing, serve.CHUNK))
            if not chunk:
                self._lost()
            chunks.append(chunk)
            missing -= len(chunk)
        return b"".join(chunks)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            self._wait(self._to_device, writing=True)
            try:
                view = view[os.write(self._to_device, view):]
            except BlockingIOError:
                continue
            except BrokenPipeError:
                self._lost()

    def _lost(self) -> NoReturn:
        returncode = self.close()
        resume = f"; {RESUME}" if self.hello else ""  # else the server never started
        reason = (self.runner and self.runner.explain(returncode, self.stderr)) or \
            self.device.explain(returncode, self.stderr)
        raise UserError(f"device {self.device.label}: {reason}{resume}")
