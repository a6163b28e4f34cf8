"""Deployment targets: one TOML file per device class in ``targets/`` (or any path).

A target names the CPU architecture, the thread count, the static batch of each exported tower and,
per runtime, the precisions to export and runtime options::

    name = "x86"                 # optional, defaults to the file name; used as a directory name
    description = "..."
    arch = "x86_64"              # or "aarch64"
    threads = 2
    image_batch = 1
    text_batch = 1

    [runtimes.openvino]
    precisions = ["fp32", "int8"]
    options = { performance_hint = "LATENCY" }

Users add a target by dropping a file into ``targets/`` (or ``$LPMR_EDGE_TARGETS_DIR``) or passing its path.
"""
from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lpmr_edge.backends import BACKENDS
from lpmr_edge.errors import UserError
from lpmr_edge.schema import parse_table, parse_value, require

TARGETS_DIR = Path(os.environ.get("LPMR_EDGE_TARGETS_DIR", Path(__file__).resolve().parent / "_data" / "targets"))
ARCHES = ("x86_64", "aarch64")
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class RuntimeTarget:
    """One runtime's entry in a target (``[runtimes.<name>]``): precisions to export and runtime options."""

    precisions: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TargetFile:
    """A target file's content as written (read by ``lpmr_edge.schema``: types, unknown and missing keys)."""

    arch: str
    threads: int
    image_batch: int
    text_batch: int
    runtimes: dict[str, RuntimeTarget]
    name: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        require(self.name is None or bool(_NAME_PATTERN.fullmatch(self.name)),
                f"name {self.name!r} is not usable as a directory name (use letters, digits, . _ -)")
        require(self.arch in ARCHES, f"arch is {self.arch!r} (use one of {', '.join(ARCHES)})")
        for key in ("threads", "image_batch", "text_batch"):
            require(getattr(self, key) >= 1, f"{key} is {getattr(self, key)} (use a positive integer)")
        require(bool(self.runtimes), f"runtimes is empty (add a table such as [runtimes.{next(iter(BACKENDS))}]; "
                                     f"runtimes: {', '.join(BACKENDS)})")


@dataclass(frozen=True)
class Target:
    """A deployment target read from a TOML file."""

    name: str
    description: str
    arch: str
    threads: int
    image_batch: int
    text_batch: int
    runtimes: dict[str, RuntimeTarget]
    source: str

    def runtime(self, runtime: str) -> RuntimeTarget:
        """This target's entry for ``runtime``; a clear error when the target does not list it."""
        if runtime not in self.runtimes:
            raise UserError(f"target '{self.name}' ({self.source}) lists no runtime '{runtime}'; "
                            f"use one of {', '.join(self.runtimes)} or add [runtimes.{runtime}] to the file")
        return self.runtimes[runtime]

    def describe(self) -> dict[str, Any]:
        """Manifest entry: everything that shapes an artifact."""
        return {"name": self.name, "description": self.description, "arch": self.arch, "threads": self.threads,
                "batch": {"image": self.image_batch, "text": self.text_batch},
                "runtimes": {name: {"precisions": list(entry.precisions), "options": entry.options}
                             for name, entry in self.runtimes.items()}}


def _check_runtime(runtime: str, entry: RuntimeTarget) -> None:
    """What only the runtime's backend record can judge: its precisions and its options."""
    where = f"[runtimes.{runtime}]"
    if runtime not in BACKENDS:
        raise UserError(f"unknown runtime '{runtime}' (use one of {', '.join(BACKENDS)})")
    spec = BACKENDS[runtime]
    if not entry.precisions:
        raise UserError(f"{where} precisions is empty (list some of {', '.join(spec.precisions)})")
    unknown = [p for p in entry.precisions if p not in spec.precisions]
    if unknown or len(set(entry.precisions)) != len(entry.precisions):
        raise UserError(f"{where} precisions has unknown or repeated entries {unknown or list(entry.precisions)} "
                        f"(use each of {', '.join(spec.precisions)} at most once)")
    if spec.option_types is not None:
        for key, value in entry.options.items():
            if key not in spec.option_types:
                raise UserError(f"unknown key '{key}' in [runtimes.{runtime}.options]; valid keys: "
                                f"{', '.join(spec.option_types)}")
            parse_value(value, spec.option_types[key], f"[runtimes.{runtime}.options] {key}")
    problem = spec.option_problem(entry.options, f"runtimes.{runtime}.options.")
    if problem:
        raise UserError(f"{problem[0]} ({problem[1]})")


def parse_target(source: Path, data: Mapping[str, Any]) -> Target:
    """Validate a target's TOML content; every problem is one line naming the file, the key and the fix."""
    try:
        written = parse_table(TargetFile, data)
        for runtime, entry in written.runtimes.items():
            _check_runtime(runtime, entry)
    except UserError as error:
        raise UserError(f"target file {source}: {error}; see targets/x86.toml for a complete file") from None
    return Target(name=written.name or source.stem, description=written.description, arch=written.arch,
                  threads=written.threads, image_batch=written.image_batch, text_batch=written.text_batch,
                  runtimes=written.runtimes, source=str(source))


def read_target_file(path: Path) -> Target:
    """Read and validate one target file."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as error:
        raise UserError(f"cannot read target file {path} ({error.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"target file {path}: not valid TOML ({error}); fix the syntax") from None
    return parse_target(Path(path), data)


def target_files() -> list[Path]:
    """The target files shipped in (or dropped into) the targets directory."""
    return sorted(TARGETS_DIR.glob("*.toml")) if TARGETS_DIR.is_dir() else []


def load_target(name_or_path: str | Path) -> Target:
    """A target by name (``targets/<name>.toml``) or by path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.is_file():
        return read_target_file(path)
    candidate = TARGETS_DIR / f"{name_or_path}.toml"
    if not candidate.is_file():
        names = ", ".join(p.stem for p in target_files()) or "none"
        raise UserError(f"unknown target '{name_or_path}' (available in {TARGETS_DIR}: {names}); "
                        "pass a name or a path to a .toml file")
    return read_target_file(candidate)


def list_targets() -> list[Target]:
    """Every target in the targets directory (a bad file is an error naming it)."""
    return [read_target_file(path) for path in target_files()]
