"""Option types shared by every command: each checks its value at the CLI boundary, before anything is
loaded, and a bad value becomes a one-line ``error:`` naming the option, the problem and the fix.

Use them as ``typer.Option(parser=POSITIVE_INT)``; a value that is already typed (a default) passes
through the same check.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydantic_core import PydanticCustomError

from lpmr_edge.backends import BACKENDS, RUNNER_KINDS, RUNTIME_NAMES
from lpmr_edge.errors import UserError
from lpmr_edge.pick import objective_metric, parse_margin
from lpmr_edge.quantize import PRESETS

SEED_LIMIT = 2**32  # numpy's seed range


class Checked:
    """A Typer ``parser``: ``parse(value)``, whose ValueError or UserError Typer reports (through pydantic, as
    the message itself) as ``Invalid value for '--option': <message>``."""

    def __init__(self, name: str, parse: Callable[[Any], Any]) -> None:
        self.__name__ = name  # shown as the option's type
        self.parse = parse

    def __call__(self, value: Any) -> Any:
        try:
            return self.parse(value)
        except (ValueError, UserError) as error:
            raise PydanticCustomError("lpmr_edge_value", "{message}", {"message": str(error)}) from None


def whole_number(minimum: int, example: int, below: int | None = None) -> Checked:
    """Integers ``minimum <= n < below``."""
    def parse(value: Any) -> int:
        try:
            number = int(str(value).strip(), 10)
        except ValueError:
            raise ValueError(f"'{value}' is not a whole number; give one such as {example}") from None
        if number < minimum or (below is not None and number >= below):
            allowed = f"from {minimum} to {below - 1}" if below is not None else f"{minimum} or more"
            raise ValueError(f"{number} is out of range; give a whole number {allowed} (e.g. {example})")
        return number

    return Checked("integer", parse)


def real_number(low: float, high: float, example: float, low_open: bool = False, high_open: bool = False,
                also: tuple[float, ...] = ()) -> Checked:
    """Finite floats in the interval from ``low`` to ``high`` (open ends where told), or one of ``also``."""
    def parse(value: Any) -> float:
        try:
            number = float(str(value).strip())
        except ValueError:
            raise ValueError(f"'{value}' is not a number; give one such as {example}") from None
        inside = math.isfinite(number) and (low < number if low_open else low <= number) and \
            (number < high if high_open else number <= high)
        if not (inside or number in also):
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            extra = "".join(f" or {value:g}" for value in also)
            raise ValueError(f"{number:g} is out of range; give a number in {interval}{extra} (e.g. {example})")
        return number

    return Checked("number", parse)


def one_of(names: Iterable[str] | Callable[[], Iterable[str]], what: str) -> Checked:
    """One of a set of names (or of the names a callable returns when a value is checked: for registries
    that live in modules too heavy to import before a command runs)."""
    def parse(value: Any) -> str:
        allowed = tuple(names() if callable(names) else names)
        if value not in allowed:
            raise ValueError(f"unknown {what} '{value}'; use one of {', '.join(allowed)}")
        return value

    return Checked(what, parse)


def _existing(kind: str) -> Callable[[Any], Path]:
    is_kind = {"directory": Path.is_dir, "file": Path.is_file, "path": Path.exists}[kind]

    def parse(value: Any) -> Path:
        path = Path(value)
        if not str(value).strip():
            raise ValueError(f"an empty path; give the {kind}")
        if not is_kind(path):
            problem = "does not exist" if not path.exists() else f"is not a {kind}"
            raise ValueError(f"{path} {problem}; give an existing {kind}")
        return path

    return parse


def _output(kind: str) -> Callable[[Any], Path]:
    def parse(value: Any) -> Path:
        path = Path(value)
        if not str(value).strip():
            raise ValueError(f"an empty path; give the output {kind}")
        if path.exists() and path.is_dir() != (kind == "directory"):
            raise ValueError(f"{path} exists and is not a {kind}; choose another path")
        blocking = next((parent for parent in path.parents if parent.exists() and not parent.is_dir()), None)
        if blocking is not None:
            raise ValueError(f"{blocking} is a file, so {path} cannot be created; choose another path")
        return path

    return parse


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}


def _duration(value: Any) -> float:
    """``90s``, ``30m``, ``2h``, ``1h30m`` (or plain seconds) -> seconds (> 0)."""
    text = str(value).strip().lower()
    parts = re.findall(r"(\d+(?:\.\d*)?)([smh])", text)
    if re.fullmatch(r"\d+(?:\.\d*)?", text):
        parts = [(text, "s")]
    elif not parts or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"'{value}' is not a duration; write e.g. 90s, 30m, 2h or 1h30m")
    seconds = sum(float(number) * DURATION_UNITS[unit] for number, unit in parts)
    if not 0 < seconds < math.inf:
        raise ValueError(f"'{value}' must be a positive duration (e.g. 30m)")
    return seconds


def _model_spec(value: Any) -> str:
    from lpmr_edge.models import split_spec

    split_spec(str(value))
    return str(value)


def _support() -> Any:
    from lpmr_edge import support

    return support


def _logit_scale(value: Any) -> str | float:
    if value == "model":
        return value
    try:
        scale = float(str(value))
    except ValueError:
        raise ValueError(f"'{value}' is neither 'model' nor a number; give e.g. 100") from None
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"{value} must be a positive number (e.g. 100) or 'model'")
    return scale


def _ray_address(value: Any) -> str:
    if value != "auto" and not re.fullmatch(r"(ray://)?[A-Za-z0-9._-]+:[0-9]{1,5}", str(value)):
        raise ValueError(f"'{value}' is not a Ray address; give HOST:PORT, ray://HOST:PORT or auto")
    return str(value)


def _bench_towers() -> tuple[str, ...]:
    from lpmr_edge.bench import BENCH_TOWERS

    return BENCH_TOWERS


def _sweep_engines() -> tuple[str, ...]:
    from lpmr_edge.sweep.engines import ENGINES

    return ENGINES


def _sweep_formats() -> tuple[str, ...]:
    from lpmr_edge.sweep.results import FORMATS

    return FORMATS


def _standins() -> Iterable[str]:
    from lpmr_edge.models.bundled import BUNDLED_MODELS

    return BUNDLED_MODELS


def _suite(value: Any) -> str:
    from lpmr_edge.suite import BUILTIN_SUITES

    if value not in BUILTIN_SUITES and not Path(value).is_file():
        raise ValueError(f"unknown suite '{value}'; use {', '.join(BUILTIN_SUITES)} or a path to a suite .toml file")
    return str(value)


def _target(value: Any) -> str:
    from lpmr_edge.targets import load_target

    load_target(str(value))
    return str(value)


def _device(value: Any) -> str:
    from lpmr_edge.devices.kinds import parse_device

    parse_device(str(value))
    return str(value)


def _dataset(value: Any) -> str:
    from lpmr_edge.data.registry import check_dataset_name

    check_dataset_name(str(value))
    return str(value)


POSITIVE_INT = whole_number(1, 64)
SEED = whole_number(0, 0, below=SEED_LIMIT)
RESAMPLES = whole_number(10, 1000)
POSITIVE_SECONDS = real_number(0, 1e9, 20, low_open=True)
DURATION = Checked("duration", _duration)
LIMIT_MS = real_number(0, 1e9, 20)
LIMIT_MB = real_number(0, 1e9, 50)
PERCENTAGE_POINTS = real_number(0, 100, 1)
FRACTION = real_number(0, 1, 0.1, low_open=True, high_open=True)
SHARE = real_number(0, 1, 1, low_open=True)
SMOOTH_QUANT_ALPHA = real_number(0, 1, 0.95, also=(-1,))
GROUP_SIZE = Checked("integer", lambda value: -1 if str(value).strip() == "-1" else POSITIVE_INT.parse(value))
PRESET = one_of(PRESETS, "preset")
OBJECTIVE = Checked("objective", lambda value: objective_metric(str(value)) and str(value))
MARGIN = Checked("METRIC=VALUE", lambda value: parse_margin(str(value)) and str(value))
EXPORT_RUNTIME = one_of(BACKENDS, "runtime")
RUNNER = one_of(RUNNER_KINDS, "runner")
RUNTIME = one_of(RUNTIME_NAMES, "runtime")
PRECISION = one_of(sorted({precision for spec in BACKENDS.values() for precision in spec.precisions}), "precision")
TOWER = one_of(_bench_towers, "tower")
ENGINE = one_of(_sweep_engines, "engine")
EXPORT_FORMAT = one_of(_sweep_formats, "format")
STANDIN = one_of(_standins, "bundled stand-in")
RAY_ADDRESS = Checked("address", _ray_address)
EXISTING_DIR = Checked("directory", _existing("directory"))
EXISTING_FILE = Checked("file", _existing("file"))
EXISTING_PATH = Checked("path", _existing("path"))
OUTPUT_DIR = Checked("directory", _output("directory"))
OUTPUT_FILE = Checked("file", _output("file"))
MODEL_SPEC = Checked("model", _model_spec)
ARCHITECTURE = Checked("architecture", lambda value: _model_spec(_support().model_spec(str(value))) and str(value))
SUPPORT_CELL = Checked("RUNTIME:PRECISION", lambda value: _support().parse_cell(str(value)) and str(value))
LOGIT_SCALE = Checked("scale", _logit_scale)
SUITE = Checked("suite", _suite)
TARGET = Checked("target", _target)
DEVICE = Checked("device", _device)
DATASET = Checked("dataset", _dataset)


def _tune_objective(value: Any) -> str:
    from lpmr_edge.tune.verdict import objective_spec

    objective_spec(str(value))
    return str(value)


TUNE_OBJECTIVE = Checked("objective", _tune_objective)
LATENCY_RATIO = real_number(0, 1e6, 1.1, low_open=True)
