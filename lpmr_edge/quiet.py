"""A quiet terminal: what the libraries print goes to a log file, what lpmr-edge prints stays on screen.

ExecuTorch's and OpenVINO's C++ code, pybind11 modules that print through ``sys.stderr``, Python
warnings, log records and every subprocess (export and bench workers) end up on the process's file
descriptors 1 and 2, so ``captured_output`` points those descriptors at a temporary file (``dup2``) and
hands lpmr-edge copies of the original descriptors (``Capture.stdout``/``Capture.stderr``) for its own
output. ``sys.stdout`` is switched to the visible copy (``--json`` output and Typer's help write there),
so dependencies that print to stdout from Python are routed explicitly: NNCF's logger (its own stdout
handler) and rich's global console (NNCF's progress bars). On exit the captured text is appended to
the log file.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TextIO

LOG_ENV = "LPMR_EDGE_LOG"
DEFAULT_LOG = Path("lpmr-results") / "lpmr-edge.log"
ROUTED_LOGGERS = ("nncf",)  # loggers with their own stdout handlers


def default_log_path() -> Path:
    """``$LPMR_EDGE_LOG``, else ``lpmr-results/lpmr-edge.log`` in the working directory."""
    return Path(os.environ.get(LOG_ENV) or DEFAULT_LOG)


@dataclass
class Capture:
    """A ``captured_output`` block: the visible streams for lpmr-edge's own output, and on exit the number
    of library output lines appended to ``log_path``."""

    log_path: Path
    stdout: TextIO
    stderr: TextIO
    lines: int = 0


def _fd_of(stream: Any) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


def _reopen(fd: int, like: TextIO) -> TextIO:
    """A line-buffered text stream on a copy of ``fd``, encoded like ``like``."""
    return open(os.dup(fd), "w", buffering=1, encoding=getattr(like, "encoding", None) or "utf-8",
                errors="backslashreplace", closefd=True)


class _LogRecordsTo(logging.Filter):
    """Sends a logger's records to ``handler`` instead of the logger's own handlers."""

    def __init__(self, handler: logging.Handler) -> None:
        super().__init__()
        self.handler = handler

    def filter(self, record: logging.LogRecord) -> bool:
        self.handler.handle(record)
        return False


@contextlib.contextmanager
def _stdout_writers_to(stream: TextIO) -> Iterator[None]:
    """Route the Python writers that would reach the visible stdout (NNCF's logger, rich's global console)
    to ``stream`` for the duration."""
    import rich

    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s:%(name)s: %(message)s"))
    routed = _LogRecordsTo(handler)
    for name in ROUTED_LOGGERS:
        logging.getLogger(name).addFilter(routed)
    global_console = rich.get_console()
    # the console's own setting, not the ``file`` property: unset means "sys.stdout when writing", and
    # restoring the property's value would pin whatever sys.stdout was now (e.g. a test runner's buffer)
    console_file = global_console._file
    global_console.file = stream
    try:
        yield
    finally:
        global_console._file = console_file
        for name in ROUTED_LOGGERS:
            logging.getLogger(name).removeFilter(routed)


@contextlib.contextmanager
def captured_output(log_path: Path, title: str) -> Iterator[Capture]:
    """Library output goes to ``log_path`` (appended under a ``title`` header) instead of the terminal;
    write lpmr-edge's own output to ``Capture.stdout``/``Capture.stderr`` (``sys.stdout`` is the visible
    stdout for the duration). Where ``sys.stdout``/``sys.stderr`` are not the process's descriptors (a test
    runner's buffers) they are what ``Capture`` hands out."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    with tempfile.TemporaryFile(mode="w+b", buffering=0) as kept:
        saved = {fd: os.dup(fd) for fd in (1, 2)}
        original_stdout = sys.stdout
        visible_stdout = _reopen(saved[1], sys.stdout) if _fd_of(sys.stdout) == 1 else None
        visible_stderr = _reopen(saved[2], sys.stderr) if _fd_of(sys.stderr) == 2 else None
        capture = Capture(log_path, stdout=visible_stdout or sys.stdout, stderr=visible_stderr or sys.stderr)
        sys.stdout = capture.stdout
        for fd in saved:
            os.dup2(kept.fileno(), fd)
        log_stream = _reopen(kept.fileno(), capture.stderr)
        try:
            with _stdout_writers_to(log_stream):
                yield capture
        finally:
            sys.stdout = original_stdout
            for stream in (log_stream, visible_stdout, visible_stderr):
                if stream is not None:
                    stream.close()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            kept.seek(0)
            capture.lines = _append(log_path, title, kept)


def _append(log_path: Path, title: str, kept: IO[bytes]) -> int:
    text = kept.read().decode(errors="replace")
    if not text.strip():
        return 0
    log_path.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"==> {stamp} {title}\n{text}{'' if text.endswith(chr(10)) else chr(10)}")
    return len(text.splitlines())

