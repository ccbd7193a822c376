"""The post-deployment monitoring plan of study ``cxr_triage``.

With auto-clear on, a random ``monitoring.reread_fraction`` of the cleared studies is still read;
each re-read is a miss (abnormal) or not. The monitor (:func:`clinaudit.audit.sequential.
monitor_stream`) tests ``H0: false-omission rate <= r0`` after every re-read, where ``r0`` is the
false-omission rate the certificate allows: a miss rate (abnormal cleared / abnormal) of at most
``alpha`` means at most ``alpha x P(abnormal) / P(cleared)`` of the cleared studies are abnormal
(calibration prevalence and cleared share). Its false-alarm probability over the whole stream is
at most ``monitoring.level``; :func:`clinaudit.audit.sequential.detection_delay` gives how many
re-reads (and, at the expected re-reads per day, how many days) an alarm takes when the true rate
is 2x or 3x ``r0``. On alarm the queue falls back to ``monitoring.fallback``.
"""

from __future__ import annotations

import math

import pandas as pd

from clinaudit.audit.sequential import detection_delay

from .certify import TriageCertification
from .policy import TriagePolicy

__all__ = ["PLAN_COLUMNS", "monitoring_plan", "null_omission_rate"]

PLAN_COLUMNS = ("item", "value", "unit", "detail")


def _cleared_share(cert: TriageCertification) -> float:
    c = cert.certificate
    n = c.n_abnormal + c.n_normal
    return (c.normals_cleared * c.n_normal + c.misses) / n if n else math.nan


def null_omission_rate(cert: TriageCertification) -> tuple[float, float, float]:
    """``(r0, P(abnormal), P(cleared))``: the false-omission rate the certificate allows (the
    monitor's null, capped at 0.5), from the calibration prevalence and cleared share; ``r0`` is
    NaN when the rule clears nothing."""
    prevalence = float(cert.facts["calibration_prevalence"])
    cleared = _cleared_share(cert)
    r0 = min(cert.certificate.alpha * prevalence / cleared, 0.5) if cleared > 0 else math.nan
    return r0, prevalence, cleared


def monitoring_plan(
    cert: TriageCertification,
    policy: TriagePolicy,
    *,
    cleared_per_day: float,
    mode: str,
    seed: int = 0,
    n_sims: int = 1000,
) -> pd.DataFrame:
    """The plan's rows (``item, value, unit, detail``) for the deployed ``mode``.

    ``cleared_per_day``: auto-cleared studies expected per reading day (from the throughput
    simulation of the inflow).
    """
    m = policy.monitoring
    rows: list[tuple[str, float, str, str]] = []
    triggers = ", ".join(m.recertify_on)
    if mode != "priority + auto-clear":
        rows.append(
            ("auto-clear", 0.0, "", f"off ({mode}); every study is read, in order of value")
        )
    else:
        r0, prevalence, cleared = null_omission_rate(cert)
        per_day = m.reread_fraction * cleared_per_day
        rows += [
            ("re-read quota", m.reread_fraction, "share",
             "random cleared studies a radiologist reads"),
            ("re-reads per day", per_day, "studies/day", f"{cleared_per_day:.0f} cleared per day"),
            (
                "null false-omission rate",
                r0,
                "share",
                f"alpha {cert.certificate.alpha:g} x P(abnormal) {prevalence:.3f} / P(cleared) "
                f"{cleared:.3f}",
            ),
            ("false-alarm bound", m.level, "probability",
             "over the whole stream, any number of looks"),
        ]  # fmt: skip
        for factor in (2.0, 3.0):
            true_rate = min(factor * r0, 0.99)
            d = detection_delay(
                true_rate, null_rate=r0, level=m.level, horizon=20000, n_sims=n_sims, seed=seed
            )
            audits = d["median_audits_to_alarm"]
            days = audits / per_day if per_day > 0 else math.inf
            rows.append(
                (
                    f"re-reads to alarm at {factor:g}x",
                    audits,
                    "re-reads (median)",
                    f"~{days:.1f} days at the quota; alarmed in {d['alarm_share']:.0%} of "
                    f"{int(d['n_sims'])} simulated streams within 20,000 re-reads",
                )
            )
        rows.append(("on alarm", math.nan, "", m.fallback))
    rows += [
        ("re-certify on", math.nan, "", triggers),
        ("escalation", math.nan, "", " -> ".join(m.escalation)),
    ]
    return pd.DataFrame(rows, columns=list(PLAN_COLUMNS))
