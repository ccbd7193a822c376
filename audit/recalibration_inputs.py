"""Input checks of :func:`clinaudit.audit.recalibration.recalibrate_sites`.

Each check names the offending argument, row or column and the fix
(:class:`~clinaudit.audit.types.AuditInputError`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .types import SCORE_PREFIX, AuditInputError

__all__ = ["check_frame", "check_groups", "check_sensitivity", "check_targets"]


def check_targets(targets: Sequence[str]) -> list[str]:
    """The target names as a list of distinct strings (a bare string is refused)."""
    if isinstance(targets, str) or not targets or len(set(targets)) != len(targets):
        raise AuditInputError(
            "targets", repr(targets), "a non-empty list of distinct names", 'pass e.g. ["Effusion"]'
        )
    return [str(t) for t in targets]


def check_groups(frame: pd.DataFrame, groups: Sequence[str] | None) -> list[str]:
    """Sorted groups to recalibrate: ``groups`` (each present in ``frame``) or, by default, every
    group of the frame without a ``:`` (the reference held-out sets are ``"vendor_dev:test"``)."""
    if not isinstance(frame, pd.DataFrame) or "group" not in frame.columns:
        raise AuditInputError(
            "frame",
            f"{type(frame).__name__} without a 'group' column",
            "the scored_frame DataFrame (group, cluster, <target>, score_<target>)",
            "build it with clinaudit.audit.reference_audit.scored_frame",
        )
    present = sorted(set(frame["group"].astype(str)))
    if groups is None:
        return [g for g in present if ":" not in g]
    wanted = [groups] if isinstance(groups, str) else [str(g) for g in groups]
    unknown = [g for g in wanted if g not in present]
    if unknown:
        raise AuditInputError(
            "groups", f"{unknown}", f"groups of the frame {present}", "pass groups present in frame"
        )
    return sorted(set(wanted))


def check_frame(frame: pd.DataFrame, targets: list[str], groups: list[str]) -> None:
    """Check the scored frame: columns present, unique index, a cluster on every row, labels in
    ``{0, 1}`` or NaN and scores in ``[0, 1]`` for the rows of ``groups``."""
    need = ["cluster", *targets, *(SCORE_PREFIX + t for t in targets)]
    missing = [c for c in need if c not in frame.columns]
    if missing:
        raise AuditInputError(
            "frame",
            f"no column(s) {missing}",
            "group, cluster, each target and score_<target>",
            "build the frame with scored_frame for these targets (or drop the target)",
        )
    if not frame.index.is_unique:
        raise AuditInputError(
            "frame", "a duplicated index", "a unique index", "call frame.reset_index(drop=True)"
        )
    sub = frame[frame["group"].astype(str).isin(groups)]
    if sub["cluster"].isna().any():
        raise AuditInputError(
            "frame",
            f"a missing cluster at index {sub.index[sub['cluster'].isna().to_numpy()][0]!r}",
            "a patient id on every row",
            "fill the cluster column",
        )
    for t in targets:
        y = sub[t].to_numpy(dtype=np.float64)
        s = sub[SCORE_PREFIX + t].to_numpy(dtype=np.float64)
        bad_y = ~np.isnan(y) & (y != 0.0) & (y != 1.0)
        bad_s = ~(np.isfinite(s) & (s >= 0.0) & (s <= 1.0))
        for col, bad, what in (
            (t, bad_y, "labels in {0, 1} or NaN"),
            (SCORE_PREFIX + t, bad_s, "probabilities in [0, 1]"),
        ):
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise AuditInputError(
                    "frame",
                    f"{col}={sub[col].iloc[i]!r} at index {sub.index[i]!r}",
                    what,
                    "fix the row (labels binarised, scores as probabilities from the model)",
                )


def check_sensitivity(value: Mapping[str, float] | float, targets: list[str]) -> np.ndarray:
    """Intended sensitivity per target (in target order), each in ``(0, 1]`` or NaN."""
    if isinstance(value, Mapping):
        missing = [t for t in targets if t not in value]
        if missing:
            raise AuditInputError(
                "intended_sensitivity",
                f"a mapping without {missing}",
                "a sensitivity for every target",
                "add the targets (NaN: no site threshold)",
            )
        raw = [value[t] for t in targets]
    else:
        raw = [value] * len(targets)
    out = []
    for t, v in zip(targets, raw, strict=True):
        ok = not isinstance(v, bool) and isinstance(v, int | float | np.floating)
        if not ok or not (math.isnan(v) or 0.0 < v <= 1.0):
            raise AuditInputError(
                "intended_sensitivity",
                f"{v!r} for target {t!r}",
                "a sensitivity in (0, 1] (NaN: no site threshold for that target)",
                "pass the vendor's sensitivity at its threshold on its held-out set",
            )
        out.append(float(v))
    return np.array(out)
