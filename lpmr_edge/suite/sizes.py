"""The sample sizes behind a result's metrics, read from its ``metrics.json`` tree."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lpmr_edge.suite.families import FAMILIES


def sample_sizes(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The sample sizes behind a result's metrics (a ``metrics.json`` tree), family by family (``id``: ``n``
    and ``of``; ``ood``: set -> n; ``corruptions``: images, kinds, severities, total; ``shift``: n;
    ``spurious``: n, groups, smallest and worst group with their sizes, min_group_size, status), each only
    when measured; ``sequential`` (images seen, of how many, why it stopped) when the ID images were chosen
    by an evaluation until settled."""
    sizes: dict[str, Any] = {}
    for family in FAMILIES:
        sizes.update(family.sizes(metrics))
    sequential = metrics.get("sequential")
    if sequential:
        sizes["sequential"] = {key: sequential[key] for key in ("images", "of", "stopped") if key in sequential}
    return sizes
