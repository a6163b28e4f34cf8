"""INT4 weight-only compression keeps layers with a constant input FP32 (OpenVINO 2026.4 CPU cannot compile them).

A reduced attention-pool (MAP) head as in SigLIP: a learned latent broadcast to the batch, projected by a
``query`` linear layer, attends over projected patch tokens. With a static batch the query layer's input is a
constant, and OpenVINO's CPU plugin rejects the int4-compressed layer at compile time.
"""
from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

from lpmr_edge.quantize import QuantizationOptions, compress_openvino_weights, constant_input_layers

WIDTH, TOKENS = 64, 4


def _attention_pool() -> ov.Model:
    """tokens (batch, TOKENS, WIDTH) -> pooled (batch, 1, WIDTH) through a SigLIP-style MAP head."""
    rng = np.random.default_rng(0)

    def linear(value: ov.Output, name: str) -> ov.Node:
        weight = ops.constant((rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32))
        layer = ops.matmul(value, weight, False, True)
        layer.set_friendly_name(name)
        return layer

    tokens = ops.parameter([-1, TOKENS, WIDTH], np.float32, name="tokens")
    batch = ops.gather(ops.shape_of(tokens), ops.constant(np.array([0])), ops.constant(np.array(0)))
    latent = ops.broadcast(ops.constant(rng.standard_normal((1, 1, WIDTH)).astype(np.float32)),
                           ops.concat([batch, ops.constant(np.array([1, WIDTH]))], 0))
    hidden = linear(tokens, "embed")
    keys = linear(hidden, "key")
    attention = ops.softmax(ops.matmul(linear(latent, "query"), keys, False, True), -1)
    pooled = linear(ops.matmul(attention, hidden, False, False), "proj")
    return ov.Model([pooled.output(0)], [tokens])


def _compile(model: ov.Model) -> ov.CompiledModel:
    model.reshape({"tokens": [1, TOKENS, WIDTH]})
    return ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


def test_only_the_layer_on_the_broadcast_latent_has_a_constant_input():
    assert constant_input_layers(_attention_pool()) == ["query"]


def test_int4_keeps_the_constant_input_layer_fp32_and_the_static_batch_model_compiles_with_parity():
    compressed, kept_fp32 = compress_openvino_weights(_attention_pool(), 4, QuantizationOptions(group_size=32))
    assert kept_fp32 == ["query"]
    tokens = np.random.default_rng(1).standard_normal((1, TOKENS, WIDTH)).astype(np.float32)
    reference = _compile(_attention_pool())(tokens)[0].ravel()
    pooled = _compile(compressed)(tokens)[0].ravel()
    assert float(reference @ pooled / np.linalg.norm(reference) / np.linalg.norm(pooled)) > 0.98


def test_int8_weight_only_keeps_every_layer_compressed():
    assert compress_openvino_weights(_attention_pool(), 8, QuantizationOptions())[1] == []


def test_openvino_still_rejects_int4_weights_on_a_constant_input():
    """The workaround's reason: when this fails, OpenVINO compiles such layers and the rule can go."""
    import nncf

    compressed = nncf.compress_weights(_attention_pool(), mode=nncf.CompressWeightsMode.INT4_ASYM, group_size=32)
    with pytest.raises(RuntimeError, match="is_static"):
        _compile(compressed)
