"""Patient-level splits of study ``multimodal_triage``: development clinics and the held-out one.

Every photo of a development-clinic patient falls in one split, drawn from a keyed hash of
``(clinic, patient)`` (a fixed salt): independent of labels, photos and landing order, stable as
new batches land, and identical in every process. The held-out (deployment) clinic's photos are
``held_out``: never trained on, never used to fit anything.

>>> t = pd.DataFrame({"site": ["a", "a", "b"], "patient": ["p1", "p1", "p2"]})
>>> assign_splits(t, held_out="b", shares=(0.6, 0.12, 0.14)).tolist()[2]
'held_out'
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

__all__ = ["SPLITS", "assign_splits", "patient_uniform"]

#: Split names, in the order of the shares.
SPLITS: tuple[str, ...] = ("train", "validation", "calibration", "test")
_SALT = "clinaudit.multimodal_triage.splits/v1"


def patient_uniform(sites: pd.Series, patients: pd.Series) -> np.ndarray:
    """A uniform number in [0, 1) per row from the keyed hash of its clinic and patient."""
    return np.array(
        [
            int(hashlib.sha256(f"{_SALT}/{s}/{p}".encode()).hexdigest()[:13], 16) / 16**13
            for s, p in zip(sites.astype(str), patients.astype(str), strict=True)
        ],
        dtype=np.float64,
    )


def assign_splits(
    table: pd.DataFrame, *, held_out: str, shares: tuple[float, float, float]
) -> pd.Series:
    """The split of every row (columns ``site``, ``patient``).

    Parameters
    ----------
    table : DataFrame
        Validated pairs.
    held_out : str
        The held-out clinic (its rows are ``held_out``).
    shares : (float, float, float)
        Train, validation and calibration shares of the development patients; the rest is
        ``test``.

    Returns
    -------
    Series
        One of :data:`SPLITS` or ``held_out`` per row, on ``table``'s index.
    """
    u = patient_uniform(table["site"], table["patient"])
    edges = np.cumsum(shares)
    split = np.asarray(SPLITS, dtype=object)[np.searchsorted(edges, u, side="right")]
    split = np.where(table["site"].astype(str).to_numpy() == held_out, "held_out", split)
    return pd.Series(split, index=table.index, name="split", dtype=object)
