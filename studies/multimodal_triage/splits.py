"""Patient-level splits of study ``multimodal_triage``: development clinics and the held-out one.

Every photo of a development-clinic patient falls in one split, drawn from a salted hash of the
patient's first landed photo (``clinic/batch/image id``; :func:`~clinaudit.models.vendor_model.
patient_uniform`): independent of labels, photos, row order and the pseudonymisation key (a hash
of the pseudonym would split the same data differently in every home with its own key), stable as
later batches land, and identical in every process. The held-out (deployment) clinic's photos are
``held_out``: never trained on, never used to fit anything.

>>> t = pd.DataFrame({"site": ["a", "a", "b"], "patient": ["p1", "p1", "p2"],
...                   "batch": "b1", "image_id": ["i1", "i2", "i3"]})
>>> assign_splits(t, held_out="b", shares=(0.6, 0.12, 0.14)).tolist()[2]
'held_out'
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from clinaudit.audit.types import AuditInputError
from clinaudit.models.vendor_model import patient_uniform

__all__ = ["SPLITS", "assign_splits"]

#: Split names, in the order of the shares.
SPLITS: tuple[str, ...] = ("train", "validation", "calibration", "test")
_SALT = "clinaudit.multimodal_triage.splits/v1"


def assign_splits(
    table: pd.DataFrame, *, held_out: str, shares: tuple[float, float, float]
) -> pd.Series:
    """The split of every row.

    Parameters
    ----------
    table : DataFrame
        Validated pairs (columns ``site``, ``patient``, ``batch``, ``image_id``).
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
    missing = [c for c in ("site", "patient", "batch", "image_id") if c not in table.columns]
    if missing:
        raise AuditInputError(
            "pairs table", f"no columns {missing}", "columns site, patient, batch and image_id",
            "pass the validated pairs of the clinics",
        )  # fmt: skip
    site = table["site"].astype(str)
    u = patient_uniform(
        (site + "/" + table["patient"].astype(str)).to_numpy(),
        (site + "/" + table["batch"].astype(str) + "/" + table["image_id"].astype(str)).to_numpy(),
        _SALT,
    )
    edges = np.cumsum(shares)
    split = np.asarray(SPLITS, dtype=object)[np.searchsorted(edges, u, side="right")]
    split = np.where(table["site"].astype(str).to_numpy() == held_out, "held_out", split)
    return pd.Series(split, index=table.index, name="split", dtype=object)
