"""Rewrites of ops XNNPACK has no kernel for into equivalent ones it has (all exact up to float rounding).

Three stages: the first before quantization, the others applied by ``export.lower_tower``:

* ``drop_concat_split_round_trips``: a pass on the graph handed to the quantizer (``export.exported_graph``): a
  ``cat`` split back into the same pieces (open_clip's attention pool concatenates the q/k/v biases for
  ``multi_head_attention_forward``, which chunks them again) is replaced by the pieces themselves, so each
  projection is a plain linear on a weight and a bias. Otherwise the quantizer quantizes the concatenated bias,
  the linears' bias is a computed tensor, the edge dialect turns them into ``addmm`` on per-channel INT8 weights,
  and XNNPACK refuses them (and ExecuTorch has no portable ``dequantize_per_channel``).
* ``xnnpack_decompositions()``: a table for ``ExportedProgram.run_decompositions`` (ATen level, before the
  edge dialect): layer norm, attention, select/unbind, squeeze/unsqueeze, means over any dims, and
  arithmetic with a Python int operand (which the edge dialect turns into an int64 constant plus a cast that
  XNNPACK refuses).
* ``FoldConstants``: an edge-dialect pass that evaluates every op whose inputs are all constants (weights,
  buffers, lifted constants) once at export time, so nothing computed only from weights (a class token
  broadcast to the batch, biases concatenated and split again, constant casts) is left outside XNNPACK.
  (De)quantize ops are not folded: XNNPACK needs them to see quantized weights.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def _layer_norm(x: torch.Tensor, normalized_shape: list[int], weight: torch.Tensor | None = None,
                bias: torch.Tensor | None = None, eps: float = 1e-5, cudnn_enable: bool = True) -> Any:
    """LayerNorm over the last dim as 4D mean/sub/mul/rsqrt (XNNPACK has no layer norm; its mean is 4D only)."""
    import torch

    aten = torch.ops.aten
    if len(normalized_shape) != 1:
        return NotImplemented
    rows = aten.reshape.default(x, [1, -1, x.shape[-1], 1])
    centred = aten.sub.Tensor(rows, aten.mean.dim(rows, [2, 3], True))
    variance = aten.mean.dim(aten.mul.Tensor(centred, centred), [2, 3], True)
    normalised = aten.reshape.default(aten.mul.Tensor(centred, aten.rsqrt.default(aten.add.Tensor(variance, eps))),
                                      list(x.shape))
    if weight is not None:
        normalised = aten.mul.Tensor(normalised, weight)
    return normalised if bias is None else aten.add.Tensor(normalised, bias)


def _attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None,
               dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
               enable_gqa: bool = False) -> Any:
    """SDPA as bmm/softmax/bmm on 3D views with a tensor scale.

    The default decomposition uses ``_safe_softmax`` (zeros for fully masked rows: eq/any/where, not in
    XNNPACK) and ``mul.Scalar`` (not in XNNPACK). CLIP never masks a whole row (no mask, or a causal one).
    """
    import torch

    aten = torch.ops.aten
    if dropout_p or is_causal or enable_gqa or query.dim() != 4 or (
            attn_mask is not None and attn_mask.dtype == torch.bool):
        return NotImplemented
    batch, heads, length, width = query.shape
    keys, out_width = key.shape[2], value.shape[3]
    factor = scale if scale is not None else 1.0 / math.sqrt(width)
    scores = aten.bmm.default(aten.mul.Tensor(aten.reshape.default(query, [batch * heads, length, width]), factor),
                              aten.permute.default(aten.reshape.default(key, [batch * heads, keys, width]), [0, 2, 1]))
    if attn_mask is not None:
        scores = aten.reshape.default(
            aten.add.Tensor(aten.reshape.default(scores, [batch, heads, length, keys]), attn_mask),
            [batch * heads, length, keys])
    probabilities = aten._softmax.default(scores, -1, False)
    context = aten.bmm.default(probabilities, aten.reshape.default(value, [batch * heads, keys, out_width]))
    return aten.reshape.default(context, [batch, heads, length, out_width])


def _select(x: torch.Tensor, dim: int, index: int) -> Any:
    """select as slice + reshape (XNNPACK has slice and reshape, not select)."""
    import torch

    dim, index = dim % x.dim(), index % x.shape[dim]
    sliced = torch.ops.aten.slice.Tensor(x, dim, index, index + 1)
    return torch.ops.aten.reshape.default(sliced, [size for axis, size in enumerate(x.shape) if axis != dim])


def _unbind(x: torch.Tensor, dim: int = 0) -> Any:
    """unbind as one select (slice + reshape) per index (the edge dialect's split + squeeze is not in XNNPACK)."""
    return [_select(x, dim, index) for index in range(x.shape[dim])]


def _squeeze(x: torch.Tensor, dim: int | list[int] | None = None) -> Any:
    """squeeze of one, several or all size-1 dims as reshape."""
    import torch

    dims = range(x.dim()) if dim is None else [dim] if isinstance(dim, int) else dim
    squeezed = {axis % max(x.dim(), 1) for axis in dims}
    return torch.ops.aten.reshape.default(
        x, [size for axis, size in enumerate(x.shape) if axis not in squeezed or size != 1])


def _unsqueeze(x: torch.Tensor, dim: int) -> Any:
    """unsqueeze as reshape."""
    import torch

    shape = list(x.shape)
    shape.insert(dim % (x.dim() + 1), 1)
    return torch.ops.aten.reshape.default(x, shape)


def _mean(x: torch.Tensor, dim: list[int] | None, keepdim: bool = False, *, dtype: torch.dtype | None = None) -> Any:
    """A mean over any dims as XNNPACK's one mean: over dims 2 and 3 of a 4D tensor, keeping them.

    The kept dims are permuted first (if needed) and flattened, the reduced ones flattened after them:
    ``[1, kept, reduced, 1]``, averaged over dims 2-3, reshaped to the requested output.
    """
    import torch

    aten = torch.ops.aten
    rank = x.dim()
    reduced = sorted({axis % rank for axis in (range(rank) if not dim else dim)})
    if dtype is not None or rank == 0 or (rank == 4 and reduced == [2, 3] and keepdim):
        return NotImplemented
    kept = [axis for axis in range(rank) if axis not in reduced]
    order = kept + reduced
    moved = x if order == list(range(rank)) else aten.permute.default(x, order)
    kept_size = math.prod(x.shape[axis] for axis in kept)
    averaged = aten.mean.dim(aten.reshape.default(moved, [1, kept_size, -1, 1]), [2, 3], True)
    shape = [1 if axis in reduced else size for axis, size in enumerate(x.shape) if keepdim or axis not in reduced]
    return aten.reshape.default(averaged, shape)


def _with_float_operand(op: Any, identity: int) -> Callable[..., Any]:
    """``op(x, other)`` with a Python int ``other`` on a float tensor: ``x`` itself if ``other`` is the identity
    (``x + 0``), else ``op`` with ``float(other)``; anything else is left alone."""

    def rewrite(x: torch.Tensor, other: Any, **kwargs: Any) -> Any:
        if isinstance(other, bool) or not isinstance(other, int) or not x.is_floating_point():
            return NotImplemented
        if other == identity:
            return x
        return op(x, float(other), **kwargs)

    return rewrite


def xnnpack_decompositions() -> dict[Any, Callable[..., Any]]:
    """Decomposition table for ``ExportedProgram.run_decompositions``: ops XNNPACK lacks -> ops it has."""
    import torch

    aten = torch.ops.aten
    return {aten.layer_norm.default: _layer_norm, aten.scaled_dot_product_attention.default: _attention,
            aten.select.int: _select, aten.unbind.int: _unbind, aten.squeeze.dim: _squeeze,
            aten.squeeze.dims: _squeeze, aten.squeeze.default: _squeeze, aten.unsqueeze.default: _unsqueeze,
            aten.mean.dim: _mean,
            aten.add.Tensor: _with_float_operand(aten.add.Tensor, 0),
            aten.sub.Tensor: _with_float_operand(aten.sub.Tensor, 0),
            aten.mul.Tensor: _with_float_operand(aten.mul.Tensor, 1),
            aten.div.Tensor: _with_float_operand(aten.div.Tensor, 1)}


def _pieces(node: torch.fx.Node, tensors: list[Any], position: int) -> tuple[int, list[int]]:
    """(dim, size of each tensor along it) for a cat/chunk/split ``node`` whose dim argument is at ``position``."""
    dim = node.args[position] if len(node.args) > position else node.kwargs.get("dim", 0)
    dim %= tensors[0].dim()
    return dim, [tensor.shape[dim] for tensor in tensors]


def drop_concat_split_round_trips(graph_module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Replace each piece of a ``cat`` that a chunk/split cuts back into the very tensors concatenated (same dim,
    same sizes) by the tensor that went in (exact: no value changes). Edits ``graph_module`` in place."""
    import operator

    import torch

    aten = torch.ops.aten
    graph = graph_module.graph
    for node in list(graph.nodes):
        source = node.args[0] if node.op == "call_function" and node.args else None
        if (node.target not in (aten.chunk.default, aten.split.Tensor, aten.split_with_sizes.default)
                or not isinstance(source, torch.fx.Node) or source.target != aten.cat.default):
            continue
        parts = source.args[0]
        if _pieces(source, [part.meta["val"] for part in parts], 1) != _pieces(node, list(node.meta["val"]), 2):
            continue
        for user in list(node.users):
            if user.target is operator.getitem:
                user.replace_all_uses_with(parts[user.args[1]])
                graph.erase_node(user)
        for unused in (node, source):
            if not unused.users:
                graph.erase_node(unused)
    graph_module.recompile()
    return graph_module


def fold_constants_pass() -> Any:
    """An ``ExportedProgramPassManager`` running ExecuTorch's ``constant_prop_pass`` on the edge program."""
    from executorch.exir.pass_base import ExportedProgramPassBase, ExportedProgramPassResult
    from executorch.exir.pass_manager import ExportedProgramPassManager
    from executorch.exir.passes.constant_prop_pass import constant_prop_pass

    class FoldConstants(ExportedProgramPassBase):
        """Evaluates ops whose inputs are all constants once, at export ((de)quantize ops excepted)."""

        def call(self, exported_program: Any) -> ExportedProgramPassResult:
            return ExportedProgramPassResult(constant_prop_pass(exported_program, _skip_dim_order=False), True)

    return ExportedProgramPassManager([FoldConstants()])
