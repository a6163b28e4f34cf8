"""What OpenVINO's CPU plugin executes in integer arithmetic for an NNCF INT8 ViT image tower (default options).

The INT8 speed-up rests on these facts (issue 16, item 4; ``scripts/profile_openvino.py`` gives the timings):
every linear layer and the patch convolution take int8 activations and weights, attention's two activation
matmuls run inside an int8 attention kernel, and no FakeQuantize is left to emulate quantization in float.
"""
from __future__ import annotations

import numpy as np
import pytest

from lpmr_edge.doctor import cpu_features, read_cpuinfo
from lpmr_edge.quantize import QuantizationOptions, quantize_openvino
from lpmr_edge.runtimes.openvino.export import convert_tower
from lpmr_edge.runtimes.openvino.loader import executed_layers

pytestmark = pytest.mark.slow  # one NNCF quantization (~20 s on 2 cores)
# The plugin's int8 kernels for linear layers and attention, as on AVX-512 VNNI CPUs (on an AVX2-only Zen 3,
# attention's matmuls run as MatMul nodes and no int8 attention kernel is used)
AVX512_VNNI_KERNELS = pytest.mark.skipif(
    not cpu_features(read_cpuinfo())["AVX-512 VNNI"],
    reason="describes OpenVINO's int8 kernels on AVX-512 VNNI CPUs; this CPU has no AVX-512 VNNI")

INTEGER = {"u8", "i8"}
X86_INT8_PROPERTIES = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 2}


@pytest.fixture(scope="module")
def runtime_graph(tiny_random):
    """The compiled execution graph of the tiny ViT image tower quantized with the default options (batch 1)."""
    import openvino as ov

    size = tiny_random.image_size
    samples = np.random.default_rng(0).standard_normal((16, 3, size, size)).astype(np.float32)
    model = quantize_openvino(convert_tower(tiny_random, "image"), samples, QuantizationOptions(subset_size=16))
    model.reshape({"images": [1, 3, size, size]})
    return ov.Core().compile_model(model, "CPU", X86_INT8_PROPERTIES)


def _layers(compiled, layer_type: str) -> list[tuple[str, str]]:
    """(runtime precision, original layer names) of each node of ``layer_type`` in the execution graph."""
    found = []
    for node in compiled.get_runtime_model().get_ordered_ops():
        info = node.get_rt_info()
        if info["layerType"].astype(str) == layer_type:
            found.append((info["runtimePrecision"].astype(str), info["originalLayersNames"].astype(str)))
    return found


@pytest.fixture(scope="module")
def blocks(tiny_random) -> int:
    """Transformer blocks of the image tower."""
    return len(tiny_random.image_tower().clip.visual.transformer.resblocks)


@AVX512_VNNI_KERNELS
def test_every_linear_layer_and_the_patch_convolution_run_int8(runtime_graph, blocks: int):
    layers = executed_layers(runtime_graph)
    assert set(layers) == {"FullyConnected", "Convolution"}
    linear = 6 * blocks + 1  # per block: q, k, v, out_proj, c_fc, c_proj; then the final projection
    assert sum(layers["FullyConnected"].values()) == linear and sum(layers["Convolution"].values()) == 1
    pairs = {pair for counts in layers.values() for pair in counts}
    assert all(set(pair.split("/")) <= INTEGER for pair in pairs), pairs


@AVX512_VNNI_KERNELS
def test_attention_matmuls_and_softmax_run_in_one_int8_kernel_per_block(runtime_graph, blocks: int):
    attention = [precision for precision, names in _layers(runtime_graph, "Subgraph") if "Softmax" in names]
    assert attention == ["i8"] * blocks


def test_no_fake_quantize_is_left_to_run_in_float(runtime_graph):
    assert _layers(runtime_graph, "FakeQuantize") == []
