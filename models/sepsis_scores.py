"""Scores-only audits of study ``sepsis_ews``: a vendor's ``stay_id,score`` CSV instead of a model.

Format: UTF-8, one header line ``stay_id,score``, one row per stay of the stays table, ``score``
the probability of sepsis in ``[0, 1]`` (never percent; no blanks or NaN). Other columns are
ignored. Every problem is reported at once as a
:class:`~clinaudit.validation.errors.QuarantineRecord` naming the CSV line (header = line 1), the
column and the fix, using the CXR scores reader's helpers (:mod:`clinaudit.models.scores_csv`):
empty, duplicate or unknown stay ids, stays without a score, missing/non-numeric/out-of-range
scores, missing columns. Any error raises :class:`~clinaudit.models.scores_csv.ScoresError`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from clinaudit.models.scores_csv import (
    ScoresError,
    _check_probabilities,
    _Collector,
    _read_raw,
    _suggest,
)
from clinaudit.sources.landing import sha256_file

SCORES_ID = "stay_id"
SCORES_COLUMN = "score"


def _check_stay_ids(frame: pd.DataFrame, expected: pd.Series, col: _Collector) -> pd.Series:
    ids = frame[SCORES_ID].str.strip()
    first: dict[str, int] = {}
    known = set(expected)
    for i, stay in enumerate(ids):
        line = i + 2
        if not stay:
            col.add(
                "empty_id", "stay id is empty", "fill in the stay id", row=line, column=SCORES_ID
            )
        elif stay in first:
            col.add(
                "duplicate_id",
                f"stay id {stay!r} already scored on line {first[stay]}",
                "keep one row per stay",
                row=line,
                column=SCORES_ID,
            )
        elif stay not in known:
            col.add(
                "unknown_id",
                f"stay id {stay!r} is not in the stays table",
                "score only stays of this table, or fix the id",
                row=line,
                column=SCORES_ID,
            )
        first.setdefault(stay, line)
    for stay in expected:
        if stay not in first:
            col.add(
                "unscored_id",
                f"stay {stay!r} of the stays table has no score",
                "add a row for every stay",
                column=SCORES_ID,
            )
    return ids


def read_sepsis_scores(
    path: str | os.PathLike[str],
    stays: pd.DataFrame,
    *,
    site: str = "",
    batch: str = "",
    max_per_check: int = 20,
) -> pd.DataFrame:
    """Read a vendor's ``stay_id,score`` CSV and check it against the stays it must cover.

    Parameters
    ----------
    path : path
        UTF-8 CSV with a header line ``stay_id,score``; one row per stay, probabilities in
        ``[0, 1]`` (never percent), no blanks/NaN. Other columns are ignored.
    stays : pandas.DataFrame
        The validated stays (``stay_id`` unique); the CSV must score exactly these.
    site, batch : str
        Recorded in every problem.
    max_per_check : int
        Problems listed per (check, column); the rest are counted.

    Returns
    -------
    pandas.DataFrame
        ``stay_id, score, model_sha256`` in ``stays`` order; ``model_sha256`` is the CSV's
        sha256.

    Raises
    ------
    ScoresError
        With every problem (``.problems``: QuarantineRecords naming line, column and fix).
    """
    path = Path(path)
    expected = stays["stay_id"].astype(str)
    if expected.duplicated().any():
        raise ValueError("stays has duplicate stay ids; validate it first (validate_stays)")
    col = _Collector(site, batch, str(path), max_per_check)
    frame = _read_raw(path, col)
    if frame is None:
        raise ScoresError(path, col.finish())
    for name in (SCORES_ID, SCORES_COLUMN):
        if name not in frame.columns:
            col.add(
                "missing_column",
                f"no {name!r} column{_suggest(name, list(frame.columns))}",
                f"name the header columns {SCORES_ID!r} and {SCORES_COLUMN!r}",
                column=name,
            )
    if col.has_errors:
        raise ScoresError(path, col.finish())
    ids = _check_stay_ids(frame, expected, col)
    values = _check_probabilities(frame, {SCORES_COLUMN: SCORES_COLUMN}, col)[SCORES_COLUMN]
    if col.has_errors:
        raise ScoresError(path, col.finish())
    position = pd.Series(np.arange(len(ids)), index=ids.to_numpy())
    order = position.loc[expected.to_numpy()].to_numpy()
    return pd.DataFrame(
        {"stay_id": expected.to_numpy(), "score": values[order], "model_sha256": sha256_file(path)}
    )
