"""The registry of metric families, in report order. Adding a family: one module declaring a
``Family`` subclass and its ``FAMILY`` record (see ``base``), plus its line here."""
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
CLAIMS: tuple[Claim, ...] = tuple(claim for family in FAMILIES for claim in family.claims)
