"""What `lpmr-edge tune` tries, as data per runtime, and one configuration (``TrialConfig``).

A configuration is a runtime, an export precision and the ``QuantizationOptions`` fields that differ from
the defaults (the *knobs*). The search has three stages:

  knobs        ``SearchSpace.knobs[runtime]``: one knob changed at a time from the uniform INT8 defaults
               (the defaults themselves are the uniform INT8 configuration);
  accuracy-control  (OpenVINO) NNCF's accuracy control with the objective as its validation function
               reverts operations of the best knob configuration to FP (``lpmr_edge.tune.control``);
  sensitivity  the best knob configuration on validation with one image-tower block kept in floating point
               each (per-block sensitivity of the objective);
  combined     the best knob configuration with the ``combine`` blocks whose FP version helped most.

Uniform baselines (fp32, int8 and int4-w where the runtime has it) are evaluated like any trial and marked.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from lpmr_edge.backends import BACKENDS
from lpmr_edge.errors import UserError
from lpmr_edge.manifest import sha256_json
from lpmr_edge.quantize import QuantizationOptions

if TYPE_CHECKING:
    from lpmr_edge.models import ClipModel

UNIFORM_PRECISIONS = ("fp32", "int8", "int4-w")
TUNED_PRECISION = {"openvino": "int8", "executorch": "int8"}
# NNCF ignored-scope patterns over OpenVINO node names of converted open_clip towers
IMAGE_PROJECTION = r"^__module\.clip\.visual/aten::matmul/"  # the image tower's final projection
ATTENTION_MATMULS = r".*/aten::_native_multi_head_attention/MatMul(_\d+)?$"  # every MatMul inside attention
PATTERN_NAMES = {IMAGE_PROJECTION: "image-projection", ATTENTION_MATMULS: "attention-matmuls"}
BLOCK_PATTERN = r"clip\.visual\.transformer\.resblocks\.\d+"  # image-tower transformer blocks (open_clip ViTs)
KNOBS = ("calibration", "subset_size", "preset", "transformer", "smooth_quant_alpha", "fast_bias_correction",
         "keep_fp", "ignored_patterns", "observer")
Knobs = Mapping[str, Any]


@dataclass(frozen=True)
class TrialConfig:
    """One configuration: runtime, precision and knobs (``QuantizationOptions`` fields off their defaults)."""

    runtime: str
    precision: str
    knobs: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.runtime not in BACKENDS or self.precision not in BACKENDS[self.runtime].precisions:
            raise UserError(f"cannot tune {self.runtime} at precision '{self.precision}'")
        unknown = [name for name, _ in self.knobs if name not in KNOBS]
        if unknown:
            raise UserError(f"unknown quantization knob(s) {', '.join(unknown)}; use {', '.join(KNOBS)}")
        self.options  # noqa: B018  (validates the values)

    @classmethod
    def make(cls, runtime: str, precision: str, knobs: Knobs | None = None) -> TrialConfig:
        """A configuration from a knob mapping (sequences become tuples; defaults are dropped)."""
        defaults = QuantizationOptions()
        normal = {name: tuple(value) if isinstance(value, (list, tuple)) else value
                  for name, value in (knobs or {}).items()}
        return cls(runtime, precision, tuple(sorted((name, value) for name, value in normal.items()
                                                    if getattr(defaults, name, object()) != value)))

    @property
    def options(self) -> QuantizationOptions:
        """The quantization options of this configuration."""
        return replace(QuantizationOptions(), **dict(self.knobs))

    @property
    def uniform(self) -> bool:
        """True for the uniform baselines (default options at fp32, int8 or int4-w)."""
        return not self.knobs and self.precision in UNIFORM_PRECISIONS

    def with_knobs(self, **changes: Any) -> TrialConfig:
        """This configuration with some knobs changed."""
        return TrialConfig.make(self.runtime, self.precision, {**dict(self.knobs), **changes})

    def describe(self) -> dict[str, Any]:
        """JSON form (what the trial key hashes, and what reproduces the configuration)."""
        return {"runtime": self.runtime, "precision": self.precision,
                "knobs": {name: list(value) if isinstance(value, tuple) else value for name, value in self.knobs}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrialConfig:
        """Inverse of ``describe``."""
        return cls.make(data["runtime"], data["precision"], data.get("knobs", {}))

    @property
    def label(self) -> str:
        """Short human label, e.g. ``openvino-int8 smooth_quant_alpha=-1``."""
        def short(name: str, value: Any) -> str:
            if name == "ignored_patterns":
                named = [PATTERN_NAMES[pattern] for pattern in value if pattern in PATTERN_NAMES]
                return "+".join([*named, *([f"{len(value) - len(named)}-ops"] if len(value) > len(named) else [])])
            if isinstance(value, tuple):
                return "+".join(re.sub(r"^clip\.visual\.transformer\.resblocks\.", "block", str(v)) for v in value)
            return f"{value:g}" if isinstance(value, float) else str(value)

        knobs = " ".join(f"{name}={short(name, value)}" for name, value in self.knobs)
        return f"{self.runtime}-{self.precision}{' ' + knobs if knobs else ''}"

    @property
    def key(self) -> str:
        """Stable identity of the configuration (names its trial)."""
        return sha256_json(self.describe())[:16]


def _openvino_knobs() -> tuple[tuple[str, Knobs], ...]:
    return (("int8", {}), ("int8", {"smooth_quant_alpha": -1.0}), ("int8", {"smooth_quant_alpha": 0.5}),
            ("int8", {"transformer": False}), ("int8", {"fast_bias_correction": False}),
            ("int8", {"subset_size": 100}), ("int8", {"ignored_patterns": (IMAGE_PROJECTION,)}),
            ("int8", {"ignored_patterns": (ATTENTION_MATMULS,)}))


def _executorch_knobs() -> tuple[tuple[str, Knobs], ...]:
    return (("int8", {}), ("int8", {"observer": "minmax"}), ("int8", {"subset_size": 100}), ("int8-dyn", {}))


@dataclass(frozen=True)
class SearchSpace:
    """Per runtime: the knob configurations of stage 1 as (precision, knobs); ``accuracy_control`` and
    ``sensitivity`` turn those stages on; ``combine`` is how many helpful blocks the combined stage keeps in FP."""

    knobs: Mapping[str, Sequence[tuple[str, Knobs]]] = field(default_factory=lambda: {
        "openvino": _openvino_knobs(), "executorch": _executorch_knobs()})
    accuracy_control: bool = True
    sensitivity: bool = True
    combine: int = 2

    def knob_configs(self, runtime: str) -> list[TrialConfig]:
        """Stage 1 of ``runtime``."""
        if runtime not in self.knobs:
            raise UserError(f"no search space for runtime '{runtime}'; use one of {', '.join(self.knobs)}")
        return [TrialConfig.make(runtime, precision, knobs) for precision, knobs in self.knobs[runtime]]

    def describe(self) -> dict[str, Any]:
        """JSON form for the tune manifest."""
        return {"knobs": {runtime: [TrialConfig.make(runtime, p, k).describe() for p, k in entries]
                          for runtime, entries in self.knobs.items()},
                "accuracy_control": self.accuracy_control, "sensitivity": self.sensitivity, "combine": self.combine}


def uniform_configs(runtime: str) -> list[TrialConfig]:
    """The uniform baselines a runtime can export."""
    return [TrialConfig(runtime, precision) for precision in UNIFORM_PRECISIONS
            if precision in BACKENDS[runtime].precisions]


def sensitivity_blocks(clip: ClipModel) -> list[str]:
    """The image tower's transformer blocks (module paths as ``keep_fp`` takes them), in order."""
    return [name for name, _ in clip.image_tower().named_modules() if re.fullmatch(BLOCK_PATTERN, name)]


def block_configs(best: TrialConfig, blocks: Sequence[str]) -> list[TrialConfig]:
    """Stage 2: ``best`` with each block (added to its own ``keep_fp``) kept in floating point."""
    kept = dict(best.knobs).get("keep_fp", ())
    return [best.with_knobs(keep_fp=tuple(sorted({*kept, block}))) for block in blocks if block not in kept]
