"""The sample sizes behind a result's metrics, read from its ``metrics.json`` tree."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def sample_sizes(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The sample sizes behind a result's metrics (a ``metrics.json`` tree): ``id`` (``n`` and ``of``, the
    ID images the suite's cap chose them from, when recorded), ``ood`` (set -> n), ``corruptions`` (images,
    kinds, severities, total), ``shift`` (n) and ``spurious`` (n, groups, smallest and worst group with
    their sizes, min_group_size, status), each only when measured; ``sequential`` (images seen, of how many, why
it stopped) when the ID images were chosen by an evaluation until settled."""
    sizes: dict[str, Any] = {}
    accuracy = metrics.get("accuracy", {})
    if "n" in accuracy:
        sizes["id"] = {"n": accuracy["n"], "of": accuracy.get("available")}
    if "ood" in metrics:
        sizes["ood"] = {name: node.get("n") for name, node in metrics["ood"].get("sets", {}).items()}
    corruptions = metrics.get("corruptions")
    if corruptions and "images" in corruptions:
        kinds, severities = len(corruptions.get("kinds", [])), len(corruptions.get("severities", []))
        sizes["corruptions"] = {"images": corruptions["images"], "kinds": kinds, "severities": severities,
                                "total": corruptions["images"] * kinds * severities}
    if "n" in metrics.get("shift", {}):
        sizes["shift"] = {"n": metrics["shift"]["n"]}
    spurious = metrics.get("spurious", {})
    if "n" in spurious:
        sizes["spurious"] = {"n": spurious["n"], "groups": spurious.get("n_groups", len(spurious.get("groups", {}))),
                             **{key: spurious[key] for key in ("smallest", "worst", "min_group_size") if key in spurious},
                             "status": spurious.get("status", {}).get("worst_group", "ok")}
    sequential = metrics.get("sequential")
    if sequential:
        sizes["sequential"] = {key: sequential[key] for key in ("images", "of", "stopped") if key in sequential}
    return sizes
