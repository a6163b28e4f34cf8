"""Suites: which metric families run on which sets, read from TOML through ``lpmr_edge.schema``.

``SuiteConfig`` has the suite's own keys (``name``, ``id``, ``limit``, ``bootstrap_resamples``) and one
table per registered family (``lpmr_edge.suite.families``), named by the family's ``table``: a
required family's table always exists (defaults), another family runs only when its table is given.
The built-in suites take each family's ``presets``.
"""
from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lpmr_edge.errors import UserError
from lpmr_edge.schema import parse_table, require
from lpmr_edge.stats import DEFAULT_RESAMPLES
from lpmr_edge.suite.families import FAMILIES
from lpmr_edge.suite.families.base import Family


@dataclass(frozen=True)
class SuiteBase:
    """The keys of a suite that belong to no family."""

    name: str = "basic"
    id: str = "fmnist-test"
    limit: int | None = None
    bootstrap_resamples: int = DEFAULT_RESAMPLES

    def __post_init__(self) -> None:
        require(self.limit is None or self.limit >= 1, "limit must be at least 1")
        require(self.bootstrap_resamples >= 10, "bootstrap_resamples must be at least 10")

    def settings(self, family: Family) -> Any:
        """A family's config in this suite (None when the suite leaves the family out)."""
        return getattr(self, family.table) if family.table else None

    def families(self) -> list[tuple[Family, Any]]:
        """The registered families this suite runs, with their configs, in registry order."""
        return [(family, config) for family in FAMILIES
                if (config := self.settings(family)) is not None or (family.table is None)]


def _family_field(family: Family) -> tuple[str, Any, Any]:
    assert family.table and family.config
    if family.required:
        return family.table, family.config, field(default_factory=family.config)
    return family.table, family.config | None, field(default=None)  # type: ignore[operator]


SuiteConfig = dataclasses.make_dataclass(
    "SuiteConfig", [_family_field(family) for family in FAMILIES if family.table], bases=(SuiteBase,), frozen=True,
    namespace={"__doc__": "A suite: its own keys (SuiteBase) and one table per registered family.",
               "__module__": __name__})

BUILTIN_SUITES: dict[str, Any] = {
    name: SuiteConfig(name=name, limit=limit, **{family.table: family.presets[name] for family in FAMILIES
                                                 if family.table and name in family.presets})
    for name, limit in (("basic", None), ("quick", 2000), ("full", None))}


def suite_from_mapping(data: Mapping[str, Any], source: str) -> Any:
    """Build and validate a suite from a mapping (a parsed TOML file or a stored ``metrics.json`` entry)."""
    try:
        return parse_table(SuiteConfig, data)
    except UserError as error:
        raise UserError(f"suite {source}: {error}; fix the suite definition") from None


def load_suite(spec: str) -> Any:
    """A built-in suite (basic, quick, full) or a suite TOML file."""
    if spec in BUILTIN_SUITES:
        return BUILTIN_SUITES[spec]
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"unknown suite '{spec}'; use {', '.join(BUILTIN_SUITES)} or a path to a suite .toml file")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"suite {path} is not valid TOML ({error}); fix the syntax") from None
    return suite_from_mapping({"name": path.stem, **data}, str(path))


def stored_suite(result: Mapping[str, Any], result_dir: Path) -> Any:
    """The suite a stored result (its ``metrics.json`` content) was computed with."""
    if "suite" not in result:
        raise UserError(f"{result_dir} was written before suites existed; re-run `lpmr-edge eval` into it")
    return suite_from_mapping(result["suite"], f"stored in {result_dir}")


def with_overrides(suite: Any, dataset: str | None, limit: int | None, logit_scale: str | float | None) -> Any:
    """The suite with another ID set, a smaller image cap or another logit scale (None: keep the suite's)."""
    changes: dict[str, Any] = {}
    if dataset is not None:
        changes["id"] = dataset
    if limit is not None:
        changes["limit"] = min(limit, suite.limit or limit)
    try:
        if logit_scale is not None:
            changes["calibration"] = replace(suite.calibration, logit_scale=logit_scale)
    except UserError as error:
        raise UserError(f"[calibration] {error}; fix the command-line option") from None
    try:
        return replace(suite, **changes)
    except UserError as error:
        raise UserError(f"{error}; fix the command-line option") from None
