"""Deterministic JSON for metric tables: same table -> byte-identical text.

Rows keep the table's order; keys are sorted; floats are rounded to 12 significant digits and
written with ``repr`` (shortest round-trip form); ``NaN``/``inf`` become ``null`` (JSON has no
NaN); numpy scalars become Python numbers; booleans stay booleans; anything else is written as
``str``.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

SIGNIFICANT_DIGITS = 12


def _plain(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        x = float(value)
        if not math.isfinite(x):
            return None
        return float(f"{x:.{SIGNIFICANT_DIGITS}g}")
    if isinstance(value, str):
        return value
    if value is pd.NA or value is pd.NaT:
        return None
    return str(value)


def metrics_to_json(df: pd.DataFrame) -> str:
    """Serialise a metrics table to deterministic JSON (a list of row objects).

    Parameters
    ----------
    df : pandas.DataFrame
        Any audit table (discrimination, calibration, drift, worst cells).

    Returns
    -------
    str
        ``json.dumps`` of the rows with sorted keys, 12 significant digits, ``null`` for NaN.

    Examples
    --------
    >>> metrics_to_json(pd.DataFrame({"b": [0.1 + 0.2], "a": [float("nan")]}))
    '[{"a": null, "b": 0.3}]'
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(
            f"df: received {type(df).__name__}; expected a pandas DataFrame. "
            "Fix: pass the table returned by an audit function."
        )
    columns = [str(c) for c in df.columns]
    if len(set(columns)) != len(columns):
        raise ValueError(
            f"df: received duplicate column names {columns}; expected unique names. "
            "Fix: rename the duplicated columns."
        )
    records = [
        {col: _plain(v) for col, v in zip(columns, row, strict=True)}
        for row in df.itertuples(index=False, name=None)
    ]
    return json.dumps(records, sort_keys=True, allow_nan=False, separators=(", ", ": "))
