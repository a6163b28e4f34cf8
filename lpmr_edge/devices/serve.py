"""Device-side server: runs an artifact's two towers for the host, over this process's stdin/stdout.

Standalone on purpose: it needs Python >= 3.9, numpy and the runtime (openvino, or executorch with
torch importable), never lpmr_edge, and it imports numpy and the runtime only when asked to, so it
can also report what a bare device lacks. It knows no runtime: the host sends the artifact's loader
module (lpmr_edge/runtimes/<name>/loader.py, the host's own loading code) with the load request.
The host starts ``python -c BOOTSTRAP lpmr-edge-serve N`` and writes this file's N bytes of source
first: nothing but the artifact is stored on the device.

Protocol (version 2) in frames: a 4-byte big-endian length, a UTF-8 JSON header, then
``header["bytes"]`` payload bytes (arrays as .npy). The server speaks first (``hello``: machine,
Python), then answers each request with one reply; ``{"error": "..."}`` reports a failure in one
line and the server keeps serving. Requests:

  probe {modules, workdir}                -> {packages: {name: {version, problem}}, free_mb}
  artifact {workdir} + manifest.json      -> {directory, missing: [files not yet on the device]}
  put {file} + content                    -> {}  written beside, sha256 checked, then renamed
  load {threads, loader, modules} + loader source
                                          -> {runtime, peak_rss_kb, **the loader's info (version, threads,
                                              executed_precision, ...)}
  run {tower} + .npy inputs               -> {batch_s: [...], peak_rss_kb} + .npy features
                                             (preceded by {"progress": i} after every batch)

ExecuTorch's native runner (lpmr_edge/runtimes/executorch/native/runner.cpp) speaks this protocol in C++ without
Python: a change here must be made there too (its tests compare the protocol numbers).

End of input ends the server. Its supervisor (the parent process) kills it the moment the host's
channel closes (SSH dropped, host killed), even in the middle of a batch; an hour without any
exchange ends it too (a network that vanished without closing the connection).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import platform
import resource
import select
import shutil
import signal
import struct
import sys
import time
import types
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO

PROTOCOL = 2
MARKER = "lpmr-edge-serve"
# python -c BOOTSTRAP MARKER N: read N bytes of source from stdin, run them as __main__.
BOOTSTRAP = "import sys; exec(compile(sys.stdin.buffer.read(int(sys.argv[2])), sys.argv[1], 'exec'))"
TOWERS = ("image", "text")
INPUT_DTYPES = {"image": "float32", "text": "int64"}
ELF_MACHINES = {3: "i386", 8: "mips", 20: "ppc", 21: "ppc64", 40: "armv7l", 62: "x86_64", 183: "aarch64",
                243: "riscv64"}
CHUNK = 1 << 20
IDLE_SECONDS = 3600  # a server that exchanges nothing with the host for this long ends (the network vanished)
_LENGTH = struct.Struct(">I")

Infer = Callable[[Any], Any]
ReadExact = Callable[[int], bytes]


class ServerError(Exception):
    """A failure reported to the host as one line; the server carries on. ``setup``: the device's
    software is the problem (``lpmr-edge device setup`` fixes it)."""

    def __init__(self, message: str, setup: bool = False) -> None:
        super().__init__(message)
        self.setup = setup


# ----------------------------------------------------------------------------- frames (host and device)

def frame(header: dict[str, Any], payload_size: int = 0) -> bytes:
    """The bytes that start a frame: length, JSON header (with the payload size); the payload follows."""
    data = json.dumps({**header, "bytes": payload_size}).encode()
    return _LENGTH.pack(len(data)) + data


def read_frame_header(read_exact: ReadExact, read_some: Callable[[int], bytes]) -> dict[str, Any] | None:
    """The next frame's header, or None at a clean end of input (nothing read)."""
    first = read_some(_LENGTH.size)
    if not first:
        return None
    prefix = first + read_exact(_LENGTH.size - len(first))
    return json.loads(read_exact(_LENGTH.unpack(prefix)[0]))


def encode_array(array: Any) -> bytes:
    """An array as .npy bytes."""
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def decode_array(data: bytes) -> Any:
    """An array from .npy bytes (never unpickles)."""
    import numpy as np

    return np.load(io.BytesIO(data), allow_pickle=False)


# ----------------------------------------------------------------------------- device facts

def machine_facts() -> dict[str, Any]:
    """What the host needs to know first: architecture, Python, C library, emulation."""
    return {"machine": platform.machine(), "python": platform.python_version(), "executable": sys.executable,
            "libc": " ".join(platform.libc_ver()).strip(), "system": platform.system(),
            "emulated": os.environ.get("LPMR_EDGE_EMULATED") == "1"}


def foreign_library(module: str) -> str | None:
    """A compiled library of an installed package built for another CPU architecture than this one's."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(module.split(".")[0])
    except (ImportError, ValueError):
        return None
    for location in spec.submodule_search_locations or [] if spec else []:
        for library in Path(location).rglob("*.so*"):
            with contextlib.suppress(OSError), open(library, "rb") as handle:
                header = handle.read(20)
                arch = ELF_MACHINES.get(int.from_bytes(header[18:20], "little"), "another CPU")
                if header[:4] == b"\x7fELF" and arch != platform.machine():
                    return f"{library.name} ({arch})"
    return None


def import_problem(module: str, error: BaseException) -> str:
    """One line on why ``module`` cannot be imported on this device."""
    foreign = foreign_library(module)
    if foreign:
        return (f"the installed {module.split('.')[0]} is built for another architecture ({foreign}), this "
                f"device is {platform.machine()}: install the {platform.machine()} wheel")
    lines = str(error).strip().splitlines() or [type(error).__name__]
    return f"cannot import {module} with {sys.executable}: {lines[-1]}"


def package_report(modules: list[str]) -> dict[str, dict[str, str | None]]:
    """Installed version and import problem (None if it imports) of numpy and ``modules``."""
    report = {}
    for module in ("numpy", *modules):
        package = module.split(".")[0]
        try:
            found: str | None = metadata.version(package)
        except metadata.PackageNotFoundError:
            found = None
        try:
            __import__(module)
            problem = None
        except Exception as error:  # noqa: BLE001 - any import failure is a finding to report
            problem = import_problem(module, error)
        report[package] = {"version": found, "problem": problem}
    return report


def free_mb(directory: Path) -> float:
    """Free space (MB) on the filesystem that holds ``directory`` (or its nearest existing parent)."""
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    return shutil.disk_usage(directory).free / 1e6


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def peak_rss_kb() -> int:
    """Peak resident set size of this process so far (kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# ----------------------------------------------------------------------------- loaders

def load_loader(name: str, source: bytes) -> types.ModuleType:
    """A backend's loader module (lpmr_edge/runtimes/<name>/loader.py) from the source the host sent."""
    module = types.ModuleType(name)
    module.__file__ = f"<{name} from the host>"
    exec(compile(source, module.__file__, "exec"), module.__dict__)  # noqa: S102 - the host's own code
    return module


# ----------------------------------------------------------------------------- the server

def _disk_problem(error: OSError, what: str, directory: Path) -> ServerError:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return ServerError(f"the device is out of disk space in {directory} ({what}, {free_mb(directory):.1f} MB "
                           "free); free space there or choose another device workdir (?workdir=DIR)")
    return ServerError(f"cannot write {what} in {directory} on the device: {error.strerror}")


def _checked_names(files: dict[str, str]) -> dict[str, str]:
    for name in files:
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ServerError(f"the manifest lists a file outside the artifact: {name}")
    return files


class Server:
    """Serves one host: receives an artifact, loads it, runs batches of inputs through its towers."""

    def __init__(self, stdin: BinaryIO, stdout: BinaryIO) -> None:
        self.stdin, self.stdout = stdin, stdout
        self.workdir = Path.home()
        self.directory: Path | None = None
        self.manifest: dict[str, Any] = {}
        self.towers: dict[str, Infer] = {}

    def read_some(self, size: int) -> bytes:
        """Up to ``size`` bytes from the host (fewer only at the end of input)."""
        signal.alarm(IDLE_SECONDS)  # SIGALRM ends the process: no exchange with the host for that long
        return self.stdin.read(size)

    def read_exact(self, size: int) -> bytes:
        data = self.read_some(size)
        if len(data) != size:
            raise EOFError("the host closed the channel mid-frame")
        return data

    def send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        signal.alarm(IDLE_SECONDS)
        self.stdout.write(frame(header, len(payload)) + payload)
        self.stdout.flush()

    def serve(self) -> None:
        """Say hello, then answer requests until the host closes the channel."""
        self.send({"op": "hello", "protocol": PROTOCOL, "pid": os.getpid(), **machine_facts()})
        while (header := read_frame_header(self.read_exact, self.read_some)) is not None:
            size = header.get("bytes", 0)
            try:
                if header.get("op") == "put":
                    reply, payload = self.put(header["file"], size), b""
                else:
                    handler = {"probe": self.probe, "artifact": self.artifact, "load": self.load,
                               "run": self.run}.get(header.get("op"))
                    body = self.read_exact(size)
                    if handler is None:
                        raise ServerError(f"unknown request {header.get('op')!r} (protocol {PROTOCOL})")
                    reply, payload = handler(header, body)
            except ServerError as error:
                reply, payload = {"error": str(error), "setup": error.setup}, b""
            except Exception as error:  # noqa: BLE001 - anything else is still one line for the host
                reply, payload = {"error": f"{type(error).__name__}: {error}".splitlines()[0]}, b""
            self.send(reply, payload)

    def probe(self, header: dict[str, Any], _: bytes) -> tuple[dict, bytes]:
        return {"packages": package_report(header["modules"]),
                "free_mb": free_mb(Path(os.path.expanduser(header["workdir"])))}, b""

    def artifact(self, header: dict[str, Any], manifest_json: bytes) -> tuple[dict, bytes]:
        """Prepare the artifact's directory; reply which files still have to be sent."""
        self.workdir = Path(os.path.expanduser(header["workdir"]))
        self.manifest = json.loads(manifest_json)
        self.directory = self.workdir / "artifacts" / hashlib.sha256(manifest_json).hexdigest()[:16]
        self.towers = {}
        files = _checked_names(self.manifest["files"])
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            partial = self.directory / ".manifest.json.part"
            partial.write_bytes(manifest_json)
            os.replace(partial, self.directory / "manifest.json")
        except OSError as error:
            raise _disk_problem(error, "manifest.json", self.workdir) from None
        missing = [name for name, digest in files.items()
                   if not (self.directory / name).is_file() or sha256_file(self.directory / name) != digest]
        return {"directory": str(self.directory), "missing": missing}, b""

    def put(self, name: str, size: int) -> dict[str, Any]:
        """Stream one artifact file to disk beside its place; keep it only if its sha256 is the manifest's."""
        if self.directory is None or name not in self.manifest.get("files", {}):
            self.discard(size)
            raise ServerError(f"{name} is not a file of the announced artifact")
        target = self.directory / name
        partial = target.with_name(f".{target.name}.part")
        try:
            digest = self.receive(partial, size)
        except OSError as error:
            partial.unlink(missing_ok=True)
            raise _disk_problem(error, f"{name}, {size / 1e6:.1f} MB", self.workdir) from None
        if digest != self.manifest["files"][name]:
            partial.unlink()
            raise ServerError(f"{name} arrived with sha256 {digest[:12]}…, the manifest says "
                              f"{self.manifest['files'][name][:12]}…: the transfer was corrupted")
        os.replace(partial, target)
        return {}

    def receive(self, path: Path, size: int) -> str:
        """Write the next ``size`` payload bytes to ``path``; returns their sha256. On a write error the
        rest of the payload is read and dropped before raising, so the next frame is read in step."""
        digest, remaining = hashlib.sha256(), size
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as handle:
                while remaining:
                    chunk = self.read_exact(min(CHUNK, remaining))
                    remaining -= len(chunk)
                    digest.update(chunk)
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError:
            self.discard(remaining)
            raise
        return digest.hexdigest()

    def discard(self, size: int) -> None:
        """Read and drop ``size`` payload bytes."""
        while size:
            size -= len(self.read_exact(min(CHUNK, size)))

    def load(self, header: dict[str, Any], loader_source: bytes) -> tuple[dict, bytes]:
        """Load the announced artifact's towers with the loader module the host sent."""
        if self.directory is None:
            raise ServerError("no artifact was announced before load")
        missing = [name for name in self.manifest["files"] if not (self.directory / name).is_file()]
        if missing:
            raise ServerError(f"the artifact is incomplete on the device (missing {', '.join(missing)})")
        for module in ("numpy", *header["modules"]):
            try:
                __import__(module)
            except Exception as error:  # noqa: BLE001 - any import failure is the device's setup problem
                raise ServerError(import_problem(module, error), setup=True) from None
        threads = header.get("threads") or self.manifest["runtime_config"]["threads"]
        try:
            self.towers, info = load_loader(header["loader"], loader_source).load(self.directory, self.manifest,
                                                                                  threads)
        except ImportError as error:
            raise ServerError(str(error), setup=True) from None
        except ValueError as error:
            raise ServerError(str(error)) from None
        return {"runtime": self.manifest["runtime"], **info, "peak_rss_kb": peak_rss_kb()}, b""

    def run(self, header: dict[str, Any], inputs_npy: bytes) -> tuple[dict, bytes]:
        """Features of one shard of inputs, run in the tower's static batches (the last zero-padded)."""
        import numpy as np

        tower = header["tower"]
        if tower not in self.towers:
            raise ServerError(f"no loaded {tower} tower (load the artifact first)")
        inputs = np.ascontiguousarray(decode_array(inputs_npy), dtype=INPUT_DTYPES[tower])
        batch = self.manifest["towers"][tower]["inputs"][0]["shape"][0]
        batch = len(inputs) if batch == -1 else batch
        outputs, seconds = [], []
        for start in range(0, len(inputs), batch):
            chunk = inputs[start:start + batch]
            real = len(chunk)
            if real < batch:
                chunk = np.concatenate([chunk, np.zeros((batch - real, *chunk.shape[1:]), dtype=chunk.dtype)])
            began = time.perf_counter()
            outputs.append(np.asarray(self.towers[tower](chunk), dtype=np.float32)[:real])
            seconds.append(time.perf_counter() - began)
            self.send({"progress": len(seconds)})
        return {"batch_s": seconds, "batch": batch, "peak_rss_kb": peak_rss_kb()}, encode_array(np.concatenate(outputs))


def supervise(grace_s: float = 2.0) -> None:
    """Fork: the child returns and serves; this process, the one the device started, supervises it.

    The supervisor SIGKILLs the server when the host's end of stdin or stdout closes and the server has
    not ended by itself ``grace_s`` later (e.g. mid-batch, a runtime call holding the interpreter), then
    exits with the server's status (128 + N if signal N ended it). Being the server's parent lets it kill
    even where the started process is its pid namespace's init (the emulated device), which ignores
    every signal it does not handle.
    """
    alive_reader, alive_writer = os.pipe()  # the server holds the writer: EOF means it has ended
    server = os.fork()
    if server == 0:
        os.close(alive_reader)
        return
    os.close(alive_writer)
    poller = select.poll()
    for channel in (0, 1):
        poller.register(channel, 0)  # hang-ups and errors are always reported
    poller.register(alive_reader, select.POLLIN)
    if all(fd != alive_reader for fd, _ in poller.poll()) and not select.select([alive_reader], [], [], grace_s)[0]:
        os.kill(server, signal.SIGKILL)
    status = os.waitstatus_to_exitcode(os.waitpid(server, 0)[1])
    os._exit(status if status >= 0 else 128 - status)


def main() -> None:
    """Supervise, then serve on private copies of stdin/stdout: the standard streams are left to libraries
    (fd 1 goes to stderr so a C library's output cannot corrupt a frame; ``sys.stdin`` is /dev/null, which is
    what a forked child such as multiprocessing's closes, never the protocol reader whose lock the main
    thread holds while it waits). OpenVINO's telemetry is kept out: on import it sends a usage event from
    a forked process that can hang without internet and outlive the server. Ends with ``os._exit``:
    tearing down an interpreter with torch loaded takes seconds, for nothing."""
    supervise()
    sys.modules.setdefault("openvino_telemetry", None)  # openvino then uses its built-in no-op stub
    protocol_in = sys.stdin.detach()  # keeps what the bootstrap buffered (nothing: the host awaits hello)
    sys.stdin = open(os.devnull)  # noqa: SIM115 - the process's stdin until os._exit
    protocol_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    with contextlib.suppress(EOFError, BrokenPipeError):
        Server(protocol_in, protocol_out).serve()
    sys.stderr.flush()
    os._exit(0)

if __name__ == "__main__":
    main()
