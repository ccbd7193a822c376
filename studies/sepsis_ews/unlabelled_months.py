"""PROVISIONAL evidence of ``sepsis_ews``: label-free estimates of a hospital's unlabelled months.

A stay's outcome is coded weeks after discharge, so the latest month of a hospital often lands
with empty ``sepsis`` labels. An *unlabelled month* is a (hospital, admission month) whose stays
are all unlabelled. For each one, :func:`label_free_table` estimates what its labels will show
with :func:`clinaudit.audit.label_free.estimate_cell` (CBPE: an isotonic score-to-risk map fitted
on a labelled reference; expected AUROC, sensitivity and specificity at the operating threshold,
and the prevalence, with predictive bootstrap intervals; the EM prior correction only when the
prevalence shift is identified; ATC accuracy as a cross-check):

* **reference**: the hospital's own labelled stays when they hold at least
  ``min_reference_pos`` septic and ``min_reference_neg`` non-septic stays, else the pooled
  labelled stays of the network (column ``reference``: ``hospital`` or ``network``);
* **gate** (:func:`clinaudit.audit.label_free.support_gate`): the estimate is withheld, with the
  reason, when the month's scores leave the reference's score range, or when the month's inputs
  drifted from the reference stays: per model feature the PSI of the month against the reference
  (:func:`.drift.window_bins`, missing values as their own bin) fails when it reaches the
  monitoring plan's action level *and* exceeds the PSI that sampling noise alone reaches at the
  month's size (:func:`clinaudit.audit.psi.psi_noise_bound` at ``1 - alpha / m`` for ``m``
  features), the rule of the card drift.

These are estimates under assumptions (no concept shift: the reference's score-to-risk relation
holds at the hospital; inputs inside the reference's support), never measurements; nothing of
the recommendation reads them. Unlabelled stays of a month that also has labelled stays are
counted (:func:`unlabelled_counts`) and left out of every metric.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from clinaudit.audit.bootstrap import derive_rng
from clinaudit.audit.label_free import GateResult, estimate_cell, support_gate
from clinaudit.audit.psi import psi_from_proportions, psi_noise_bound
from clinaudit.audit.schemas import OutputSchema, count_field, schema_columns, validate_table
from clinaudit.audit.types import AuditInputError

from .drift import window_bins
from .tables import TARGET, split_labelled

__all__ = [
    "LABEL_FREE_COLUMNS",
    "LabelFreeEstimates",
    "LabelFreeSettings",
    "SUPPORT_MAX_OUTSIDE",
    "label_free_table",
    "month_stays_sha256",
    "unlabelled_counts",
    "unlabelled_months",
]

#: The estimates' statuses: estimated, or withheld with the reason.
LABEL_FREE_STATUSES: tuple[str, ...] = ("estimated", "withheld")
#: Which labelled stays an unlabelled month is estimated from.
REFERENCES: tuple[str, ...] = ("hospital", "network")
_PSI_EPSILON = 1e-4
#: Share of a month's scores outside the reference's score range (beyond the expected 1 %) that
#: withholds its estimates (:func:`clinaudit.audit.label_free.support_gate`'s default).
SUPPORT_MAX_OUTSIDE = 0.05


class LabelFreeEstimates(OutputSchema):
    """The evidence stage's ``label_free`` table: one row per (hospital, month, metric, method)
    of every unlabelled month; ``estimate``/``ci_low``/``ci_high`` NaN when withheld (``reason``
    says why) and ``ci_*`` NaN for the ATC cross-check (no interval)."""

    hospital: Series[str]
    month: Series[str] = pa.Field(str_matches=r"^\d{4}-\d{2}$")
    metric: Series[str] = pa.Field(
        isin=["auroc", "sensitivity", "specificity", "accuracy", "prevalence"]
    )
    method: Series[str] = pa.Field(isin=["cbpe", "atc"])
    estimate: Series[float] = pa.Field(nullable=True, ge=0.0, le=1.0)
    ci_low: Series[float] = pa.Field(nullable=True, ge=0.0, le=1.0)
    ci_high: Series[float] = pa.Field(nullable=True, ge=0.0, le=1.0)
    status: Series[str] = pa.Field(isin=list(LABEL_FREE_STATUSES))
    reason: Series[str]
    n_stays: Series[int] = count_field()
    reference: Series[str] = pa.Field(isin=list(REFERENCES))
    n_reference: Series[int] = count_field()
    n_reference_pos: Series[int] = count_field()
    prior_shift_applied: Series[bool]
    #: The audited model's identity, the operating threshold and the sha256 of the month's sorted
    #: stay ids (``""`` when not known): what a later audit checks before it scores the estimates
    #: frozen in a signed package (:mod:`.label_free_scoring`).
    model_sha256: Series[str]
    threshold: Series[float]
    stays_sha256: Series[str]

    class Config:
        ordered = True


#: Columns of the ``label_free`` table (its schema's).
LABEL_FREE_COLUMNS: tuple[str, ...] = schema_columns(LabelFreeEstimates)


@dataclass(frozen=True)
class LabelFreeSettings:
    """The settings of the label-free estimates (stored in the evidence's settings, ``extra``).

    ``n_boot``, ``ci_level``, ``seed``: of the predictive bootstrap (the audit's); a hospital's
    own labelled stays are the reference from ``min_reference_pos`` septic and
    ``min_reference_neg`` non-septic stays; the drift gate fails a feature at ``psi_action``
    (the monitoring plan's action level) above its noise bound (``psi_noise_draws``,
    ``psi_noise_alpha``); ``max_outside``: share of the month's scores outside the reference's
    range (beyond the expected 1 %) that withholds.
    """

    n_boot: int
    ci_level: float
    seed: int
    min_reference_pos: int
    min_reference_neg: int
    psi_action: float
    psi_noise_draws: int
    psi_noise_alpha: float
    max_outside: float

    def to_facts(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_facts(cls, facts: Mapping[str, Any]) -> LabelFreeSettings:
        return cls(**facts)


def _empty() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in LABEL_FREE_COLUMNS})


def unlabelled_months(frame: pd.DataFrame) -> pd.DataFrame:
    """The (hospital, month) pairs whose stays are all unlabelled, with their ``n_stays``.

    >>> f = pd.DataFrame({"hospital": ["a", "a", "b"], "admit_month": ["2024-01"] * 3,
    ...                   "sepsis": pd.array([1, None, None], dtype="Int64")})
    >>> unlabelled_months(f).to_dict("records")
    [{'hospital': 'b', 'month': '2024-01', 'n_stays': 1}]
    """
    keys = [frame["hospital"].astype(str), frame["admit_month"].astype(str)]
    labelled = frame[TARGET].notna().groupby(keys).sum()
    size = frame.groupby(keys).size()
    out = size[labelled.reindex(size.index) == 0].rename("n_stays").reset_index()
    out.columns = ["hospital", "month", "n_stays"]
    return out.astype({"n_stays": int})


def unlabelled_counts(frame: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Unlabelled stays per hospital and month in months that also have labelled stays (left out
    of every metric and not estimated)."""
    months = unlabelled_months(frame)
    whole = set(zip(months["hospital"], months["month"], strict=True))
    out: dict[str, dict[str, int]] = {}
    gone = frame[frame[TARGET].isna()]
    for (h, m), part in gone.groupby(
        [gone["hospital"].astype(str), gone["admit_month"].astype(str)]
    ):
        if (h, m) not in whole:
            out.setdefault(str(h), {})[str(m)] = len(part)
    return out


def _window_drift(
    reference: pd.DataFrame, window: pd.DataFrame, features: Sequence[str], s: LabelFreeSettings,
    rng: np.random.Generator,
) -> dict[str, str]:  # fmt: skip
    """Failed drift checks of the month against the reference stays (name -> reason)."""
    failed = {}
    quantile = 1.0 - s.psi_noise_alpha / max(len(features), 1)
    for f in features:
        expected, actual = window_bins(reference[f], window[f])
        psi = float(psi_from_proportions(expected, actual, _PSI_EPSILON))
        if psi < s.psi_action:
            continue
        bound = psi_noise_bound(
            expected, len(window), len(reference), quantile=quantile, draws=s.psi_noise_draws,
            rng=rng, epsilon=_PSI_EPSILON,
        )  # fmt: skip
        if psi > bound:
            failed[f"input drift {f}"] = (
                f"PSI {psi:.2f} against the reference stays (action level {s.psi_action:.2f}, "
                f"noise bound {bound:.2f})"
            )
    return failed


def month_stays_sha256(stay_ids: Sequence[str] | pd.Series) -> str:
    """sha256 of a month's stay ids, sorted, one per line (which stays an estimate described).

    >>> month_stays_sha256(["b", "a"]) == month_stays_sha256(["a", "b"])
    True
    """
    text = "".join(f"{s}\n" for s in sorted(map(str, stay_ids)))
    return hashlib.sha256(text.encode()).hexdigest()


def _model_sha256(target: pd.DataFrame) -> str:
    if "model_sha256" not in target.columns:
        return ""
    return ";".join(sorted(set(target["model_sha256"].astype(str))))


def _reference(
    labelled: pd.DataFrame, hospital: str, s: LabelFreeSettings
) -> tuple[pd.DataFrame, str]:
    own = labelled[labelled["hospital"].astype(str) == hospital]
    n_pos = int(own[TARGET].sum())
    if n_pos >= s.min_reference_pos and len(own) - n_pos >= s.min_reference_neg:
        return own, "hospital"
    return labelled, "network"


def label_free_table(
    frame: pd.DataFrame,
    *,
    threshold: float,
    settings: LabelFreeSettings,
    features: Sequence[str],
) -> pd.DataFrame:
    """Label-free estimates of every unlabelled month (see the module docstring).

    Parameters
    ----------
    frame : pandas.DataFrame
        Scored stays, labelled and unlabelled (``sepsis`` ``<NA>``), with ``hospital``,
        ``admit_month``, ``score`` and the model ``features``.
    threshold : float, keyword-only
        The operating threshold (``score >= threshold`` alerts).
    settings : LabelFreeSettings, keyword-only
        From the evidence's settings.
    features : sequence of str, keyword-only
        The model features compared by the drift gate (those every audited hospital sent).

    Returns
    -------
    pandas.DataFrame
        :class:`LabelFreeEstimates` (no rows when every month has labels).

    Raises
    ------
    AuditInputError
        If a column is missing.
    """
    missing = [c for c in ("hospital", "admit_month", "score", TARGET, *features)
               if c not in frame.columns]  # fmt: skip
    if missing:
        raise AuditInputError(
            "stays", f"no columns {missing}", "scored stays with the model features",
            "pass the audited stays (evaluate.audited_stays)",
        )  # fmt: skip
    months = unlabelled_months(frame)
    if months.empty:
        return validate_table(_empty(), LabelFreeEstimates)
    labelled, _ = split_labelled(frame)
    s, parts = settings, []
    for h, m, n in months.itertuples(index=False):
        target = frame[(frame["hospital"].astype(str) == h) & (frame["admit_month"] == m)]
        ref, used = _reference(labelled, h, s)
        ref_y = ref[TARGET].to_numpy(float)
        n_pos = int(ref_y.sum())
        key = f"label_free/{h}/{m}"
        if n_pos == 0 or n_pos == len(ref):
            why = (f"not estimable: the {used} reference has {n_pos} septic of {len(ref)} "
                   "labelled stays (both classes needed)")  # fmt: skip
            gate = GateResult(False, why, float("nan"))  # estimate_cell withholds every row
            cell = estimate_cell(
                ref["score"], ref_y, target["score"], threshold=threshold, gate=gate
            )
        else:
            ref_scores = ref["score"].to_numpy(float)
            drift = _window_drift(ref, target, features, s, derive_rng(s.seed, f"{key}/drift"))
            gate = support_gate(ref_scores, target["score"], max_outside=s.max_outside,
                                drift=drift)  # fmt: skip
            cell = estimate_cell(
                ref_scores, ref_y, target["score"].to_numpy(float), threshold=threshold,
                n_boot=s.n_boot, ci_level=s.ci_level, gate=gate, seed=s.seed, key=key,
            )  # fmt: skip
        parts.append(
            cell.assign(
                hospital=h,
                month=m,
                n_stays=int(n),
                reference=used,
                n_reference=len(ref),
                n_reference_pos=n_pos,
                status=np.where(cell["estimable"], "estimated", "withheld"),
                model_sha256=_model_sha256(target),
                threshold=float(threshold),
                stays_sha256=month_stays_sha256(target["stay_id"])
                if "stay_id" in target.columns
                else "",
            )  # fmt: skip
        )
    table = pd.concat(parts, ignore_index=True)
    table["reason"] = table["reason"].astype(str)
    table["prior_shift_applied"] = table["prior_shift_applied"].astype(bool)
    return validate_table(table.loc[:, list(LABEL_FREE_COLUMNS)], LabelFreeEstimates)
