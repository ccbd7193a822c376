"""Anytime-valid monitoring of a deployed rule's error rate from a stream of audits.

After go-live an auto-clear rule is watched by re-reading a random quota of the studies it
cleared: each re-read is ``1`` (the radiologist found it abnormal: a miss) or ``0``. The committee
wants an alarm as soon as the miss share among cleared studies is above what was certified, and
wants the alarm to mean something however often the stream is looked at.

:func:`monitor_stream` runs a one-sided test of ``H0: rate <= null_rate`` with a mixture
likelihood-ratio e-process: for alternatives ``r_1 .. r_m > null_rate`` the statistic is

    E_t = mean_j  prod_{i <= t} (r_j / r0) ** x_i * ((1 - r_j) / (1 - r0)) ** (1 - x_i)

Each product has expectation ``<= 1`` at every step under any ``rate <= r0`` (its one-step factor
is linear in the rate and equals 1 at ``r0``), so their mean is a non-negative supermartingale and
by Ville's inequality ``P(sup_t E_t >= 1 / level) <= level``: the false-alarm probability over the
*whole* stream, with continuous looks, is at most ``level``. The alarm is the first ``t`` with
``E_t >= 1 / level``; the study's monitoring plan then falls back (for triage: to FIFO reading of
every study) until the rule is re-certified.

:func:`detection_delay` estimates by simulation how many audits the monitor needs to alarm at a
given true rate (and its false-alarm share at the null), for sizing the re-read quota.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .types import AuditInputError, check_positive_int

__all__ = ["MonitorResult", "default_alternatives", "detection_delay", "monitor_stream"]


def _rate(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value < 1.0:
        raise AuditInputError(name, repr(value), "a rate in (0, 1)", f"pass e.g. {name}=0.02")
    return float(value)


def default_alternatives(null_rate: float) -> tuple[float, ...]:
    """Alternatives mixed by default: 1.5, 2, 3 and 5 times the null rate (those below 1).

    Examples
    --------
    >>> default_alternatives(0.02)
    (0.03, 0.04, 0.06, 0.1)
    """
    r0 = _rate("null_rate", null_rate)
    return tuple(round(f * r0, 12) for f in (1.5, 2.0, 3.0, 5.0) if f * r0 < 1.0)


def _alternatives(null_rate: float, alternatives: Any) -> np.ndarray:
    alts = np.asarray(
        default_alternatives(null_rate) if alternatives is None else alternatives, dtype=float
    ).ravel()
    if not alts.size or not ((alts > null_rate) & (alts < 1.0)).all():
        raise AuditInputError(
            "alternatives",
            repr(alts.tolist()),
            f"rates in ({null_rate}, 1)",
            "pass the miss shares the monitor should catch, each above null_rate",
        )
    return alts


def _log_e_process(x: np.ndarray, r0: float, alts: np.ndarray) -> np.ndarray:
    """``log E_t`` for t = 1..n (rows: streams, columns: steps)."""
    hits = np.cumsum(x, axis=-1)
    steps = np.arange(1, x.shape[-1] + 1)
    per_alt = hits[..., None] * np.log(alts / r0) + (steps - hits)[..., None] * np.log(
        (1.0 - alts) / (1.0 - r0)
    )
    top = per_alt.max(axis=-1, keepdims=True)
    return top[..., 0] + np.log(np.mean(np.exp(per_alt - top), axis=-1))


@dataclass(frozen=True)
class MonitorResult:
    """The monitor after a stream of audits.

    Attributes
    ----------
    null_rate, level : float
        ``H0: rate <= null_rate``; the alarm's false-alarm bound.
    alternatives : tuple of float
        The rates mixed in the e-process.
    n_audited, n_events : int
        Audits so far and events (misses) among them.
    e_value : float
        ``E_t`` after the last audit.
    max_e_value : float
        Its running maximum.
    alarm_at : int or None
        1-based index of the audit that raised the alarm (``None``: no alarm).
    """

    null_rate: float
    level: float
    alternatives: tuple[float, ...]
    n_audited: int
    n_events: int
    e_value: float
    max_e_value: float
    alarm_at: int | None

    @property
    def alarm(self) -> bool:
        """Whether the monitor has raised its alarm (the rule must fall back)."""
        return self.alarm_at is not None


def monitor_stream(
    outcomes: Any, *, null_rate: float, level: float = 0.05, alternatives: Any = None
) -> MonitorResult:
    """Run the anytime-valid monitor over audit outcomes in the order they arrived.

    Parameters
    ----------
    outcomes : array-like of shape (n,)
        ``1`` = the audited study was an error (an abnormal study among those cleared), ``0`` not.
    null_rate : float
        The largest acceptable error rate (e.g. the certified false-omission bound).
    level : float
        False-alarm probability over the whole stream.
    alternatives : array-like, optional
        Rates above ``null_rate`` mixed in the statistic (default :func:`default_alternatives`).

    Returns
    -------
    MonitorResult

    Examples
    --------
    >>> monitor_stream([0] * 50, null_rate=0.02).alarm
    False
    >>> monitor_stream([1, 0, 1, 1] + [0] * 20, null_rate=0.02).alarm_at
    4
    """
    r0, a = _rate("null_rate", null_rate), _rate("level", level)
    alts = _alternatives(r0, alternatives)
    x = np.asarray(outcomes, dtype=float).ravel()
    if not np.isin(x, (0.0, 1.0)).all():
        i = int(np.flatnonzero(~np.isin(x, (0.0, 1.0)))[0])
        raise AuditInputError(
            "outcomes", f"{x[i]!r} at audit {i + 1}", "0 or 1", "record each audit as 0 or 1"
        )
    if not x.size:
        return MonitorResult(r0, a, tuple(alts.tolist()), 0, 0, 1.0, 1.0, None)
    log_e = _log_e_process(x, r0, alts)
    over = np.flatnonzero(log_e >= np.log(1.0 / a))
    return MonitorResult(
        null_rate=r0,
        level=a,
        alternatives=tuple(float(v) for v in alts),
        n_audited=int(x.size),
        n_events=int(x.sum()),
        e_value=float(np.exp(log_e[-1])),
        max_e_value=float(np.exp(log_e.max())),
        alarm_at=int(over[0]) + 1 if over.size else None,
    )


def detection_delay(
    true_rate: float,
    *,
    null_rate: float,
    level: float = 0.05,
    alternatives: Any = None,
    horizon: int = 5000,
    n_sims: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Simulated behaviour of :func:`monitor_stream` when the true error rate is ``true_rate``.

    Returns ``alarm_share`` (streams that alarmed within ``horizon`` audits), and the median and
    90th percentile of the audits to the alarm among those that alarmed (``NaN`` if none).

    Examples
    --------
    >>> d = detection_delay(0.08, null_rate=0.02, n_sims=200, horizon=1000, seed=1)
    >>> d["alarm_share"] > 0.95
    True
    """
    r = float(true_rate)
    if not 0.0 <= r <= 1.0:
        raise AuditInputError("true_rate", repr(true_rate), "a rate in [0, 1]", "pass a rate")
    r0, a = _rate("null_rate", null_rate), _rate("level", level)
    alts = _alternatives(r0, alternatives)
    horizon = check_positive_int("horizon", horizon)
    n_sims = check_positive_int("n_sims", n_sims)
    rng = np.random.default_rng(seed)
    first = np.full(n_sims, -1)
    for start in range(0, n_sims, 250):  # chunks keep memory at 250 x horizon x alternatives
        x = (rng.random((min(250, n_sims - start), horizon)) < r).astype(float)
        over = _log_e_process(x, r0, alts) >= np.log(1.0 / a)
        hit = over.any(axis=1)
        first[start : start + x.shape[0]] = np.where(hit, over.argmax(axis=1) + 1, -1)
    alarmed = first[first > 0]
    return {
        "true_rate": r,
        "null_rate": r0,
        "level": a,
        "horizon": float(horizon),
        "n_sims": float(n_sims),
        "alarm_share": float(alarmed.size / n_sims),
        "median_audits_to_alarm": float(np.median(alarmed)) if alarmed.size else float("nan"),
        "p90_audits_to_alarm": float(np.quantile(alarmed, 0.9)) if alarmed.size else float("nan"),
    }
