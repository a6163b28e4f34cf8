"""Binary device runners: a bundle built on the host for the device's CPU, copied to a private directory on the
device, checked there by sha256 and started instead of the Python device server (it speaks serve.py's protocol).

A bundle is a directory holding ``runner.json`` (``RECORD``) and the files it lists::

    {arch, key, executable, files: {path: sha256}, versions: {library: version}, footprint_mb,
     system_libraries: [what the device must provide], requires: {GLIBC, GLIBCXX, CXXABI: newest version}}

A ``Runner`` record with a ``bundle`` builder (lpmr_edge/backends.py) is such a runner. On the device it lives in
``<workdir>/runners/<kind>-<arch>-<key>/`` (mode 700); the device needs a POSIX shell, uname, cat, mkdir, chmod,
mv and sha256sum (coreutils or busybox), never Python. Every session checks the installed files by sha256 on the
device and copies the ones that are missing or differ; each copy is checked there before it is renamed into place.
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lpmr_edge.backends import Runner
from lpmr_edge.devices.base import Device
from lpmr_edge.devices.serve import ELF_MACHINES, MARKER, sha256_file
from lpmr_edge.errors import UserError

RECORD = "runner.json"
SHELL = "/bin/sh"
COMMAND_TIMEOUT = 600.0
CORRUPTED = 3  # the exit status of PUT when the copy's sha256 on the device is not the bundle's
# $1 directory; then each file: print "sha256  path" of the installed files (none if the directory is missing)
CHECK = 'cd "$1" 2>/dev/null || exit 0; shift; for f; do [ -f "$f" ] && sha256sum -- "$f"; done; exit 0'
# $1 directory, $2 file, $3 sha256: stdin to a partial file, checked by sha256 on the device, then renamed
PUT = """set -e; umask 077; mkdir -p "$1"; chmod 700 "$1"; target="$1/$2"; mkdir -p "$(dirname "$target")"
part="$target.part"; cat > "$part"; sum=$(sha256sum < "$part"); sum=${sum%% *}
if [ "$sum" != "$3" ]; then rm -f "$part"; echo "sha256 $sum" >&2; exit 3; fi
chmod 700 "$part"; mv -f "$part" "$target\""""
_MISSING_LIBRARY = re.compile(r"error while loading shared libraries: ([^:]+):")
_OLD_SYSTEM_LIBRARY = re.compile(r"version `([^']+)' not found \(required by ([^)]+)\)")
KILLED = 128  # a shell reports a child killed by signal N as 128 + N
CANNOT_EXECUTE = (126, 127)  # a shell's status for a file it cannot execute, or cannot find


def elf_machine(path: Path) -> str | None:
    """The CPU architecture an ELF file is built for ("x86_64", "aarch64", ...), or None if it is no ELF file."""
    with open(path, "rb") as handle:
        header = handle.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    return ELF_MACHINES.get(int.from_bytes(header[18:20], "little"), "another CPU")


def check_bundle(bundle: Path, machine: str, setup: str = "rebuild it") -> dict[str, Any]:
    """The bundle's record after checking, on the host, that it is complete, intact and built for ``machine``;
    a UserError naming the first problem and ``setup``, what fixes it."""
    record_path = bundle / RECORD
    if not record_path.is_file():
        raise UserError(f"{bundle} is not a runner bundle (no {RECORD}); {setup}")
    record = json.loads(record_path.read_text())
    for name, digest in record["files"].items():
        path = bundle / name
        if not path.is_file():
            raise UserError(f"the runner's {name} is missing from {bundle}; {setup}")
        found = sha256_file(path)
        if found != digest:
            raise UserError(f"the runner's {name} in {bundle} has sha256 {found[:12]}…, {RECORD} says "
                            f"{digest[:12]}…: the copy is corrupted; {setup}")
    built_for = elf_machine(bundle / record["executable"])
    if built_for != machine:
        raise UserError(f"the runner in {bundle} is built for {built_for or 'no known CPU'}, the device is {machine}: "
                        f"build the {machine} bundle and use that one")
    return record


def explain_runner_exit(returncode: int, stderr: str, record: dict[str, Any] | None = None) -> str | None:
    """One line on why a binary runner ended with ``returncode`` (Popen's, or a shell's) and ``stderr``; None
    when neither says more than the device's own explanation would."""
    missing = _MISSING_LIBRARY.search(stderr)
    if missing:
        library = missing.group(1)
        if record is None or f"lib/{library}" in record["files"]:
            return f"the runner cannot load {library} (missing from its lib/ directory); re-run to copy it again"
        return (f"the device lacks the system library {library}, which the runner needs (it needs "
                f"{', '.join(record['system_libraries'])}): install it on the device")
    too_old = _OLD_SYSTEM_LIBRARY.search(stderr)
    if too_old:
        return (f"the device's C/C++ libraries are older than the runner needs ({too_old.group(1)}, required "
                f"by {Path(too_old.group(2)).name}; {RECORD} lists them under 'requires'): use a device image with "
                "newer glibc/libstdc++, or build the runner against an older sysroot")
    if "Exec format error" in stderr or returncode in CANNOT_EXECUTE:
        return ("the runner cannot be executed on the device (built for another CPU, corrupted or missing); re-run "
                "to check and copy it again")
    killed = -returncode if returncode < 0 else returncode - KILLED if returncode > KILLED else 0
    if killed:
        names = [known.name for known in signal.Signals if known.value == killed]
        return f"the runner was killed by signal {killed}" + (f" ({names[0]})" if names else "")
    return None


def device_machine(device: Device) -> str:
    """The device's CPU architecture (``uname -m`` there)."""
    done = device.run([SHELL, "-c", "uname -m"], COMMAND_TIMEOUT)
    if done.returncode != 0 or not done.stdout.strip():
        raise UserError(f"device {device.label}: cannot read its architecture "
                        f"({device.explain(done.returncode, done.stderr)})")
    return done.stdout.strip()


@dataclass
class InstalledRunner:
    """A runner bundle in its private directory on a device, every file checked there by sha256."""

    kind: str
    directory: str
    record: dict[str, Any]
    copied: list[str] = field(default_factory=list)

    @property
    def argv(self) -> list[str]:
        """What starts it on the device (``MARKER`` names it among the device's processes)."""
        return [f"{self.directory}/{self.record['executable']}", MARKER]

    def describe(self) -> dict[str, Any]:
        """The runner as results record it: kind, library versions, on-device footprint and where it is."""
        return {"kind": self.kind, "versions": self.record["versions"], "footprint_mb": self.record["footprint_mb"],
                "key": self.record["key"], "arch": self.record["arch"], "directory": self.directory}

    def explain(self, returncode: int, stderr: str) -> str | None:
        return explain_runner_exit(returncode, stderr, self.record)


def installed_digests(device: Device, directory: str, files: list[str]) -> dict[str, str]:
    """sha256 (computed on the device) of those of ``files`` that exist in ``directory`` there."""
    done = device.run([SHELL, "-c", CHECK, "sh", directory, *files], COMMAND_TIMEOUT)
    if done.returncode != 0:
        raise UserError(f"device {device.label}: cannot check {directory} "
                        f"({device.explain(done.returncode, done.stderr)})")
    digests = {}
    for line in done.stdout.splitlines():
        digest, _, name = line.partition(" ")
        digests[name.strip().lstrip("*")] = digest
    return digests


def copy_file(device: Device, directory: str, name: str, source: Path, digest: str) -> None:
    """Send ``source`` to ``directory/name`` on the device, kept only if its sha256 there is ``digest``."""
    with open(Path(source), "rb") as content:
        done = subprocess.run(device.command([SHELL, "-c", PUT, "sh", directory, name, digest]), stdin=content,
                              capture_output=True, env=device.environment(), timeout=COMMAND_TIMEOUT, check=False)
    stderr = done.stderr.decode(errors="replace")
    if done.returncode == CORRUPTED:
        found = stderr.split()[-1]
        raise UserError(f"device {device.label}: the runner's {name} arrived with sha256 {found[:12]}…, {RECORD} "
                        f"says {digest[:12]}…: the copy was corrupted on the way or on the device's storage; re-run "
                        "to copy it again")
    if done.returncode != 0:
        raise UserError(f"device {device.label}: cannot copy the runner's {name} to {directory} "
                        f"({device.explain(done.returncode, stderr)})")


def install_runner(device: Device, kind: str, bundle: Path, machine: str) -> InstalledRunner:
    """The bundle (built for ``machine``) in its private directory on the device: the files that are missing
    there or differ are copied, each checked by sha256 on the device."""
    record = check_bundle(bundle, machine)
    directory = f"{device.workdir}/runners/{kind}-{record['arch']}-{record['key']}"
    found = installed_digests(device, directory, list(record["files"]))
    copied = [name for name, digest in record["files"].items() if found.get(name) != digest]
    for name in copied:
        copy_file(device, directory, name, bundle / name, record["files"][name])
    return InstalledRunner(kind, directory, record, copied)


def prepare_runner(device: Device, runner: Runner) -> InstalledRunner | None:
    """``runner`` installed on the device if it is a binary runner (built for the device's architecture, which
    is asked there first); None for a Python runner (serve.py is sent with each session)."""
    if runner.bundle is None:
        return None
    machine = device_machine(device)
    return install_runner(device, runner.kind, runner.build_bundle(machine), machine)
