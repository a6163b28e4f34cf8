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

TARGETS_DIR = Path(os.environ.get("LPMR_EDGE_TARGETS_DIR", Path(__file__).resolve().parent / "_data" / "targets"))
ARCHES = ("x86_64", "aarch64")
_TOP_LEVEL_TYPES: dict[str, type] = {"name": str, "description": str, "arch": str, "threads": int,
                                     "image_batch": int, "text_batch": int, "runtimes": dict}
_REQUIRED = ("arch", "threads", "image_batch", "text_batch", "runtimes")
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class RuntimeTarget:
    """One runtime's entry in a target: precisions to export and runtime options."""

    precisions: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)


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


def _fail(source: Path, problem: str, fix: str) -> UserError:
    return UserError(f"target file {source}: {problem}; {fix}")


def _check_types(source: Path, table: Mapping[str, Any], types: Mapping[str, type], where: str) -> None:
    for key, value in table.items():
        if key not in types:
            raise _fail(source, f"unknown key '{where}{key}'", f"use one of {', '.join(types)}")
        expected = types[key]
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise _fail(source, f"'{where}{key}' must be {expected.__name__} (got {value!r})", "fix the value")


def _parse_runtime(source: Path, runtime: str, table: Any) -> RuntimeTarget:
    where = f"runtimes.{runtime}."
    if runtime not in BACKENDS:
        raise _fail(source, f"unknown runtime '{runtime}'", f"use one of {', '.join(BACKENDS)}")
    if not isinstance(table, dict):
        raise _fail(source, f"'runtimes.{runtime}' must be a table", f"write [runtimes.{runtime}]")
    _check_types(source, table, {"precisions": list, "options": dict}, where)
    spec = BACKENDS[runtime]
    precisions = table.get("precisions")
    if not precisions:
        raise _fail(source, f"'{where}precisions' is missing or empty",
                    f"list some of {', '.join(spec.precisions)}")
    unknown = [p for p in precisions if p not in spec.precisions]
    if unknown or len(set(precisions)) != len(precisions):
        raise _fail(source, f"'{where}precisions' has unknown or repeated entries {unknown or precisions}",
                    f"use each of {', '.join(spec.precisions)} at most once")
    options = table.get("options", {})
    if spec.option_types is not None:
        _check_types(source, options, spec.option_types, f"{where}options.")
    problem = spec.option_problem(options, f"{where}options.")
    if problem:
        raise _fail(source, *problem)
    return RuntimeTarget(precisions=tuple(precisions), options=options)


def parse_target(source: Path, data: Mapping[str, Any]) -> Target:
    """Validate a target's TOML content; every problem names the key and the fix."""
    _check_types(source, data, _TOP_LEVEL_TYPES, "")
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise _fail(source, f"missing key(s) {', '.join(missing)}", "add them (see targets/x86.toml)")
    name = data.get("name", source.stem)
    if not _NAME_PATTERN.fullmatch(name):
        raise _fail(source, f"'name' {name!r} is not usable as a directory name", "use letters, digits, . _ -")
    if data["arch"] not in ARCHES:
        raise _fail(source, f"'arch' is {data['arch']!r}", f"use one of {', '.join(ARCHES)}")
    for key in ("threads", "image_batch", "text_batch"):
        if data[key] < 1:
            raise _fail(source, f"'{key}' is {data[key]}", "use a positive integer")
    if not data["runtimes"]:
        raise _fail(source, "'runtimes' is empty", f"add a table such as [runtimes.{next(iter(BACKENDS))}] (runtimes: {', '.join(BACKENDS)})")
    runtimes = {runtime: _parse_runtime(source, runtime, table)
                for runtime, table in data["runtimes"].items()}
    return Target(name=name, description=data.get("description", ""), arch=data["arch"], threads=data["threads"],
                  image_batch=data["image_batch"], text_batch=data["text_batch"], runtimes=runtimes,
                  source=str(source))


def read_target_file(path: Path) -> Target:
    """Read and validate one target file."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as error:
        raise UserError(f"cannot read target file {path} ({error.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise _fail(Path(path), f"not valid TOML ({error})", "fix the syntax") from None
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
