"""The registry of metric families, in report order.

Adding a family (say ``drift``) touches its module and one line here:

1. ``families/drift.py``: a frozen ``DriftConfig`` dataclass (its rules in ``__post_init__`` with
   ``lpmr_edge.schema.require``), the family's ``MetricSpec``s (key, label, direction, unit, delta kind,
   path in ``metrics.json``, compare key) and ``Claim``, and ``class Drift(base.Family)`` with
   ``table = "drift"``, ``config``, ``presets``, ``metrics``, ``claims`` and the methods it needs
   (``plan``/``set_names``, ``probe``, ``score``, ``comparisons``, ``headline``, ``conventions``);
   end with ``FAMILY = Drift()``.
2. add ``drift.FAMILY`` to ``FAMILIES`` below. Suites then accept a ``[drift]`` table, ``eval`` scores
   it, ``compare`` tests it, and ``pick``/``report``/``plots`` show its metrics and check its claim.
"""
from __future__ import annotations

from lpmr_edge.suite.families import classification, corruptions, ood, shift, spectrum, spurious
from lpmr_edge.suite.families.base import Claim, Family, MetricSpec

FAMILIES: tuple[Family, ...] = (
    classification.FAMILY,
    ood.FAMILY,
    corruptions.FAMILY,
    shift.FAMILY,
    spurious.FAMILY,
    spectrum.FAMILY,
)

METRICS: tuple[MetricSpec, ...] = tuple(spec for family in FAMILIES for spec in family.metrics)
METRIC_BY_KEY: dict[str, MetricSpec] = {spec.key: spec for spec in METRICS}
COMPARISON_METRICS: tuple[MetricSpec, ...] = tuple(spec for family in FAMILIES for spec in family.comparison_metrics)
CLAIMS: tuple[Claim, ...] = tuple(claim for family in FAMILIES for claim in family.claims)
