"""A native runner bundle (build.py's output) checked before it is started, and its failures explained.

``check_bundle`` is what the host runs on a bundle it can read (a local or emulated device's copy, or the copy
before it is sent): the runner's ELF machine, every file's sha256 against runner.json, every library it needs.
``explain_runner_exit`` turns the way a started runner ended into one line.
"""
from __future__ import annotations

import hashlib
import json
import re
import signal
from pathlib import Path
from typing import Any

from lpmr_edge.devices.serve import ELF_MACHINES
from lpmr_edge.errors import UserError
from lpmr_edge.runtimes.executorch.native.build import RECORD, RUNNER

SETUP = "copy the runner bundle again (`lpmr-edge device setup --runner native`)"
_MISSING_LIBRARY = re.compile(r"error while loading shared libraries: ([^:]+):")
_OLD_SYSTEM_LIBRARY = re.compile(r"version `([^']+)' not found \(required by ([^)]+)\)")
NOT_EXECUTABLE = 126
NOT_FOUND = 127
KILLED = 128  # a shell reports a child killed by signal N as 128 + N


def elf_machine(path: Path) -> str | None:
    """The CPU architecture an ELF file is built for ("x86_64", "aarch64", ...), or None if it is no ELF file."""
    with open(path, "rb") as handle:
        header = handle.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    return ELF_MACHINES.get(int.from_bytes(header[18:20], "little"), "another CPU")


def check_bundle(bundle: Path, machine: str) -> dict[str, Any]:
    """The bundle's record after checking it can run on ``machine``; a UserError naming the first problem."""
    record_path = bundle / RECORD
    if not record_path.is_file():
        raise UserError(f"{bundle} is not a native runner bundle (no {RECORD}); {SETUP}")
    record = json.loads(record_path.read_text())
    for name, digest in record["files"].items():
        path = bundle / name
        if not path.is_file():
            raise UserError(f"the native runner's {name} is missing from {bundle}; {SETUP}")
        found = hashlib.sha256(path.read_bytes()).hexdigest()
        if found != digest:
            raise UserError(f"the native runner's {name} in {bundle} has sha256 {found[:12]}…, {RECORD} says "
                            f"{digest[:12]}…: the copy is corrupted; {SETUP}")
    built_for = elf_machine(bundle / RUNNER)
    if built_for != machine:
        raise UserError(f"the native runner in {bundle} is built for {built_for or 'no known CPU'}, the device is "
                        f"{machine}: build the {machine} bundle (build_runner({machine!r})) and copy that one")
    return record


def explain_runner_exit(returncode: int, stderr: str) -> str:
    """One line on why a native runner ended with ``returncode`` (Popen's, or a shell's) and ``stderr``."""
    missing = _MISSING_LIBRARY.search(stderr)
    if missing:
        return f"the native runner cannot load {missing.group(1)} (missing from its lib/ directory); {SETUP}"
    too_old = _OLD_SYSTEM_LIBRARY.search(stderr)
    if too_old:
        return (f"the device's C/C++ libraries are older than the native runner needs ({too_old.group(1)}, required "
                f"by {Path(too_old.group(2)).name}; {RECORD} lists them under 'requires'): use a device image with "
                "newer glibc/libstdc++, or build the runner against an older sysroot")
    killed = -returncode if returncode < 0 else returncode - KILLED if returncode > KILLED else 0
    if killed:
        names = [known.name for known in signal.Signals if known.value == killed]
        return f"the native runner was killed by signal {killed}" + (f" ({names[0]})" if names else "")
    if returncode in (NOT_EXECUTABLE, NOT_FOUND) or "Exec format error" in stderr:
        return ("the native runner cannot be executed on the device (built for another architecture, "
                f"corrupted or missing); {SETUP}")
    lines = stderr.strip().splitlines()
    return lines[-1] if lines else f"the native runner ended with status {returncode}"
