"""Input checks of the reading-queue simulation: one finite number per study, one bucket per study.

Shared by :mod:`clinaudit.audit.triage_queue` and :mod:`clinaudit.audit.triage_outcomes`, so every
per-study argument fails with the same :class:`~clinaudit.audit.types.AuditInputError` wording:
the argument, the first bad row and value, and how to fix it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .selective import BUCKETS  # the buckets of audit/selective.assign_buckets, one definition
from .types import AuditInputError

__all__ = ["BUCKETS", "check_buckets", "check_study_array", "is_number"]


def is_number(value: object) -> bool:
    """A real number (``bool`` excluded)."""
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def check_study_array(
    name: str,
    values: Any,
    n: int | None = None,
    *,
    low: float | None = None,
    high: float | None = None,
) -> np.ndarray:
    """Return ``values`` as a finite 1-D float array (one value per study) or raise.

    Parameters
    ----------
    name : str
        Argument name, for the error.
    values : array-like of shape (n,)
        One number per study.
    n : int, optional
        Required length (the number of studies).
    low, high : float, optional, keyword-only
        Inclusive bounds.

    Returns
    -------
    ndarray of float64

    Raises
    ------
    AuditInputError
        On a wrong shape or length, non-numbers, ``NaN`` / infinite values or values out of bounds.

    Examples
    --------
    >>> check_study_array("arrival_day", [0, 0.5], 2, low=0.0).tolist()
    [0.0, 0.5]
    """
    arr = values.to_numpy() if isinstance(values, pd.Series | pd.Index) else np.asarray(values)
    expected_n = (
        "at least one study" if n is None else f"{n} values, one per study (as arrival_day)"
    )
    if arr.ndim != 1 or arr.shape[0] == 0 or (n is not None and arr.shape[0] != n):
        raise AuditInputError(
            name,
            f"an array of shape {arr.shape}",
            f"shape (n,): {expected_n}",
            f"pass one {name} value per study, in the same order as arrival_day",
        )
    try:
        out = arr.astype(np.float64)
    except (TypeError, ValueError) as err:
        raise AuditInputError(
            name, f"values of dtype {arr.dtype}", "numbers", f"convert {name} to float"
        ) from err
    bad = ~np.isfinite(out)
    bad |= (out < low) if low is not None else False
    bad |= (out > high) if high is not None else False
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        bounds = "".join(f" {op} {v}" for op, v in ((">=", low), ("<=", high)) if v is not None)
        raise AuditInputError(
            name,
            f"{float(out[row])!r} at row {row}",
            f"finite numbers{bounds}",
            f"fix {name} at row {row} (NaN is not allowed: every study needs a value)",
        )
    return out


def check_buckets(bucket: Any, n: int) -> np.ndarray:
    """Return ``bucket`` as a str array of :data:`BUCKETS` (one per study) or raise."""
    arr = bucket.to_numpy() if isinstance(bucket, pd.Series) else np.asarray(bucket, dtype=object)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise AuditInputError(
            "bucket",
            f"an array of shape {arr.shape}",
            f"shape ({n},), one bucket per study",
            "pass one bucket per study, in the same order as arrival_day",
        )
    known = np.isin(arr.astype(object), np.array(BUCKETS, dtype=object))
    if not known.all():
        row = int(np.flatnonzero(~known)[0])
        value = arr[row].item() if isinstance(arr[row], np.generic) else arr[row]
        raise AuditInputError(
            "bucket",
            f"{value!r} at row {row}",
            f"one of {list(BUCKETS)}",
            "map the model's output to a bucket (out-of-scope studies go to 'uncertain')",
        )
    return arr.astype(str)
