"""The host's end of a runner process started on this machine, over the device protocol (serve.py's frames):
the native runner (``LocalRunner([bundle / "runner"])``, optionally behind a QEMU command) or serve.py's Python
server (``python_server()``). For tests and benchmarks; devices are driven by lpmr_edge/devices/session.py."""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from lpmr_edge.devices import serve
from lpmr_edge.errors import UserError


class LocalRunner:
    """A runner started by ``command`` (``source`` is written to its stdin first, as the Python server's bootstrap
    expects) and the request/reply conversation with it; ``hello`` is its first frame."""

    def __init__(self, command: list[str], source: bytes = b"") -> None:
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr)
        assert self.process.stdin is not None and self.process.stdout is not None
        self._in, self._out = self.process.stdin, self.process.stdout
        self._in.write(source)
        self._in.flush()
        self.hello, _ = self.reply()

    def _read_exact(self, size: int) -> bytes:
        data = self._out.read(size)
        if len(data) != size:
            raise EOFError("the runner closed its output")
        return data

    def reply(self) -> tuple[dict[str, Any], bytes]:
        """The next reply (progress frames skipped): header without ``bytes``, payload."""
        while True:
            header = serve.read_frame_header(self._read_exact, self._out.read)
            if header is None:
                raise EOFError("the runner ended")
            payload = self._read_exact(header.pop("bytes"))
            if "progress" not in header:
                return header, payload

    def request(self, header: dict[str, Any], payload: bytes = b"") -> tuple[dict[str, Any], bytes]:
        self._in.write(serve.frame(header, len(payload)) + payload)
        self._in.flush()
        return self.reply()

    def push(self, artifact: Path, workdir: Path) -> dict[str, Any]:
        """Announce the artifact and send the files the runner lacks; the ``artifact`` reply."""
        reply, _ = self.request({"op": "artifact", "workdir": str(workdir)}, (artifact / "manifest.json").read_bytes())
        for name in reply["missing"]:
            answer, _ = self.request({"op": "put", "file": name}, (artifact / name).read_bytes())
            if "error" in answer:
                raise UserError(answer["error"])
        return reply

    def features(self, tower: str, inputs: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
        """Run ``inputs`` through ``tower``: the reply (batch_s, batch, peak_rss_kb) and the float32 features."""
        reply, payload = self.request({"op": "run", "tower": tower}, serve.encode_array(inputs))
        if "error" in reply:
            raise UserError(reply["error"])
        return reply, serve.decode_array(payload)

    def close(self) -> tuple[int, str]:
        """End the runner (end of input); its status and what it wrote to stderr."""
        self._in.close()
        returncode = self.process.wait(30)
        self._out.close()
        self.stderr.seek(0)
        text = self.stderr.read().decode(errors="replace")
        self.stderr.close()
        return returncode, text


def python_server(python: str = sys.executable) -> LocalRunner:
    """serve.py's Python device server started here, as DeviceSession starts it on a device."""
    source = Path(serve.__file__).read_bytes()
    return LocalRunner([python, "-c", serve.BOOTSTRAP, serve.MARKER, str(len(source))], source)
