"""The ``peds_vqa`` simulator's truth sidecar: exact masks and boxes of every simulated finding.

Written by :mod:`~clinaudit.sources.peds_simulator` next to (never inside) the landing area, and
read only by tests and evaluation: ``<truth>/peds_vqa/<site>/<batch>.csv`` (one row per film:
severities, anatomy, the true union box of each category in pixels, NaN when absent) and
``<batch>_masks.npz`` (boolean masks, key ``<image_id>__<category>``). The npz is written with
fixed zip timestamps so that a seed gives the same bytes every time.
"""

from __future__ import annotations

import csv
import io
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["masks_npz_bytes", "read_peds_masks", "read_peds_truth", "union_box", "write_csv_bytes"]

_ZIP_TIME = (2024, 1, 1, 0, 0, 0)


def union_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Pixel box ``(x_min, y_min, x_max, y_max)`` around every true pixel (max edge exclusive).

    Examples
    --------
    >>> m = np.zeros((4, 5), bool); m[1:3, 2] = True
    >>> union_box(m)
    (2, 1, 3, 3)
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        raise ValueError("union_box: the mask is empty; a present finding must have pixels")
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def write_csv_bytes(rows: Sequence[Sequence[object]], columns: Sequence[str]) -> bytes:
    """UTF-8 CSV (``\\n`` line ends) of ``rows`` under the header ``columns``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def masks_npz_bytes(masks: Mapping[str, np.ndarray]) -> bytes:
    """An ``.npz`` (readable by ``numpy.load``) of ``masks``, byte-identical for equal input."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(masks):
            item = io.BytesIO()
            np.save(item, np.asarray(masks[key], dtype=bool), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, item.getvalue())
    return buf.getvalue()


def read_peds_truth(
    truth_root: str | os.PathLike[str], study: str, site: str, batch: str
) -> pd.DataFrame:
    """The per-film truth table of one simulated batch."""
    return pd.read_csv(Path(truth_root) / study / site / f"{batch}.csv")


def read_peds_masks(
    truth_root: str | os.PathLike[str], study: str, site: str, batch: str
) -> dict[str, np.ndarray]:
    """Every mask of one simulated batch, by ``<image_id>__<category>``."""
    with np.load(Path(truth_root) / study / site / f"{batch}_masks.npz") as data:
        return {k: data[k] for k in data.files}
