"""Metrics and schema of the table of :func:`~clinaudit.audit.triage_outcomes.compare_policies`.

One row per (policy, metric), policies in the order asked, metrics in the order of
:data:`TRIAGE_METRICS` (whose values are the definitions the report can quote). The settings of
the run are columns of every row, so the table states what was run. ``aging_cap_days`` is ``NaN``
when there was no cap.
"""

from __future__ import annotations

import pandera.pandas as pa
from pandera.typing import Series

from .schemas import OutputSchema, count_field
from .triage_queue import POLICIES

__all__ = ["TRIAGE_METRICS", "TRUTH_METRICS", "TriageComparisonTable"]

#: Metric name -> definition. "Pile": studies with arrival 0.0; "inflow": the others; "read":
#: studies given a read slot (re-reads included); "turnaround": completion - arrival of a read
#: study; "wait": start - arrival. Auto-cleared studies have no turnaround (an abnormal one is
#: a miss).
TRIAGE_METRICS: dict[str, str] = {
    "days_to_clear_pile": "time when every pile study has been read or auto-cleared (days)",
    "days_to_clear_pile_ratio_vs_fifo": "days_to_clear_pile / FIFO's days_to_clear_pile",
    "max_wait_days": "largest wait (start - arrival) of any read study (days)",
    "reads_used": "number of reads (re-reads of cleared studies included)",
    "auto_cleared_share": "auto-cleared studies / all studies",
    "effective_throughput_multiplier": (
        "(reads completed by days_to_clear_pile + auto-cleared studies arrived by then) "
        "/ days_to_clear_pile / reads_per_day"
    ),
    "abnormal_turnaround_mean_days": "mean turnaround of read abnormal studies (days)",
    "abnormal_turnaround_p90_days": "90th percentile (linear) turnaround of read abnormal studies",
    "abnormal_turnaround_max_days": "largest turnaround of a read abnormal study (days)",
    "critical_turnaround_mean_days": "mean turnaround of read critical studies (days)",
    "critical_turnaround_p90_days": "90th percentile (linear) turnaround of read critical studies",
    "critical_turnaround_max_days": "largest turnaround of a read critical study (days)",
    "abnormal_read_in_first_days": "abnormal studies whose read completed by first_days (count)",
    "abnormal_yield_ratio_vs_fifo": (
        "abnormal_read_in_first_days / FIFO's, in the same truth draw (ratio per draw, then CI; "
        "undefined in a draw where FIFO reads no abnormal study in the window)"
    ),
    "missed_abnormal_pile": "abnormal pile studies auto-cleared (count)",
    "missed_abnormal_inflow_per_day": (
        "abnormal inflow studies auto-cleared / inflow days (ceil of the last inflow arrival)"
    ),
    "missed_critical_pile": "critical pile studies auto-cleared (count)",
    "missed_critical_inflow_per_day": "critical inflow studies auto-cleared / inflow days",
}
#: Metrics that depend on the imputed truth (the others are fixed by the read order).
TRUTH_METRICS: tuple[str, ...] = tuple(
    m for m in TRIAGE_METRICS if m.startswith(("abnormal_", "critical_", "missed_"))
)


def _nonnegative() -> object:
    return pa.Field(nullable=True, ge=0.0)


class TriageComparisonTable(OutputSchema):
    """Queue outcomes per policy with intervals over imputed-truth draws, and the run's settings."""

    policy: Series[str] = pa.Field(isin=list(POLICIES))
    metric: Series[str] = pa.Field(isin=list(TRIAGE_METRICS))
    # Mean over the draws where the metric is defined; the value itself when not truth-dependent.
    estimate: Series[float] = _nonnegative()
    ci_low: Series[float] = _nonnegative()
    ci_high: Series[float] = _nonnegative()
    # Draws with a defined value (e.g. no turnaround in a draw without a read critical study).
    n_valid: Series[int] = count_field()
    depends_on_truth: Series[bool]
    n_studies: Series[int] = count_field()
    n_pile: Series[int] = count_field()
    reads_per_day: Series[float] = pa.Field(gt=0.0)
    aging_cap_days: Series[float] = _nonnegative()
    reread_fraction: Series[float] = pa.Field(ge=0.0, le=1.0)
    first_days: Series[float] = pa.Field(gt=0.0)
    n_draws: Series[int] = count_field()
    seed: Series[int] = count_field()
    ci_level: Series[float] = pa.Field(gt=0.0, lt=1.0)

    class Config:
        ordered = True
