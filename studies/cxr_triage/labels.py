"""The triage label contract, the scope rule and the reading order of study ``cxr_triage``.

* **Labels** (from the 14 ChestX-ray14 findings of a validated table): ``abnormal`` is 1 when any
  finding is present, 0 when every finding is labelled absent ("No Finding"), NaN otherwise (an
  unlabelled pile study, or a finding left unlabelled without any positive one). ``critical`` is
  the same over the policy's critical findings (pneumothorax, effusion, ...).
* **Scope**: a study the model may clear at all. Out of scope, by rule, whatever the score: a
  view other than the policy's frontal views (lateral), an age below the policy's minimum
  (pediatric), or an image whose clipped fraction or dynamic range fails the policy's quality
  limits. :func:`scope_reasons` says why, per row ("" = in scope).
* **Reading order** inside the queue: :func:`reading_priority` is the calibrated P(abnormal)
  times a severity proxy ``1 + critical_weight x P(critical)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from clinaudit.audit.types import AuditInputError
from clinaudit.sources.cxr_labels import FINDINGS
from clinaudit.sources.nih_labels import FindingProblem, parse_finding_labels

from .policy import ScopeSettings

__all__ = [
    "AGE_BANDS",
    "TARGETS",
    "age_band",
    "read_labels",
    "reading_priority",
    "scope_reasons",
    "triage_labels",
]

#: The triage model's outputs: any finding, and any critical finding.
TARGETS: tuple[str, ...] = ("abnormal", "critical")
#: Age bands of the subgroup re-certification (years; the lower bound is inclusive).
#: Two adult bands keep every band large enough to be certified on its own (a band needs at
#: least 299 abnormal calibration studies for a 1 % miss rate at delta 5 %).
AGE_BANDS: tuple[tuple[str, float], ...] = (("<18", 0.0), ("18-64", 18.0), ("65+", 65.0))


def _any_of(table: pd.DataFrame, findings: Sequence[str]) -> np.ndarray:
    missing = [f for f in findings if f not in table.columns]
    if missing:
        raise AuditInputError(
            "table",
            f"no column(s) {missing}",
            f"the 14 finding columns {list(FINDINGS)}",
            "pass a validated image table",
        )
    values = table[list(findings)].to_numpy(dtype=float)
    positive = (values == 1.0).any(axis=1)
    all_negative = (values == 0.0).all(axis=1)
    return np.where(positive, 1.0, np.where(all_negative, 0.0, np.nan))


def triage_labels(table: pd.DataFrame, *, critical: Sequence[str]) -> pd.DataFrame:
    """``abnormal`` and ``critical`` (1 / 0 / NaN) of every row of a validated image table.

    Examples
    --------
    >>> row = dict.fromkeys(FINDINGS, 0.0)
    >>> t = pd.DataFrame([row, {**row, "Mass": 1.0}, {**row, "Hernia": 1.0},
    ...                   dict.fromkeys(FINDINGS, np.nan)])
    >>> triage_labels(t, critical=["Mass"]).to_numpy().tolist()
    [[0.0, 0.0], [1.0, 1.0], [1.0, 0.0], [nan, nan]]
    """
    unknown = sorted(set(critical) - set(FINDINGS))
    if unknown or not critical:
        raise AuditInputError(
            "critical", repr(list(critical)), f"findings from {list(FINDINGS)}", "name findings"
        )
    return pd.DataFrame(
        {"abnormal": _any_of(table, FINDINGS), "critical": _any_of(table, critical)},
        index=table.index,
    )


def read_labels(findings: pd.Series, *, critical: Sequence[str]) -> pd.DataFrame:
    """``abnormal`` and ``critical`` of radiologist reads (NIH ``Finding Labels`` texts), by the
    same contract as :func:`triage_labels`; an empty text (not read) gives NaN.

    Examples
    --------
    >>> read_labels(pd.Series(["No Finding", "Mass|Hernia", ""]), critical=["Mass"]
    ...             ).to_numpy().tolist()
    [[0.0, 0.0], [1.0, 1.0], [nan, nan]]
    """
    rows = []
    for i, text in findings.fillna("").astype(str).items():
        if not text.strip():
            rows.append(dict.fromkeys(FINDINGS, np.nan))
            continue
        parsed = parse_finding_labels(text)
        if isinstance(parsed, FindingProblem):
            raise AuditInputError(f"read_findings[{i}]", repr(text), parsed.message, parsed.fix)
        rows.append(parsed)
    frame = pd.DataFrame(rows, index=findings.index, columns=list(FINDINGS), dtype=float)
    return triage_labels(frame, critical=critical)


def age_band(age: Any) -> np.ndarray:
    """Age band of each age in years (:data:`AGE_BANDS`).

    Examples
    --------
    >>> age_band([5, 18, 64.9, 85]).tolist()
    ['<18', '18-64', '18-64', '65+']
    """
    years = np.asarray(age, dtype=float)
    if np.isnan(years).any() or (years < 0).any():
        raise AuditInputError("age", "a missing or negative age", "years >= 0", "fix the ages")
    edges = np.array([lo for _, lo in AGE_BANDS[1:]])
    names = np.array([name for name, _ in AGE_BANDS], dtype=object)
    return names[np.searchsorted(edges, years, side="right")]


def scope_reasons(table: pd.DataFrame, scope: ScopeSettings) -> pd.Series:
    """Why each row is out of scope (``""`` = in scope; several reasons joined by ``"; "``).

    Examples
    --------
    >>> from clinaudit.studies.cxr_triage.policy import ScopeSettings
    >>> s = ScopeSettings(("PA", "AP"), 18, 0.05, 0.25)
    >>> t = pd.DataFrame({"view_position": ["PA", "LL", "AP"], "age": [40.0, 50.0, 9.0],
    ...                   "clipped_fraction": [0.0, 0.0, 0.2], "dynamic_range": [0.5, 0.5, 0.5]})
    >>> scope_reasons(t, s).tolist()
    ['', 'view LL (not PA/AP)', 'age 9 < 18; clipped fraction 0.200 > 0.05']
    """
    needed = ["view_position", "age", "clipped_fraction", "dynamic_range"]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise AuditInputError(
            "table", f"no column(s) {missing}", f"columns {needed}", "pass a validated table"
        )
    views = "/".join(scope.views)
    parts = [
        np.where(
            ~table["view_position"].isin(scope.views),
            "view " + table["view_position"].astype(str) + f" (not {views})",
            "",
        ),
        np.where(
            table["age"] < scope.min_age_years,
            "age " + table["age"].map("{:g}".format) + f" < {scope.min_age_years}",
            "",
        ),
        np.where(
            table["clipped_fraction"] > scope.max_clipped_fraction,
            "clipped fraction "
            + table["clipped_fraction"].map("{:.3f}".format)
            + f" > {scope.max_clipped_fraction:g}",
            "",
        ),
        np.where(
            table["dynamic_range"] < scope.min_dynamic_range,
            "dynamic range "
            + table["dynamic_range"].map("{:.3f}".format)
            + f" < {scope.min_dynamic_range:g}",
            "",
        ),
    ]
    joined = ["; ".join(p for p in row if p) for row in zip(*parts, strict=True)]
    return pd.Series(joined, index=table.index, dtype=object)


def reading_priority(p_abnormal: Any, p_critical: Any, *, critical_weight: float) -> np.ndarray:
    """Value of a radiologist's read: ``P(abnormal) x (1 + critical_weight x P(critical))``.

    Examples
    --------
    >>> reading_priority([0.5, 0.5], [0.0, 0.5], critical_weight=2.0).tolist()
    [0.5, 1.0]
    """
    p = np.asarray(p_abnormal, dtype=float)
    c = np.asarray(p_critical, dtype=float)
    if p.shape != c.shape or not (np.isfinite(p).all() and np.isfinite(c).all()):
        raise AuditInputError(
            "p_critical", f"shape {c.shape} vs {p.shape}", "finite, one per study", "score all"
        )
    return p * (1.0 + critical_weight * c)
