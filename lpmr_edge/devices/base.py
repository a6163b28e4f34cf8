"""Where artifacts run: a device is a way to start processes there with their stdio connected to the host.

``--device`` specs (``lpmr_edge.devices.kinds.parse_device``; each kind is a ``Device`` subclass listed there)::

    local                                         this machine, the runtime in process (the default)
    local?python=PATH                             a device server on this machine, in another Python
    ssh://[user@]host[:port][?python=…&workdir=…&config=…&runner=…]   a board reached with the system OpenSSH client
    emu-arm64[?workdir=…&cpu=…&runner=…]          the emulated arm64 root (correctness only: emulated timings)

Options: ``python``, the device's Python (default: the private venv ``<workdir>/venv`` that
``lpmr-edge device setup`` makes; on this machine, this Python); ``workdir``, where artifacts and the
venv live on the device (default ``~/.cache/lpmr-edge``, ``~`` being the device's home); ``config``, an
ssh_config file for ``ssh -F``; ``cpu``, the QEMU CPU model of the emulated device; ``runner``, the runner
kind for the runtimes that have one (``native``: ExecuTorch's C++ runner, no Python on the device; the
other runtimes keep their Python device server).
"""
from __future__ import annotations

import subprocess
import tempfile
from abc import ABC, abstractmethod
from typing import IO, Any
from urllib.parse import SplitResult, parse_qsl

from lpmr_edge.backends import RUNNER_KINDS
from lpmr_edge.errors import UserError

LOCAL = "local"
DEFAULT_WORKDIR = "~/.cache/lpmr-edge"
COMMAND_NOT_FOUND = 127
KILLED = 128  # exit status 128 + N: the device server was killed by signal N


class Device(ABC):
    """A machine that runs the device server and setup commands for the host."""

    kind = "device"
    emulated = False
    options: tuple[str, ...] = ("python", "workdir", "runner")  # the ``?name=value`` options its spec takes
    spec: str | None = None  # the --device spec it was made from, options included

    @classmethod
    def from_spec(cls, spec: str, parts: SplitResult) -> Device:
        """The device a parsed spec of this kind names (its options checked against ``options``)."""
        return cls(**parse_options(spec, parts.query, cls.options))

    def __init__(self, workdir: str | None = None, python: str | None = None, runner: str | None = None) -> None:
        self.workdir = (workdir or DEFAULT_WORKDIR).rstrip("/")
        self.python = python or self.default_python
        if runner is not None and runner not in RUNNER_KINDS:
            raise UserError(f"unknown runner '{runner}' in a device spec; use one of {', '.join(RUNNER_KINDS)}")
        self.runner = runner  # the runner kind asked for (None: each runtime's default)

    @property
    def private_python(self) -> str:
        """The Python of the private venv ``lpmr-edge device setup`` makes on the device."""
        return f"{self.workdir}/venv/bin/python"

    @property
    def default_python(self) -> str:
        """The Python used when the spec names none."""
        return self.private_python

    @property
    @abstractmethod
    def label(self) -> str:
        """The spec without options, e.g. ``ssh://pi@raspberrypi``: names the device in messages and results."""

    @abstractmethod
    def command(self, argv: list[str]) -> list[str]:
        """The host command that runs ``argv`` on the device with stdio connected (``~/`` = the device's home)."""

    def environment(self) -> dict[str, str] | None:
        """The host environment of ``command`` (None: this process's)."""
        return None

    def prepare(self) -> None:
        """Make the device reachable (the emulated device builds its root); nothing for most devices."""

    def describe(self) -> dict[str, Any]:
        """What identifies the device in results: kind, label, whether its timings are emulated."""
        return {"kind": self.kind, "label": self.label, "emulated": self.emulated}

    def explain(self, returncode: int, stderr: str) -> str:
        """One line on why a device command ended with ``returncode`` and ``stderr``."""
        lines = stderr.strip().splitlines()
        if returncode < 0:
            return f"the device process was killed by signal {-returncode}"
        if returncode == COMMAND_NOT_FOUND:
            return f"{lines[-1] if lines else self.python + ' not found'} ({self.setup_hint()})"
        if returncode > KILLED:
            return f"the device server was killed by signal {returncode - KILLED}"
        return lines[-1] if lines else f"the device process ended with status {returncode}"

    def setup_hint(self) -> str:
        """What to run to prepare this device."""
        return f"run `lpmr-edge device setup --device '{self.spec or self.label}'`"

    def start(self, argv: list[str], stderr: IO[bytes]) -> subprocess.Popen[bytes]:
        """Start ``argv`` on the device, stdin/stdout piped, in its own session (Ctrl-C is the host's to handle)."""
        try:
            return subprocess.Popen(self.command(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                    env=self.environment(), start_new_session=True)
        except OSError as error:
            raise UserError(f"cannot start {self.command(argv)[0]} for device {self.label}: {error.strerror}") from None

    def run(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on the device to completion; raise a UserError if it cannot be started or times out."""
        with tempfile.TemporaryFile() as stderr:
            process = self.start(argv, stderr)
            try:
                stdout, _ = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()
                raise UserError(f"`{' '.join(argv)}` did not finish within {timeout:.0f} s on device "
                                f"{self.label}; it was stopped") from None
            stderr.seek(0)
            return subprocess.CompletedProcess(argv, process.returncode, stdout.decode(errors="replace"),
                                               stderr.read().decode(errors="replace"))


def parse_options(spec: str, query: str, allowed: tuple[str, ...]) -> dict[str, str]:
    """The ``?name=value&...`` options of a device spec; a UserError for one its kind does not take."""
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise UserError(f"unknown option '{unknown[0]}' in device '{spec}'; valid: {', '.join(allowed) or 'none'}")
    return options


def in_process(spec: str) -> bool:
    """True for plain ``local``: the runtime runs in this process, no device server."""
    return spec == LOCAL
