"""Label-free estimates frozen in an earlier signed package, scored once the month is labelled.

An unlabelled month's PROVISIONAL estimates (:mod:`.unlabelled_months`) are attached to the
signed package as :data:`FROZEN_FILE`. When a later audit finds that month labelled (its outcomes
landed, :mod:`.outcomes`), :func:`score_frozen_estimates` reads the newest *verified* package
that estimated it (:func:`clinaudit.reporting.prior_packages.signed_attachments`: a package that
does not verify is never read, it is named in ``packages_refused``) and compares, per metric, the
frozen estimate with the value the month's labels now show
(:func:`clinaudit.audit.label_free_site.score_estimates`, with ``finding = "sepsis"``): the
error, whether the interval covered, and the same for the baseline of carrying the reference's
value forward (the reference the estimate used, ``hospital`` or ``network``, as its labelled
stays are now, less the month itself).

A month is scored only when every one of its audited stays is labelled now, with the model and
the operating threshold it was estimated with; otherwise it is listed in ``not_scored`` with the
reason (another model, another threshold, still partly unlabelled, no audited stays). The
estimates are realised on "the estimated stays" when the month's stay ids are those the estimate
described (:func:`.unlabelled_months.month_stays_sha256`), else on "the month's stays now".
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from clinaudit.audit.label_free_site import SCORE_COLUMNS, score_estimates
from clinaudit.audit.schemas import OutputSchema, count_field, schema_columns
from clinaudit.reporting.prior_packages import signed_attachments

from .tables import TARGET
from .unlabelled_months import LABEL_FREE_COLUMNS, month_stays_sha256

__all__ = [
    "FROZEN_FILE",
    "SCORED_COLUMNS",
    "SUMMARY_COLUMNS",
    "FrozenScores",
    "LabelFreeScored",
    "LabelFreeScoredSummary",
    "score_frozen_estimates",
]

#: The signed package's attachment holding the frozen estimates (``report._attachments``).
FROZEN_FILE = "tables/label_free.csv"
#: What the scoring needs of a frozen table.
_NEEDED = ("hospital", "month", "metric", "method", "estimate", "ci_low", "ci_high", "reference",
           "model_sha256", "threshold", "stays_sha256")  # fmt: skip


class LabelFreeScored(OutputSchema):
    """The evidence's ``label_free_scored`` table: per (hospital, month, metric) of a month
    estimated in an earlier package and labelled now, the frozen estimate and interval, the
    realised value, the reference's value carried forward, both errors, coverage, and where the
    estimate was frozen (``frozen_in``: the audit id) and realised (``realised_on``)."""

    hospital: Series[str]
    month: Series[str]
    finding: Series[str]
    metric: Series[str]
    estimate: Series[float] = pa.Field(nullable=True)
    ci_low: Series[float] = pa.Field(nullable=True)
    ci_high: Series[float] = pa.Field(nullable=True)
    realised: Series[float] = pa.Field(nullable=True)
    reference: Series[float] = pa.Field(nullable=True)
    error: Series[float] = pa.Field(nullable=True)
    baseline_error: Series[float] = pa.Field(nullable=True)
    covered: Series[bool]
    n_labelled: Series[int] = count_field()
    frozen_in: Series[str]
    realised_on: Series[str]


class LabelFreeScoredSummary(OutputSchema):
    """The evidence's ``label_free_summary`` table: per (hospital, month, metric) scored, the
    cells, the estimable ones, the mean absolute error of the estimate and of the baseline, their
    ratio, the mean bias and the interval coverage."""

    hospital: Series[str]
    month: Series[str]
    metric: Series[str]
    cells: Series[int] = count_field()
    estimable: Series[int] = count_field()
    mae: Series[float] = pa.Field(nullable=True)
    baseline_mae: Series[float] = pa.Field(nullable=True)
    ratio: Series[float] = pa.Field(nullable=True)
    bias: Series[float] = pa.Field(nullable=True)
    coverage: Series[float] = pa.Field(nullable=True)
    frozen_in: Series[str]


SCORED_COLUMNS: tuple[str, ...] = schema_columns(LabelFreeScored)
SUMMARY_COLUMNS: tuple[str, ...] = schema_columns(LabelFreeScoredSummary)
assert SCORED_COLUMNS == ("hospital", "month", *SCORE_COLUMNS, "frozen_in", "realised_on")


@dataclass(frozen=True)
class FrozenScores:
    """The scored cells, their summary and the facts the report prints: ``scored_from``
    (``"<hospital> <month>"`` -> audit id), ``not_scored`` (the same key -> why) and
    ``packages_refused`` (``"<audit_id>: <why>"``)."""

    scored: pd.DataFrame
    summary: pd.DataFrame
    facts: dict[str, Any] = field(default_factory=dict)


def _empty(columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})


def _read_frozen(data: bytes) -> pd.DataFrame | list[str]:
    """The frozen table, or the columns it lacks."""
    frame = pd.read_csv(
        io.BytesIO(data),
        dtype={"hospital": str, "month": str, "model_sha256": str, "stays_sha256": str},
        keep_default_na=False,
        na_values=[""],
    )
    missing = [c for c in _NEEDED if c not in frame.columns]
    if missing:
        return missing
    return frame.assign(
        model_sha256=frame["model_sha256"].fillna(""), stays_sha256=frame["stays_sha256"].fillna("")
    )


def _as_scored(frame: pd.DataFrame) -> pd.DataFrame:
    """``score_<finding>`` and ``<finding>`` columns of ``score_estimates``."""
    return pd.DataFrame(
        {f"score_{TARGET}": frame["score"].to_numpy(float), TARGET: frame[TARGET].to_numpy(float)}
    )


def _why_not(frozen: pd.DataFrame, month: pd.DataFrame, model: str, threshold: float) -> str:
    if month.empty:
        return "no audited stays of the month now"
    if month[TARGET].isna().any():
        n = int(month[TARGET].isna().sum())
        return f"{n} of its {len(month)} stays are still unlabelled"
    was = str(frozen["model_sha256"].iloc[0])
    if was != model:
        return (f"the estimates are of model {was[:12] or 'unknown'}, the audited model is "
                f"{model[:12]}")  # fmt: skip
    thr = float(frozen["threshold"].iloc[0])
    if abs(thr - threshold) > 1e-12:
        return f"the estimates are at threshold {thr:g}, the audit's is {threshold:g}"
    return ""


def score_frozen_estimates(
    frame: pd.DataFrame,
    *,
    reports: Path | None,
    study: str,
    threshold: float,
    model_sha256: str,
) -> FrozenScores:
    """Score the estimates earlier verified packages froze for months that are labelled now.

    Parameters
    ----------
    frame : pandas.DataFrame
        The audited stays (labelled and unlabelled): ``stay_id``, ``hospital``, ``admit_month``,
        ``score`` and ``sepsis``.
    reports : Path or None, keyword-only
        Root of the signed packages (``None``: none read, nothing scored).
    study : str, keyword-only
        The study whose packages are read.
    threshold : float, keyword-only
        The audit's operating threshold.
    model_sha256 : str, keyword-only
        The audited model's identity.

    Returns
    -------
    FrozenScores
        ``scored`` (:class:`LabelFreeScored`), ``summary`` (:class:`LabelFreeScoredSummary`) and
        the facts (see :class:`FrozenScores`).
    """
    found, refused = signed_attachments(reports, study, FROZEN_FILE)
    keys = [frame["hospital"].astype(str), frame["admit_month"].astype(str)]
    months = {k: g for k, g in frame.groupby(keys, sort=True)}
    labelled = frame[frame[TARGET].notna()]
    seen: set[tuple[str, str]] = set()
    cells, summaries = [], []
    scored_from: dict[str, str] = {}
    not_scored: dict[str, str] = {}
    for att in found:  # newest first: the newest package that estimated a month is read
        frozen_all = _read_frozen(att.data)
        if isinstance(frozen_all, list):
            refused.append(f"{att.audit_id}: {FROZEN_FILE} lacks columns {frozen_all}")
            continue
        for (h, m), frozen in frozen_all.groupby(["hospital", "month"], sort=True):
            key = (str(h), str(m))
            if key in seen:
                continue
            seen.add(key)
            month = months.get(key, frame.iloc[:0])
            if len(month) and month[TARGET].isna().all():
                continue  # still unlabelled: estimated again, nothing to score yet
            why = _why_not(frozen, month, model_sha256, threshold)
            name = f"{key[0]} {key[1]}"
            if why:
                not_scored[name] = f"estimates frozen in {att.audit_id}: {why}"
                continue
            others = labelled[
                ~((labelled["hospital"].astype(str) == key[0])
                  & (labelled["admit_month"].astype(str) == key[1]))
            ]  # fmt: skip
            if str(frozen["reference"].iloc[0]) == "hospital":
                others = others[others["hospital"].astype(str) == key[0]]
            same = month_stays_sha256(month["stay_id"]) == str(frozen["stays_sha256"].iloc[0])
            realised_on = "the estimated stays" if same else "the month's stays now"
            c, s = score_estimates(
                frozen.assign(finding=TARGET), _as_scored(others), _as_scored(month),
                thresholds={TARGET: threshold},
            )  # fmt: skip
            tags = {"hospital": key[0], "month": key[1], "frozen_in": att.audit_id}
            cells.append(c.assign(**tags, realised_on=realised_on)[list(SCORED_COLUMNS)])
            summaries.append(s.assign(**tags)[list(SUMMARY_COLUMNS)])
            scored_from[name] = att.audit_id
    scored = pd.concat(cells, ignore_index=True) if cells else _empty(SCORED_COLUMNS)
    summary = pd.concat(summaries, ignore_index=True) if summaries else _empty(SUMMARY_COLUMNS)
    if cells:
        scored["covered"] = scored["covered"].astype(bool)
        scored["n_labelled"] = scored["n_labelled"].astype(int)
        summary[["cells", "estimable"]] = summary[["cells", "estimable"]].astype(int)
    facts = {
        "file": FROZEN_FILE,
        "packages_read": sorted(set(scored_from.values())),
        "scored_from": scored_from,
        "not_scored": not_scored,
        "packages_refused": refused,
    }
    return FrozenScores(scored, summary, facts)


assert set(_NEEDED) <= set(LABEL_FREE_COLUMNS), "the frozen table lacks a scored column"
