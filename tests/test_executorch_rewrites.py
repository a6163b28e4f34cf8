"""Each rewrite into XNNPACK ops: a tiny module using the op lowers with every node delegated and computes
what torch computes (fp32, within float rounding; INT8 within the quantized artifacts' tolerance)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lpmr_edge.artifact import feature_agreement
from lpmr_edge.quantize import QuantizationOptions
from lpmr_edge.runtimes.executorch.export import TOLERANCES, lower_tower, run_program
from lpmr_edge.runtimes.executorch.rewrites import drop_concat_split_round_trips

WIDTH = 8


class ScalarIntOperands(torch.nn.Module):
    """MobileCLIP's re-parameterisable blocks add a Python ``0`` (int64 constant + cast in the edge dialect)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + 0) * 2 - 1


class UnbindAndSqueeze(torch.nn.Module):
    """MobileCLIP's attention splits q/k/v with ``unbind`` (edge: split + squeeze_copy.dims)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = x.reshape(2, 1, x.shape[0], WIDTH).unbind(0)
        return torch.squeeze(first * second, (0,)).reshape(1, -1, 1, WIDTH).squeeze()


class AttentionPoolHead(torch.nn.Module):
    """RN50's attention pool: a mean over the token dim of a 3D tensor, and biases built by cat + split."""

    def __init__(self) -> None:
        super().__init__()
        self.q_proj, self.k_proj = torch.nn.Linear(WIDTH, WIDTH), torch.nn.Linear(WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(x.shape[0], 2, WIDTH).permute(1, 0, 2)  # (2, batch, width)
        tokens = torch.cat([tokens.mean(dim=0, keepdim=True), tokens], dim=0)
        q_bias, k_bias = torch.cat([self.q_proj.bias, self.k_proj.bias]).split([WIDTH, WIDTH])
        query = torch.nn.functional.linear(tokens, self.q_proj.weight, q_bias)
        key = torch.nn.functional.linear(tokens, self.k_proj.weight, k_bias)
        return (query * key).mean(dim=(0, 2))


class ClassToken(torch.nn.Module):
    """A ViT's class token broadcast to the batch (``expand`` of a weight) and concatenated to the tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.token = torch.nn.Parameter(torch.randn(WIDTH))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(x.shape[0], -1, WIDTH)
        return torch.cat([self.token.view(1, 1, -1).expand(x.shape[0], -1, -1), tokens], dim=1) * 2


@pytest.mark.parametrize("module, columns", [(ScalarIntOperands(), WIDTH), (UnbindAndSqueeze(), 2 * WIDTH),
                                             (AttentionPoolHead(), 2 * WIDTH), (ClassToken(), 2 * WIDTH)],
                         ids=["int-scalar", "unbind-squeeze", "attention-pool", "class-token"])
def test_rewritten_ops_are_delegated_and_exact(module: torch.nn.Module, columns: int) -> None:
    torch.manual_seed(0)
    module = module.eval()
    inputs = np.random.default_rng(0).standard_normal((2, columns)).astype(np.float32)
    lowered = lower_tower(module, torch.from_numpy(inputs), "fp32", inputs, QuantizationOptions(subset_size=1))
    assert lowered.delegation["non_delegated"] == {}
    assert lowered.delegation["delegated"] == lowered.delegation["total"] > 0
    with torch.no_grad():
        expected = module(torch.from_numpy(inputs)).numpy()
    np.testing.assert_allclose(run_program(lowered.program, inputs), expected, rtol=1e-5, atol=1e-6)


class ConcatSplit(torch.nn.Module):
    """Tensors concatenated, then cut: back into the same pieces (a round trip) and into other ones (not one)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = torch.cat([x, x * 2]).chunk(2)
        uneven, rest = torch.cat([x, x * 3]).split([1, 2 * x.shape[0] - 1])
        return first - second + uneven.sum() + rest.sum()


def test_only_concat_split_round_trips_are_dropped() -> None:
    inputs = torch.randn(2, WIDTH)
    graph = torch.export.export(ConcatSplit(), (inputs,)).module()
    expected = graph(inputs)
    drop_concat_split_round_trips(graph)
    targets = [node.target for node in graph.graph.nodes]
    assert (targets.count(torch.ops.aten.cat.default), targets.count(torch.ops.aten.chunk.default)) == (1, 0)
    assert torch.equal(graph(inputs), expected)


class ConvAttentionPool(torch.nn.Module):
    """A convolution feeding open_clip's ``AttentionPool2d`` (RN50's head): q/k/v projections whose biases are
    concatenated for ``multi_head_attention_forward`` and chunked again inside it."""

    def __init__(self) -> None:
        super().__init__()
        from lpmr_edge._compat import import_open_clip

        import_open_clip()
        from open_clip.modified_resnet import AttentionPool2d

        self.conv = torch.nn.Conv2d(3, 2 * WIDTH, 3, padding=1)
        self.pool = AttentionPool2d(spacial_dim=4, embed_dim=2 * WIDTH, num_heads=2, output_dim=WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(x))


def test_attention_pool_int8_is_delegated_and_close_to_torch() -> None:
    torch.manual_seed(0)
    module = ConvAttentionPool().eval()
    samples = np.random.default_rng(0).standard_normal((16, 3, 4, 4)).astype(np.float32)
    lowered = lower_tower(module, torch.from_numpy(samples[:2]), "int8", samples, QuantizationOptions(subset_size=16))
    assert lowered.delegation["non_delegated"] == {}
    assert lowered.delegation["delegated"] == lowered.delegation["total"] > 0
    assert lowered.delegation["quantize_nodes_delegated"] > 0
    with torch.no_grad():
        expected = module(torch.from_numpy(samples[:2])).numpy()
    agreement = feature_agreement(expected, run_program(lowered.program, samples[:2]))
    assert agreement["cosine_min"] >= TOLERANCES["quantized"]["cosine_min"]
    assert agreement["relative_max_diff"] <= TOLERANCES["quantized"]["relative_max_diff"]
