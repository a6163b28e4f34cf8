"""A quiet terminal: what the libraries print goes to a log file, what lpmr-edge prints stays on screen.

ExecuTorch's and OpenVINO's C++ code and every subprocess (export and bench workers) write to the
process's file descriptors 1 and 2, so ``captured_output`` points those descriptors at a temporary
file (``dup2``) and gives Python's ``sys.stdout``/``sys.stderr`` — which lpmr-edge's own output, rich
displays and Typer's messages use — copies of the original descriptors. Dependencies' Python output is
routed to the same file: warnings, log records (NNCF's logger, which writes to stdout on its own, too)
and rich's global console (NNCF's progress bars). On exit the captured text is appended to the log file.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, TextIO

LOG_ENV = "LPMR_EDGE_LOG"
DEFAULT_LOG = Path("lpmr-results") / "lpmr-edge.log"
ROUTED_LOGGERS = ("nncf",)  # loggers with their own stream handlers (bypassing the root logger)


def default_log_path() -> Path:
    """``$LPMR_EDGE_LOG``, else ``lpmr-results/lpmr-edge.log`` in the working directory."""
    return Path(os.environ.get(LOG_ENV) or DEFAULT_LOG)


@dataclass
class Capture:
    """What a ``captured_output`` block kept: lines of library output and the log they were appended to."""

    log_path: Path
    lines: int = 0


def _fd_of(stream: Any) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


def _reopen(fd: int, like: TextIO) -> TextIO:
    """A text stream on a copy of ``fd``, encoded like ``like``."""
    return open(os.dup(fd), "w", buffering=1, encoding=getattr(like, "encoding", None) or "utf-8",
                errors="backslashreplace", closefd=True)


class _LogRecordsTo(logging.Filter):
    """Sends a logger's records to ``handler`` instead of the logger's own handlers."""

    def __init__(self, handler: logging.Handler) -> None:
        super().__init__()
        self.handler = handler

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= self.handler.level:
            self.handler.handle(record)
        return False


@contextlib.contextmanager
def _python_output_to(stream: TextIO) -> Iterator[None]:
    """Route warnings, log records and rich's global console to ``stream`` for the duration."""
    import rich

    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(levelname)s:%(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    routed = _LogRecordsTo(handler)
    for name in ROUTED_LOGGERS:
        logging.getLogger(name).addFilter(routed)
    global_console = rich.get_console()
    console_file = global_console.file
    global_console.file = stream
    show_warning = warnings.showwarning
    warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: stream.write(
        warnings.formatwarning(message, category, filename, lineno, line))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            yield
    finally:
        warnings.showwarning = show_warning
        global_console.file = console_file
        for name in ROUTED_LOGGERS:
            logging.getLogger(name).removeFilter(routed)
        root.removeHandler(handler)


@contextlib.contextmanager
def captured_output(log_path: Path, title: str) -> Iterator[Capture]:
    """Library output (C/C++ and subprocesses at the descriptor level, dependencies' warnings, logs and rich
    progress) goes to ``log_path`` (appended under a ``title`` header) instead of the terminal; lpmr-edge's
    own output through ``sys.stdout``/``sys.stderr`` is unaffected."""
    capture = Capture(log_path)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    with tempfile.TemporaryFile(mode="w+b", buffering=0) as kept:
        saved = {fd: os.dup(fd) for fd in (1, 2)}
        replaced: dict[str, TextIO] = {}
        for name, fd in (("stdout", 1), ("stderr", 2)):
            original = getattr(sys, name)
            if _fd_of(original) == fd:  # a real descriptor (not a test runner's buffer): keep it visible
                replaced[name] = original
                setattr(sys, name, _reopen(saved[fd], original))
        for fd in saved:
            os.dup2(kept.fileno(), fd)
        log_stream = _reopen(kept.fileno(), sys.stderr)
        try:
            with _python_output_to(log_stream):
                yield capture
        finally:
            log_stream.close()
            for name, original in replaced.items():
                getattr(sys, name).close()
                setattr(sys, name, original)
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
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"==> {stamp} {title}\n{text}{'' if text.endswith(chr(10)) else chr(10)}")
    return len(text.splitlines())

