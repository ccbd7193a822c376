"""Which partitions (sites, hospitals) a cross-partition audit can use, and why the others not.

A cross-partition audit must not stop because one partition is stale (new data landed, its
predictions not re-run yet), was scored by another model, or has no scores file: it audits the
consistent partitions and names the rest with the reason, so the signed report says which
partitions are missing and why.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pandas as pd

from .types import AuditInputError

__all__ = ["UnitWords", "usable_partitions"]


@dataclass(frozen=True)
class UnitWords:
    """How the reasons name a study's rows, their scores and its partitions.

    Examples
    --------
    >>> UnitWords("stay", "score", "hospital").partition
    'hospital'
    """

    unit: str = "image"
    scored: str = "prediction"
    partition: str = "site"


def usable_partitions(
    validated: Mapping[str, pd.DataFrame],
    predictions: Mapping[str, pd.DataFrame],
    *,
    id_column: str,
    identity: Callable[[str], str] | None = None,
    words: UnitWords | None = None,
) -> tuple[list[str], dict[str, str]]:
    """Partitions whose predictions score exactly their validated rows with the audited model.

    Parameters
    ----------
    validated, predictions : mapping
        Partition -> validated table / predictions table (both with ``id_column``; predictions
        with ``model_sha256``).
    id_column : str, keyword-only
        The row identifier the two tables share (``"image_id"``, ``"stay_id"``).
    identity : callable, optional, keyword-only
        ``identity(partition)`` -> the ``model_sha256`` every prediction of the partition must
        carry (``ModelRef.partition_identity``); it may raise ``AuditInputError`` (no scores for
        the partition), which leaves the partition out. ``None``: the model is not checked.
    words : UnitWords, optional, keyword-only
        Words of the reasons (default images, predictions, sites).

    Returns
    -------
    usable : list of str
        Sorted partitions that can be audited.
    left_out : dict
        Partition -> reason, for every other partition named in either mapping.
    """
    w = words or UnitWords()
    rerun = f"(re-run the {w.partition}'s predictions)"
    usable: list[str] = []
    left_out: dict[str, str] = {}
    for name in sorted(set(validated) | set(predictions)):
        rows, pred = validated.get(name), predictions.get(name)
        if rows is None or not len(rows):
            left_out[name] = f"no validated {w.unit}s"
            continue
        if pred is None or not len(pred):
            left_out[name] = f"no predictions yet {rerun}"
            continue
        try:
            expected = identity(name) if identity is not None else None
        except AuditInputError as err:
            left_out[name] = f"no scores for this {w.partition}: {err.fix}"
            continue
        ids, pred_ids = set(rows[id_column].astype(str)), set(pred[id_column].astype(str))
        if ids != pred_ids:
            left_out[name] = (
                f"predictions are stale: {len(ids - pred_ids)} validated {w.unit}s without a "
                f"{w.scored}, {len(pred_ids - ids)} {w.scored}s for {w.unit}s no longer "
                f"validated {rerun}"
            )
            continue
        models = sorted(set(pred["model_sha256"].astype(str)))
        if expected is not None and models != [expected]:
            left_out[name] = (
                f"predictions come from model {models[0][:12]}, not the audited "
                f"{expected[:12]} {rerun}"
            )
            continue
        usable.append(name)
    return usable, left_out
