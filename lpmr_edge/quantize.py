"""Calibration inputs and NNCF post-training quantization settings, shared by every backend.

The same ``CalibrationInputs`` (images preprocessed with the model's own transform, and prompt tokens
from the calibration set's class names x templates) feed OpenVINO's NNCF PTQ and ExecuTorch's PT2E.
"""
from __future__ import annotations

import contextlib
import logging
import re
import sys
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from lpmr_edge.data import ImageDataset, load_dataset, preprocess_batches
from lpmr_edge.errors import UserError

if TYPE_CHECKING:
    import openvino as ov

    from lpmr_edge.models import ClipModel

PRESETS = ("mixed", "performance")
OBSERVERS = ("histogram", "minmax")
PREPROCESS_BATCH = 64


@dataclass(frozen=True)
class QuantizationOptions:
    """Post-training quantization settings; the defaults suit CLIP ViTs.

    ``smooth_quant_alpha`` applies to MatMuls (a negative value disables SmoothQuant);
    ``group_size`` and ``ratio`` apply to INT4 weight-only compression (``ratio`` of the layers get INT4,
    the rest INT8). ``keep_fp`` names modules of a tower (``named_modules`` paths of the exported tower, e.g.
    ``clip.visual.transformer.resblocks.3``) left in floating point with everything inside them (OpenVINO: an
    NNCF ignored scope; ExecuTorch: the XNNPACK quantizer's module-name setting); ``ignored_patterns`` are
    further NNCF ignored-scope regular expressions over OpenVINO node names; ``observer`` is the activation
    observer of ExecuTorch's static INT8 (histogram or min/max).
    """

    calibration: str = "calib:fmnist-train-300"
    subset_size: int = 300
    preset: str = "mixed"
    transformer: bool = True
    smooth_quant_alpha: float = 0.95
    fast_bias_correction: bool = True
    group_size: int = 128
    ratio: float = 1.0
    seed: int = 0
    keep_fp: tuple[str, ...] = ()
    ignored_patterns: tuple[str, ...] = ()
    observer: str = "histogram"

    def __post_init__(self) -> None:
        if self.subset_size < 1:
            raise UserError(f"subset size {self.subset_size} must be >= 1; pass e.g. --subset-size 300")
        if self.preset not in PRESETS:
            raise UserError(f"unknown quantization preset '{self.preset}'; use one of {', '.join(PRESETS)}")
        if self.smooth_quant_alpha > 1:
            raise UserError(f"SmoothQuant alpha {self.smooth_quant_alpha} must be in [0, 1] (or -1 to disable)")
        if self.group_size < 1 and self.group_size != -1:
            raise UserError(f"group size {self.group_size} must be positive (or -1 for per-channel)")
        if not 0 < self.ratio <= 1:
            raise UserError(f"ratio {self.ratio} must be in (0, 1]: the share of layers compressed to INT4")
        if self.observer not in OBSERVERS:
            raise UserError(f"unknown activation observer '{self.observer}'; use one of {', '.join(OBSERVERS)}")
        for pattern in self.ignored_patterns:
            try:
                re.compile(pattern)
            except re.error as error:
                raise UserError(f"ignored-scope pattern '{pattern}' is not a regular expression ({error})") from None

    @property
    def openvino_ignored_patterns(self) -> tuple[str, ...]:
        """NNCF ignored-scope patterns over OpenVINO node names (``__module.<path>/...`` after conversion):
        every node inside a ``keep_fp`` module, then ``ignored_patterns``."""
        return (*(rf"^__module\.{re.escape(path)}[./]" for path in self.keep_fp), *self.ignored_patterns)

    def describe(self) -> dict[str, Any]:
        """Manifest entry."""
        return asdict(self)


@dataclass(frozen=True, eq=False)
class CalibrationInputs:
    """Model-ready calibration data and the hash of the images and prompts it came from."""

    name: str
    sha256: str
    images: np.ndarray
    tokens: np.ndarray
    class_names: tuple[str, ...] = ()
    templates: tuple[str, ...] = ()
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def describe(self) -> dict[str, Any]:
        """Manifest entry: name, content hash and sample counts."""
        return {"name": self.name, "sha256": self.sha256, "n": len(self.images), "n_prompts": len(self.tokens)}


def seeded_subset(count: int, size: int, seed: int) -> np.ndarray:
    """Sorted indices of ``size`` of ``count`` items drawn with ``seed`` (all of them if ``size >= count``)."""
    if size >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size, replace=False))


def calibration_dataset(options: QuantizationOptions) -> ImageDataset:
    """The calibration images to use: a seeded subset of ``options.calibration`` (all of it if small enough)."""
    dataset = load_dataset(options.calibration)
    if not dataset.class_names or not dataset.templates:
        raise UserError(f"calibration set '{options.calibration}' has no class names or prompt templates; "
                        "use a labelled folder (one sub-folder per class)")
    if options.subset_size >= len(dataset):
        return dataset
    return dataset.subset(seeded_subset(len(dataset), options.subset_size, options.seed))


def load_calibration_inputs(clip: ClipModel, options: QuantizationOptions) -> CalibrationInputs:
    """Preprocess the calibration images with the model's transform and tokenize the class prompts."""
    dataset = calibration_dataset(options)
    images = np.concatenate(list(preprocess_batches(dataset, clip.preprocess, PREPROCESS_BATCH)))
    prompts = [template.format(name) for name in dataset.class_names for template in dataset.templates]
    chosen = seeded_subset(len(prompts), options.subset_size, options.seed)
    return CalibrationInputs(name=dataset.name, sha256=dataset.sha256, images=images,
                             tokens=clip.tokenize([prompts[index] for index in chosen]),
                             class_names=dataset.class_names, templates=dataset.templates, labels=dataset.labels)


def _nncf() -> Any:
    import nncf

    nncf.set_log_level(logging.ERROR)
    return nncf


def _ptq_settings(options: QuantizationOptions) -> dict[str, Any]:
    """The keyword arguments ``nncf.quantize`` and ``nncf.quantize_with_accuracy_control`` share."""
    nncf = _nncf()
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
    )

    patterns = list(options.openvino_ignored_patterns)
    return {"preset": nncf.QuantizationPreset(options.preset), "fast_bias_correction": options.fast_bias_correction,
            "model_type": nncf.ModelType.TRANSFORMER if options.transformer else None,
            "ignored_scope": nncf.IgnoredScope(patterns=patterns, validate=False) if patterns else None,
            "advanced": AdvancedQuantizationParameters(
                smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=options.smooth_quant_alpha))}


def quantize_openvino(model: ov.Model, samples: np.ndarray, options: QuantizationOptions) -> ov.Model:
    """Static W8A8 post-training quantization of an OpenVINO model (inputs: one sample per batch)."""
    nncf = _nncf()
    settings = _ptq_settings(options)
    with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars must not pollute --json output
        return nncf.quantize(model, nncf.Dataset([sample[None] for sample in samples]), subset_size=len(samples),
                             advanced_parameters=settings.pop("advanced"), **settings)


def quantize_openvino_with_control(model: ov.Model, samples: np.ndarray, options: QuantizationOptions,
                                   validation: list[Any], validation_fn: Any, max_drop: float,
                                   max_iterations: int) -> ov.Model:
    """``nncf.quantize_with_accuracy_control``: W8A8 PTQ as ``quantize_openvino``, then quantized operations
    reverted to floating point (at most ``max_iterations`` rounds) until ``validation_fn(compiled, items)``
    (higher is better) is within ``max_drop`` of the FP32 model's; ``validation`` items are ``(input, label)``."""
    nncf = _nncf()
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    settings = _ptq_settings(options)
    with contextlib.redirect_stdout(sys.stderr):
        return nncf.quantize_with_accuracy_control(
            model, nncf.Dataset([sample[None] for sample in samples]),
            nncf.Dataset(validation, lambda item: item[0]), validation_fn, max_drop=max_drop,
            subset_size=len(samples), advanced_quantization_parameters=settings.pop("advanced"),
            advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(max_num_iterations=max_iterations),
            **settings)


WEIGHTED_OPS = ("MatMul", "Convolution")
CONSTANT_INPUT_NOTE = ("kept FP32: their input is a learned constant broadcast to the batch (e.g. SigLIP's attention-pool "
                       "query); OpenVINO 2026.4's CPU plugin cannot compile such a layer with int4 weights "
                       "(Check 'm_element_type.is_static()' failed at make_tensor.cpp)")


def constant_input_layers(model: ov.Model) -> list[str]:
    """Names of the weighted layers whose input values do not depend on the model's input values (at most on its
    batch size, through ``ShapeOf``): e.g. a linear layer applied to a learned latent expanded to the batch."""
    data_dependent: set[str] = set()
    layers = []
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Parameter" or (op.get_type_name() != "ShapeOf" and any(
                value.get_node().get_name() in data_dependent for value in op.input_values())):
            data_dependent.add(op.get_name())
        elif op.get_type_name() in WEIGHTED_OPS:
            layers.append(op.get_friendly_name())
    return layers


def compress_openvino_weights(model: ov.Model, bits: int, options: QuantizationOptions) -> tuple[ov.Model, list[str]]:
    """Data-free weight-only compression: INT8 asymmetric per channel, or INT4 asymmetric per group.

    Returns the model and the layers kept FP32: for INT4, the ``constant_input_layers`` (``CONSTANT_INPUT_NOTE``).
    """
    nncf = _nncf()
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    kept_fp32 = constant_input_layers(model) if bits == 4 else []
    settings = {"mode": nncf.CompressWeightsMode.INT8_ASYM} if bits == 8 else {
        "mode": nncf.CompressWeightsMode.INT4_ASYM, "group_size": options.group_size, "ratio": options.ratio,
        "advanced_parameters": AdvancedCompressionParameters(group_size_fallback_mode=GroupSizeFallbackMode.ADJUST)}
    if kept_fp32:
        settings["ignored_scope"] = nncf.IgnoredScope(names=kept_fp32)
    with contextlib.redirect_stdout(sys.stderr):
        return nncf.compress_weights(model, **settings), kept_fp32


def openvino_quantization_record(precision: str, options: QuantizationOptions) -> dict[str, Any]:
    """The NNCF parameters actually used for an OpenVINO precision (manifest ``quantization``)."""
    if precision == "int8":
        return {"method": "nncf.quantize (static post-training, W8A8)", "preset": options.preset,
                "model_type": "transformer" if options.transformer else None, "subset_size": options.subset_size,
                "smooth_quant_alpha": options.smooth_quant_alpha,
                "bias_correction": "fast" if options.fast_bias_correction else "full", "seed": options.seed,
                "ignored_scope_patterns": list(options.openvino_ignored_patterns)}
    if precision == "int8-w":
        return {"method": "nncf.compress_weights (weight-only, data-free)", "mode": "int8_asym",
                "granularity": "per-channel"}
    if precision == "int4-w":
        return {"method": "nncf.compress_weights (weight-only, data-free)", "mode": "int4_asym",
                "group_size": options.group_size, "group_size_fallback": "adjust", "ratio": options.ratio,
                "backup_mode": "int8_asym (embeddings, last layer, layers outside ratio)"}
    if precision == "fp16":
        return {"method": "FP16 weight storage (openvino.save_model compress_to_fp16)"}
    return {"method": "none (fp32 weights)"}
