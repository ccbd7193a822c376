"""Regression guard of a focused re-training: per-cell AUROC before and after, on unseen data.

``before`` and ``after`` are :func:`clinaudit.audit.reference_audit.scored_frame` tables of the
*same* images (other sites entirely, the retrained site's test split, the vendor's held-out
set), scored by the parent and by the re-trained package. Both go through
:func:`clinaudit.audit.discrimination.audit_discrimination` with the same seed; because the rows,
groups and patients are identical, the two bootstraps resample the same patients in every
replicate, so ``after - before`` per replicate is a *paired* bootstrap of the AUROC change.

A cell *regresses* when its AUROC after is below its AUROC before minus the tolerance (cells with
status "ok" only); the re-trained package is *accepted* when no cell regresses.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from clinaudit.audit.bootstrap import percentile_ci
from clinaudit.audit.discrimination import DiscriminationResult, audit_discrimination
from clinaudit.audit.schemas import (
    CellKey,
    count_field,
    difference_field,
    probability_field,
    status_field,
    validate_table,
)
from clinaudit.audit.types import SCORE_PREFIX, STATUS_OK, AuditInputError

#: ``split`` of a row: the retrained site's held-out test split, or all rows of another group.
GUARD_SPLITS: tuple[str, ...] = ("test", "all")


class RetrainingContract(CellKey):
    """Contract B: the columns of the re-training table that a study's decisions and report read.

    AUROC columns are ``NaN`` for cells with status ``"insufficient data"``; ``regressed`` and
    ``improved`` are then False.
    """

    split: Series[str] = pa.Field(isin=list(GUARD_SPLITS))
    status: Series[str] = status_field()
    n: Series[int] = count_field()
    n_pos: Series[int] = count_field()
    auroc_before: Series[float] = probability_field()
    auroc_before_ci_low: Series[float] = probability_field()
    auroc_before_ci_high: Series[float] = probability_field()
    auroc_after: Series[float] = probability_field()
    auroc_after_ci_low: Series[float] = probability_field()
    auroc_after_ci_high: Series[float] = probability_field()
    auroc_change: Series[float] = difference_field()
    tolerance: Series[float] = pa.Field(ge=0.0, lt=1.0)
    regressed: Series[bool]
    improved: Series[bool]


class RetrainingTable(RetrainingContract):
    """The regression guard's whole table (columns in the order of :data:`GUARD_COLUMNS`)."""

    targeted: Series[bool]
    n_neg: Series[int] = count_field()
    auroc_change_ci_low: Series[float] = difference_field()
    auroc_change_ci_high: Series[float] = difference_field()


#: Contract B's summary: the keys of the re-training summary dict
#: (:func:`clinaudit.models.retrain.retrain_worst_site`) that its consumers read; it has more.
RETRAINING_SUMMARY_KEYS: tuple[str, ...] = (
    "retrained_site", "cells_targeted", "accepted", "regressions", "epochs", "train_seconds",
    "device",
)  # fmt: skip

#: Column order of the table; ``strict`` validation makes it agree with :class:`RetrainingTable`.
GUARD_COLUMNS: tuple[str, ...] = (
    "group",
    "target",
    "split",
    "targeted",
    "status",
    "n",
    "n_pos",
    "n_neg",
    "auroc_before",
    "auroc_before_ci_low",
    "auroc_before_ci_high",
    "auroc_after",
    "auroc_after_ci_low",
    "auroc_after_ci_high",
    "auroc_change",
    "auroc_change_ci_low",
    "auroc_change_ci_high",
    "tolerance",
    "regressed",
    "improved",
)


@dataclass(frozen=True)
class GuardResult:
    """The ``cxr_retraining`` table, the verdict and the regressed cells (``"group/target"``)."""

    table: pd.DataFrame
    accepted: bool
    regressions: tuple[str, ...]
    tolerance: float


def _targeted(cells: Iterable[tuple[str, str] | str]) -> set[tuple[str, str]]:
    out = set()
    for cell in cells:
        if isinstance(cell, str):
            group, sep, target = cell.rpartition("/")
            if not sep:
                raise AuditInputError(
                    "targeted_cells",
                    repr(cell),
                    "(group, target) pairs or 'group/target' strings",
                    "name each targeted cell as e.g. ('site_b', 'Effusion') or 'site_b/Effusion'",
                )
            out.add((group, target))
        else:
            group, target = cell
            out.add((str(group), str(target)))
    return out


def _check_pair(before: pd.DataFrame, after: pd.DataFrame, targets: Sequence[str]) -> None:
    needed = ["group", "cluster", *targets, *(SCORE_PREFIX + t for t in targets)]
    for name, frame in (("before", before), ("after", after)):
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise AuditInputError(
                name,
                f"columns {list(frame.columns)}",
                f"also {missing}",
                "build both frames with clinaudit.audit.reference_audit.scored_frame",
            )
    keys = ["group", "cluster", *targets] + (["image_id"] if "image_id" in before else [])
    same = len(before) == len(after) and all(
        before[c].reset_index(drop=True).equals(after[c].reset_index(drop=True)) for c in keys
    )
    if not same:
        raise AuditInputError(
            "after",
            f"{len(after)} rows vs {len(before)} in before, or different {keys} values",
            "the same images, in the same order, with the same labels as before",
            "score the same evaluation images with the parent and the re-trained package",
        )


def _discrimination(
    frame: pd.DataFrame, targets: Sequence[str], **options: object
) -> DiscriminationResult:
    scores = frame[[SCORE_PREFIX + t for t in targets]].set_axis(list(targets), axis=1)
    return audit_discrimination(
        frame[list(targets)],
        scores,
        groups=frame["group"].to_numpy(),
        clusters=frame["cluster"].to_numpy(),
        targets=list(targets),
        **options,  # type: ignore[arg-type]
    )


def regression_guard(
    before: pd.DataFrame,
    after: pd.DataFrame,
    *,
    tolerance: float,
    targeted_cells: Iterable[tuple[str, str] | str],
    targets: Sequence[str] | None = None,
    retrained_site: str | None = None,
    n_boot: int = 1000,
    ci_level: float = 0.95,
    min_pos: int = 10,
    min_neg: int = 10,
    seed: int = 0,
) -> GuardResult:
    """Compare per-cell AUROC before/after re-training and flag regressions.

    Parameters
    ----------
    before, after : pandas.DataFrame
        :func:`~clinaudit.audit.reference_audit.scored_frame` tables of the same images (same order,
        labels, groups and patients), scored by the parent and by the re-trained model. None of
        these images may have been used for fine-tuning.
    tolerance : float
        Largest accepted AUROC drop (e.g. 0.03).
    targeted_cells : iterable
        Cells the re-training targeted, as ``(group, target)`` or ``"group/target"``.
    targets : sequence of str, optional
        Targets compared (default: every column with a ``score_`` twin).
    retrained_site : str, optional
        Group whose rows are the retrained site's test split (``split`` "test"; other groups
        "all"); default: the group of the targeted cells when there is exactly one.
    n_boot, ci_level, min_pos, min_neg, seed
        As in :func:`~clinaudit.audit.discrimination.audit_discrimination`.

    Returns
    -------
    GuardResult
        ``table`` (:class:`RetrainingTable`, columns in the order of ``GUARD_COLUMNS``, one row per
        (group, target)), ``accepted``, ``regressions``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 2, 400).astype(float)
    >>> f = pd.DataFrame({"group": "a", "cluster": np.arange(400), "F": y,
    ...                   "score_F": y + rng.normal(size=400)})
    >>> regression_guard(f, f, tolerance=0.03, targeted_cells=[("a", "F")], n_boot=0).accepted
    True
    """
    if not 0.0 <= float(tolerance) < 1.0:
        raise AuditInputError("tolerance", repr(tolerance), "a number in [0, 1)", "e.g. 0.03")
    if targets is None:
        targets = [c[len(SCORE_PREFIX) :] for c in before.columns if c.startswith(SCORE_PREFIX)]
    targets = list(targets)
    _check_pair(before, after, targets)
    targeted = _targeted(targeted_cells)
    if retrained_site is None:
        sites = {g for g, _ in targeted}
        retrained_site = sites.pop() if len(sites) == 1 else None
    options = dict(n_boot=n_boot, ci_level=ci_level, min_pos=min_pos, min_neg=min_neg, seed=seed)
    d_before = _discrimination(before, targets, **options)
    d_after = _discrimination(after, targets, **options)
    tb, ta = d_before.table, d_after.table
    table = pd.DataFrame(
        {
            "group": tb["group"].astype(str),
            "target": tb["target"].astype(str),
            "status": tb["status"],
            "n": tb["n"],
            "n_pos": tb["n_pos"],
            "n_neg": tb["n_neg"],
        }
    )
    for when, t in (("before", tb), ("after", ta)):
        for suffix in ("", "_ci_low", "_ci_high"):
            table[f"auroc_{when}{suffix}"] = t[f"auroc{suffix}"].to_numpy(float)
    table["split"] = np.where(table["group"] == retrained_site, "test", "all")
    pairs = list(zip(table["group"], table["target"], strict=True))
    table["targeted"] = [pair in targeted for pair in pairs]
    table["auroc_change"] = table["auroc_after"] - table["auroc_before"]
    change_ci = [_paired_ci(d_before, d_after, pair, ci_level) for pair in pairs]
    table["auroc_change_ci_low"] = [lo for lo, _ in change_ci]
    table["auroc_change_ci_high"] = [hi for _, hi in change_ci]
    table["tolerance"] = float(tolerance)
    ok = table["status"] == STATUS_OK
    table["regressed"] = ok & (table["auroc_after"] < table["auroc_before"] - float(tolerance))
    table["improved"] = ok & (table["auroc_change_ci_low"] > 0)
    table = table.loc[:, list(GUARD_COLUMNS)].reset_index(drop=True)
    validate_table(table, RetrainingTable)
    regressions = tuple(
        f"{g}/{t}" for g, t in table.loc[table["regressed"], ["group", "target"]].itertuples(False)
    )
    return GuardResult(table, not regressions, regressions, float(tolerance))


def _paired_ci(
    before: DiscriminationResult,
    after: DiscriminationResult,
    key: tuple[str, str],
    ci_level: float,
) -> tuple[float, float]:
    """Percentile interval of the per-replicate AUROC change (NaN without replicates)."""
    if key not in before.replicates or key not in after.replicates:
        return float("nan"), float("nan")
    diff = after.replicates[key]["auroc"] - before.replicates[key]["auroc"]
    return percentile_ci(diff, ci_level)
