"""The spectrum family, a pairwise diagnostic: where in the FP32 representation's spectrum the quantization error lives.

Features are L2-normalised first (zero-shot logits depend only on the direction). With ``F`` the
FP32 reference features and ``Q`` the quantized ones of the same clean ID samples:
  basis                 right singular vectors ``v_1..v_d`` of ``F - mean(F)`` (eigenvectors of its Gram
                        matrix, so always d of them), by singular value, descending
  residual energy       ``e_k = sum_i ((Q_i - F_i) . v_k)^2``, reported as shares of ``sum_k e_k``
  head / tail           the top ``ceil(head_fraction * d)`` ranks / the rest
  spectral gain         variance of ``Q - mean(Q)`` along ``v_k`` divided by that of ``F - mean(F)``:
                        below 1 means quantization damped that component
  effective rank        ``exp(H(p))`` with ``p = s / sum(s)`` over the singular values ``s`` of the
                        centred matrix (Roy & Vetterli 2007)
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from lpmr_edge.errors import UserError
from lpmr_edge.manifest import atomic_write_bytes
from lpmr_edge.suite.families.base import Family
from lpmr_edge.suite.families.classification import ID_SET
from lpmr_edge.suite.outputs import load_outputs
from lpmr_edge.zeroshot import normalise

DEFAULT_HEAD_FRACTION = 0.1


def effective_rank(matrix: np.ndarray) -> float:
    """Entropy effective rank of a matrix (as given: centre it first if that is meant)."""
    singular_values = np.linalg.svd(np.asarray(matrix, dtype=np.float64), compute_uv=False)
    total = singular_values.sum()
    if total == 0:
        return 0.0
    shares = singular_values[singular_values > 0] / total
    return float(math.exp(-np.sum(shares * np.log(shares))))


def _shares(energy: np.ndarray) -> np.ndarray:
    total = energy.sum()
    return energy / total if total > 0 else np.zeros_like(energy)


def spectral_diagnostic(features: np.ndarray, reference_features: np.ndarray,
                        head_fraction: float = DEFAULT_HEAD_FRACTION) -> dict[str, Any]:
    """Residual energy per rank, head/tail shares, spectral gain and effective ranks (see module docstring)."""
    if features.shape != reference_features.shape:
        raise UserError(f"feature shapes differ ({features.shape} vs reference {reference_features.shape}); "
                        "compare results of the same model on the same samples")
    if not 0 < head_fraction < 1:
        raise UserError(f"head fraction {head_fraction} must be between 0 and 1 (e.g. 0.1 = top 10% of ranks)")
    quantized, reference = normalise(features).astype(np.float64), normalise(reference_features).astype(np.float64)
    reference_centred = reference - reference.mean(axis=0)
    quantized_centred = quantized - quantized.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(reference_centred.T @ reference_centred)
    basis = eigenvectors[:, ::-1]  # columns: v_1..v_d, a complete basis even with fewer samples than dimensions
    reference_energy = np.maximum(eigenvalues[::-1], 0.0)
    residual_energy = (((quantized - reference) @ basis) ** 2).sum(axis=0)
    quantized_energy = ((quantized_centred @ basis) ** 2).sum(axis=0)
    head = max(1, math.ceil(head_fraction * len(basis)))
    residual_share = _shares(residual_energy)
    gain = np.divide(quantized_energy, reference_energy, out=np.full_like(quantized_energy, np.nan),
                     where=reference_energy > 1e-12 * reference_energy.max())
    return {
        "n": len(reference), "ranks": len(basis), "head_ranks": head, "head_fraction": head_fraction,
        "normalised_features": True,
        "relative_residual_norm": float(np.linalg.norm(quantized - reference) / np.linalg.norm(reference)),
        "residual_head_share": float(residual_share[:head].sum()),
        "residual_tail_share": float(residual_share[head:].sum()),
        "reference_tail_share": float(_shares(reference_energy)[head:].sum()),
        "head_gain": float(quantized_energy[:head].sum() / reference_energy[:head].sum()),
        "tail_gain": float(quantized_energy[head:].sum() / max(reference_energy[head:].sum(), 1e-300)),
        "effective_rank": {"reference": effective_rank(reference_centred), "result": effective_rank(quantized_centred)},
        "per_rank": {"residual_share": residual_share.tolist(), "reference_share": _shares(reference_energy).tolist(),
                     "gain": [None if np.isnan(value) else float(value) for value in gain]},
    }


def spectrum_of_results(result_dir: Path, reference_dir: Path, head_fraction: float = DEFAULT_HEAD_FRACTION,
                        set_name: str = ID_SET) -> dict[str, Any]:
    """The spectral diagnostic of a result's stored clean-ID features against its FP32 reference's."""
    result, reference = load_outputs(result_dir, set_name), load_outputs(reference_dir, set_name)
    if result.dataset_sha256 != reference.dataset_sha256:
        raise UserError(f"{result_dir} and {reference_dir} evaluated different '{set_name}' samples; "
                        "run both with the same suite, dataset and --limit")
    return {"set": set_name, **spectral_diagnostic(result.features, reference.features, head_fraction)}


def plot_spectrum(diagnostic: dict[str, Any], path: Path, title: str) -> None:
    """Two panels: per-rank energy shares (reference variance, residual) and spectral gain; PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_rank = diagnostic["per_rank"]
    ranks = np.arange(1, diagnostic["ranks"] + 1)
    boundary = diagnostic["head_ranks"] + 0.5
    figure, (shares_axis, gain_axis) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    shares_axis.semilogy(ranks, np.maximum(per_rank["reference_share"], 1e-12), label="FP32 variance share")
    shares_axis.semilogy(ranks, np.maximum(per_rank["residual_share"], 1e-12), label="quantization residual share")
    shares_axis.set(xlabel="rank in FP32 SVD basis", ylabel="share of energy",
                    title=f"residual in tail: {diagnostic['residual_tail_share']:.1%} "
                          f"(FP32 variance in tail: {diagnostic['reference_tail_share']:.1%})")
    gain = np.array([np.nan if value is None else value for value in per_rank["gain"]], dtype=float)
    gain_axis.plot(ranks, gain, marker=".", linestyle="-")
    gain_axis.axhline(1.0, color="grey", linewidth=0.8)
    gain_axis.ticklabel_format(axis="y", useOffset=False)
    gain_axis.set(xlabel="rank in FP32 SVD basis", ylabel="quantized / FP32 variance",
                  title=f"gain head {diagnostic['head_gain']:.3f}, tail {diagnostic['tail_gain']:.3f}")
    for axis in (shares_axis, gain_axis):
        axis.axvline(boundary, color="red", linestyle="--", linewidth=0.8, label="head | tail")
    shares_axis.legend(fontsize=8)
    figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    atomic_write_bytes(Path(path), buffer.getvalue())


class Spectrum(Family):
    """The spectral diagnostic: no suite table or sets of its own (it reads the stored clean-ID outputs of a
    result and its reference) and no per-result metric; ``compare`` and ``report`` compute it per pair."""

    name = "spectrum"


FAMILY = Spectrum()
