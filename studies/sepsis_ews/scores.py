"""Scores-only audits of ``sepsis_ews``: a vendor's ``stay_id,score`` CSV instead of a model.

Format: UTF-8, one header line ``stay_id,score``, one row per stay, ``score`` the probability of
sepsis in ``[0, 1]`` (never percent; no blanks or NaN); other columns are ignored. The vendor
sends one file per hospital (``<hospital>.csv`` in a folder) or one file for the whole network.
Reading uses the study-neutral core :func:`clinaudit.models.scores_csv.read_scores`: every problem
is reported at once as a :class:`~clinaudit.validation.errors.QuarantineRecord` naming the CSV
line (header = line 1), the column and the fix, and any error raises
:class:`~clinaudit.models.scores_csv.ScoresError`.

With one file for the network, a hospital's predictions skip the rows of other hospitals'
stays; :func:`unmatched_score_ids` then lists the rows whose stay belongs to no validated or
quarantined stay of any hospital, so the evidence stage reports them (they are never dropped
silently). Rows of stays quarantined at ingest are set aside and counted
(:func:`count_set_aside`): the audit runs on the other stays and the report says so.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from clinaudit.audit.schemas import OutputSchema, probability_field, validate_table
from clinaudit.models.scores_csv import IdRules, read_scores
from clinaudit.models.scores_csv import score_ids as read_score_ids
from clinaudit.validation.errors import QuarantineRecord, records_to_frame

from .schema import StayQuarantine

__all__ = [
    "SCORES_COLUMN",
    "SCORES_ID",
    "StayScores",
    "count_set_aside",
    "read_sepsis_scores",
    "score_ids",
    "unmatched_score_ids",
]

SCORES_ID = "stay_id"
SCORES_COLUMN = "score"


class StayScores(OutputSchema):
    """One hospital's predictions (the ``predictions`` stage, from the embedded model or the
    vendor's CSV): one probability per validated stay and the identity of what scored it (the
    model package's or the CSV's sha256)."""

    stay_id: Series[str] = pa.Field(unique=True)
    score: Series[float] = probability_field(nullable=False)
    model_sha256: Series[str] = pa.Field(str_matches=r"^[0-9a-f]{64}$")

    class Config:
        ordered = True


def _rules(shared: bool) -> IdRules:
    return IdRules(
        column=SCORES_ID,
        unit="stay",
        table="stays table",
        missing_fix=f"name the header columns {SCORES_ID!r} and {SCORES_COLUMN!r}",
        unknown_fix="score only stays of this table, or fix the id",
        unscored_fix="add a row for every stay",
        others="ignore" if shared else "error",
    )


def read_sepsis_scores(
    path: str | os.PathLike[str],
    stays: pd.DataFrame,
    *,
    site: str = "",
    batch: str = "",
    shared: bool = False,
    max_per_check: int = 20,
    set_aside: Iterable[str] = (),
) -> pd.DataFrame:
    """Read a vendor's ``stay_id,score`` CSV and check it against the stays it must cover.

    Parameters
    ----------
    path : path
        UTF-8 CSV with a header line ``stay_id,score``.
    stays : pandas.DataFrame
        The validated stays (``stay_id`` unique); the CSV must score every one of them.
    site, batch : str
        Recorded in every problem.
    shared : bool
        The file scores the whole network: rows of stays not in ``stays`` are skipped (check them
        with :func:`unmatched_score_ids`); otherwise they are errors.
    max_per_check : int
        Problems listed per (check, column); the rest are counted.
    set_aside : iterable of str
        Stay ids quarantined at ingest: their rows are set aside and counted, not unknown ids.

    Returns
    -------
    pandas.DataFrame
        ``stay_id, score, model_sha256`` in ``stays`` order; ``model_sha256`` is the CSV's sha256.
        ``attrs["n_other_rows"]``: rows skipped as other hospitals' stays;
        ``attrs["n_set_aside"]``: rows set aside as quarantined stays.

    Raises
    ------
    ScoresError
        With every problem (``.problems``: QuarantineRecords naming line, column and fix).
    ValueError
        If ``stays`` has duplicate stay ids.

    Examples
    --------
    >>> scores = read_sepsis_scores("hosp_a.csv", stays, site="hosp_a")  # doctest: +SKIP
    """
    expected = stays["stay_id"].astype(str)
    if expected.duplicated().any():
        raise ValueError("stays has duplicate stay ids; validate it first (validate_stays)")
    read = read_scores(
        path,
        expected=expected,
        rules=_rules(shared),
        labels=(SCORES_COLUMN,),
        site=site,
        batch=batch,
        max_per_check=max_per_check,
        set_aside=set_aside,
    )
    out = pd.DataFrame(
        {
            "stay_id": expected.to_numpy(),
            "score": read.values[SCORES_COLUMN].astype(float),
            "model_sha256": read.sha256,
        }
    )
    out.attrs["n_other_rows"] = read.n_other_rows
    out.attrs["n_set_aside"] = read.n_set_aside
    return out


def score_ids(path: str | os.PathLike[str]) -> pd.Series:
    """The stripped stay ids of a scores file, one per row (index: row position).

    Raises
    ------
    ScoresError
        If the file cannot be read or has no ``stay_id`` column.
    """
    return read_score_ids(path, SCORES_ID, _rules(True).missing_fix)


def unmatched_score_ids(
    path: str | os.PathLike[str], known: Iterable[str], *, set_aside: Iterable[str] = ()
) -> pd.DataFrame:
    """Rows of a network-wide scores file whose stay is none of ``known`` (quarantine records).

    Parameters
    ----------
    path : path
        The scores CSV (validated per hospital by :func:`read_sepsis_scores`).
    known : iterable of str
        Stay ids of every validated stay of every hospital.
    set_aside : iterable of str, keyword-only
        Stay ids quarantined at ingest: their rows are set aside (count them with
        :func:`count_set_aside`), not unmatched.

    Returns
    -------
    pandas.DataFrame
        One quarantine record per such row (:class:`~.schema.StayQuarantine`: check
        ``unknown_id``, its line, the id in ``value``); empty when every row belongs to a
        validated or quarantined stay.

    Raises
    ------
    ScoresError
        If the file cannot be read or has no ``stay_id`` column.
    """
    ids = score_ids(path)
    bad = np.flatnonzero((~ids.isin(set(known) | set(set_aside)) & ids.ne("")).to_numpy())
    records = [
        QuarantineRecord(
            "*", "", str(path), int(i) + 2, SCORES_ID, "unknown_id",
            f"stay id {ids.iloc[i]!r} is neither a validated nor a quarantined stay of any "
            "hospital",
            "score only landed stays, or fix the id",
        )
        for i in bad
    ]  # fmt: skip
    unknown = [str(ids.iloc[i]) for i in bad]
    frame = records_to_frame(records).assign(value=unknown, stay_id=unknown)
    return validate_table(frame, StayQuarantine)


def count_set_aside(path: str | os.PathLike[str], set_aside: Iterable[str]) -> int:
    """Rows of a scores file whose stay id is one of ``set_aside`` (stays quarantined at ingest).

    Examples
    --------
    >>> count_set_aside("scores.csv", {"HA-202401-00007"})  # doctest: +SKIP
    1
    """
    return int(score_ids(path).isin(set(set_aside)).sum())
