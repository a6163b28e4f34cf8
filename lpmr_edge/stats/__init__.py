"""Statistics: seeded bootstrap (percentile, BCa), exact proportion intervals and tests, debiased
calibration error, paired decisions with equivalence margins, multiplicity-controlled claim verdicts, and
anytime-valid confidence sequences.

Modules: ``bootstrap`` (resampling, BCa), ``exact`` (McNemar, Clopper–Pearson/Wilson, worst group),
``calibration`` (debiased ECE), ``paired`` (paired decisions), ``multiplicity`` (Holm, BH, claims),
``sequences`` (PrPl-EB confidence sequences, spent looks).
"""
from lpmr_edge.stats.bootstrap import (
    BCA,
    CONFIDENCE,
    DEFAULT_RESAMPLES,
    JACKKNIFE_GROUPS,
    Summary,
    Table,
    bca_estimates,
    bca_interval,
    bca_p_greater,
    bootstrap_ci,
    bootstrap_draws,
    jackknife_values,
    seeded_rng,
    with_ci,
)
from lpmr_edge.stats.calibration import calibration_errors
from lpmr_edge.stats.exact import (
    MIN_GROUP_SIZE,
    NOT_ENOUGH_DATA,
    mcnemar_exact,
    proportion_interval,
    worst_group_accuracy,
)
from lpmr_edge.stats.multiplicity import (
    DOES_NOT_HOLD,
    HOLDS,
    MIXED,
    NOT_SIGNIFICANT,
    Evidence,
    benjamini_hochberg,
    claim_verdicts,
    deduplicate,
    holm,
)
from lpmr_edge.stats.paired import (
    BEST,
    BETTER,
    EQUIVALENT,
    UNDECIDED,
    WORSE,
    MetricRule,
    PairedDecision,
    paired_decisions,
    paired_metric_decisions,
)
from lpmr_edge.stats.sequences import (
    BET_TRUNCATION,
    SequentialComparison,
    SpentComparison,
    State,
    check_margin_and_confidence,
    classify,
    look_alpha,
)

__all__ = [
    "BCA", "BEST", "BETTER", "BET_TRUNCATION", "CONFIDENCE", "DEFAULT_RESAMPLES", "DOES_NOT_HOLD", "EQUIVALENT",
    "HOLDS", "JACKKNIFE_GROUPS", "MIN_GROUP_SIZE", "MIXED", "NOT_ENOUGH_DATA", "NOT_SIGNIFICANT", "UNDECIDED", "WORSE",
    "Evidence", "MetricRule", "PairedDecision", "SequentialComparison", "SpentComparison", "State", "Summary", "Table",
    "bca_estimates", "bca_interval", "bca_p_greater", "benjamini_hochberg", "bootstrap_ci", "bootstrap_draws",
    "calibration_errors", "check_margin_and_confidence", "claim_verdicts", "classify", "deduplicate", "holm",
    "jackknife_values", "look_alpha", "mcnemar_exact", "paired_decisions", "paired_metric_decisions",
    "proportion_interval", "seeded_rng", "with_ci", "worst_group_accuracy",
]
