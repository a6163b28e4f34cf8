"""The metric-family record: what one family of reliability metrics (accuracy/calibration, OOD, ...) declares.

A ``Family`` says, in one place: the suite table that configures it (``table``, ``config``, its
``presets`` in the built-in suites), the evaluation sets it needs (``set_names``, ``plan``), its
``probe`` (the summary and per-sample tables the bootstrap resamples), how it is scored into
``metrics.json`` (``score``), its headline rows (``headline``: the summary of ``lpmr-edge eval``), the
metrics ``pick``/``report``/``plots`` show (``metrics``: ``MetricSpec``), the values ``compare`` tests
(``comparisons``) and the study's claim about it (``claims``). The registry
(``lpmr_edge.suite.families.FAMILIES``) lists the families in order; everything else loops over it.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from lpmr_edge.data import ImageDataset
from lpmr_edge.errors import UserError
from lpmr_edge.stats import Summary, Table, bca_estimates
from lpmr_edge.suite.outputs import EvalSet, SetOutputs

PERCENT = "%"  # unit of a fraction shown in percent
POINTS, DIFFERENCE = "percentage points", "difference"  # delta kinds: how a change (result - reference) reads
MEAN, WORST = "mean", "worst"  # how a metric over several instances combines them
JOINT_BOOTSTRAP = "bca: joint bootstrap of the mean over sets (the ID images drawn once for all sets)"


@dataclass(frozen=True)
class MetricSpec:
    """A metric as pick, report, plots and compare read it; its direction is defined here only.

    ``at`` is its path in ``metrics.json`` (value and sibling ``ci`` table); a ``"{set}"`` part stands
    for each of ``instances(metrics)`` (e.g. the OOD sets) and the metric ``combine``s them: their
    mean, or the worst instance's value (``WORST``: lowest when higher is better). ``paired`` is
    its key in ``compare``'s deltas (``"{set}"`` likewise); ``datasets`` the prefix of the evaluation
    sets it reads besides ``id``. ``mean_at`` is where the suite stores the mean over all instances with the
    interval of one joint bootstrap of them (read when its ``ci_method`` is ``JOINT_BOOTSTRAP``).
    """

    key: str
    label: str
    higher_is_better: bool
    unit: str = ""  # PERCENT, "nats" or "" (a plain number)
    delta: str = DIFFERENCE  # POINTS or DIFFERENCE
    at: tuple[str, ...] = ()
    paired: str = ""
    datasets: str = "id"
    instances: Callable[[Mapping[str, Any]], list[str]] | None = None
    combine: str = MEAN
    mean_at: tuple[str, ...] = ()

    @property
    def percent(self) -> bool:
        """True for a fraction shown in percent."""
        return self.unit == PERCENT

    def better(self, value: float, other: float) -> bool:
        """True if ``value`` is strictly better than ``other``."""
        return value > other if self.higher_is_better else value < other

    def goodness(self, value: float) -> float:
        """A number that is larger for better values."""
        return value if self.higher_is_better else -value

    def combined(self, values: Sequence[float]) -> float:
        """The metric from its instances' values (``combine``)."""
        if self.combine == WORST:
            return float(min(values, key=self.goodness))
        return float(np.mean(values))

    def expand(self, pattern: str | tuple[str, ...], metrics: Mapping[str, Any]) -> list[Any]:
        """``pattern`` (``at`` or ``paired``) for each instance of a result's ``metrics``, or as is."""
        names = self.instances(metrics) if self.instances else [None]
        if isinstance(pattern, str):
            return [pattern.format(set=name) for name in names]
        return [tuple(part.format(set=name) for part in pattern) for name in names]


@dataclass(frozen=True)
class Claim:
    """A finding of the study about one metric, checked on a model's results.

    ``expectation``: "improve" (quantization *can* improve the metric), "worsen" (it *can* worsen it)
    or "not improve" (it does *not* improve it).
    """

    key: str
    statement: str
    metric: str
    expectation: str


@dataclass(frozen=True)
class Probe:
    """A summary function and the tables it summarises, rows in sample order (what a bootstrap resamples).

    ``sort_key`` names a column the summary sorts by; tables are pre-sorted by it (descending)
    before bootstrapping so every resample is already sorted.
    """

    summary: Summary
    tables: list[Table]
    sort_key: str | None = None

    def bootstrap_tables(self) -> list[Table]:
        """The tables, each sorted by ``sort_key`` (highest first) where it has that column."""
        if self.sort_key is None:
            return self.tables
        return [sorted_rows(table, table[self.sort_key]) if self.sort_key in table else table
                for table in self.tables]

    def with_ci(self, n_resamples: int, seed: int) -> dict[str, Any]:
        """Values with their BCa bootstrap intervals (``lpmr_edge.stats.bca_estimates``):
        ``{name: value, "ci": {name: [low, high]}}``; the values are the summary's own. (``score_outputs``
        records the interval method of every metric beside its ``ci``.)"""
        estimates = bca_estimates(self.summary, self.bootstrap_tables(), n_resamples, seed)
        return {**{name: estimate["value"] for name, estimate in estimates.items()},
                "ci": {name: estimate["ci"] for name, estimate in estimates.items()}}


def sorted_rows(table: Table, key: np.ndarray) -> dict[str, np.ndarray]:
    """The table's rows ordered by ``key``, highest first, ties in sample order."""
    order = np.argsort(-key, kind="stable")
    return {name: column[order] for name, column in table.items()}


@dataclass(frozen=True)
class PlanContext:
    """What planning a family's sets needs: the labelled ID set, the run's seed and a dataset loader
    (``load(name)``: capped at the suite's limit)."""

    id_set: ImageDataset
    seed: int
    image_size: int | None
    load: Callable[[str], ImageDataset]


@dataclass(frozen=True)
class ScoreContext:
    """What scoring a family needs: every stored set's outputs, the suite's logit scale and
    calibration settings, and the ID set's per-sample outcomes at that scale."""

    outputs: Mapping[str, SetOutputs]
    logit_scale: float
    calibration: Any  # the suite's CalibrationConfig (lpmr_edge.suite.families.classification)
    id_outcomes: Table


@dataclass(frozen=True)
class Compared:
    """Values of a probe that ``compare`` tests, result against reference: (value name, label, spec)
    triples, reported under ``<prefix>.<value name>``."""

    prefix: str
    result: Probe
    reference: Probe
    values: tuple[tuple[str, str, MetricSpec], ...]


def labelled(dataset: ImageDataset, role: str) -> ImageDataset:
    """``dataset`` if it has class labels, else a UserError naming the ``role`` it was meant for."""
    if not dataset.class_names or np.any(dataset.labels < 0):
        raise UserError(f"the {role} set '{dataset.name}' has no class labels; use a labelled set "
                        "(fmnist-test, a class-folder, waterbirds:PATH)")
    if len(dataset.class_names) < 2:
        raise UserError(f"the {role} set '{dataset.name}' has a single class ({dataset.class_names[0]}); zero-shot "
                        "classification needs at least two classes (e.g. two class sub-folders)")
    return dataset


def in_quick_and_full(config: Any) -> dict[str, Any]:
    """``presets`` of a family that the quick and full built-in suites run with ``config``."""
    return {"quick": config, "full": config}


HeadlineRow = tuple[tuple[str, ...], str, float, list]  # (key path, label, value, 95% CI)


def headline_row(key: tuple[str, ...], label: str, node: Mapping[str, Any], name: str) -> HeadlineRow:
    """A headline row of ``node[name]`` and its CI."""
    return key, label, node[name], node["ci"][name]


class Family:
    """A family of metrics; subclasses override what they have (the defaults declare nothing)."""

    name: ClassVar[str]
    table: ClassVar[str | None] = None  # the suite table that configures (and enables) the family
    config: ClassVar[type | None] = None  # that table's dataclass
    required: ClassVar[bool] = False  # True: present in every suite (its table has defaults)
    presets: ClassVar[Mapping[str, Any]] = {}  # built-in suite name -> the family's config there (absent: off)
    metrics: ClassVar[tuple[MetricSpec, ...]] = ()
    claims: ClassVar[tuple[Claim, ...]] = ()
    # metrics that exist only against a reference (e.g. corruption error); the report tables them per target
    comparison_metrics: ClassVar[tuple[MetricSpec, ...]] = ()
    set_name: ClassVar[str | None] = None  # the outputs name of a family's one evaluation set

    def set_names(self, config: Any) -> list[str]:
        """Outputs names of the family's evaluation sets (by default its ``set_name``, if any)."""
        return [self.set_name] if self.set_name else []

    def plan(self, config: Any, context: PlanContext) -> list[EvalSet]:
        """The family's evaluation sets."""
        return []

    def probe(self, config: Any, context: ScoreContext) -> Any:
        """The family's probe(s) from the stored outputs (compared by ``comparisons``)."""
        return None

    def score(self, config: Any, probe: Any, context: ScoreContext, resamples: int, seed: int) -> dict[str, Any]:
        """The family's top-level entries of ``metrics.json`` (values with bootstrap CIs)."""
        return {}

    def comparisons(self, config: Any, result: Any, reference: Any) -> list[Compared]:
        """What ``compare`` tests between two results' probes."""
        return []

    def mcnemar(self, result: Any, reference: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per-sample correctness of both results, by set, for McNemar's test."""
        return {}

    def sizes(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """The sample sizes behind the family's metrics in a ``metrics.json`` tree, under the family's key
        (``lpmr_edge.suite.sizes``); nothing when it was not measured."""
        return {}

    def headline(self, metrics: Mapping[str, Any]) -> list[HeadlineRow]:
        """Headline rows of a result's ``metrics.json`` tree (the family's part, if it was measured)."""
        return []

    def report_notes(self, metrics: Sequence[Mapping[str, Any]]) -> list[str]:
        """Notes the report adds about how the family's metrics were summarised (``metrics``: every
        result's ``metrics.json`` tree)."""
        return []

    def conventions(self, config: Any) -> dict[str, str]:
        """How to read the family's numbers (``metrics.json``'s ``conventions``)."""
        return {}
