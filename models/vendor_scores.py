"""The ``multisite_cxr`` vendor scores format, read by the study-neutral core
(:func:`clinaudit.models.scores_csv.read_scores`).

``Image Index`` (the NIH column name) and one probability column (in ``[0, 1]``, never percent)
per finding, named exactly as ``clinaudit.sources.cxr_labels.FINDINGS`` (CheXpert's
``Pleural Effusion`` is accepted for ``Effusion``); other columns are ignored with a warning. The
scores of images quarantined at ingest are set aside and counted (``set_aside``), never taken for
images the label table does not have.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from dataclasses import replace
from typing import Literal

import numpy as np
import pandas as pd

from clinaudit.models.inference import ID_COLUMNS, predictions_frame
from clinaudit.models.scores_csv import (
    ID_COLUMN,
    IdRules,
    ProblemCollector,
    read_scores,
    suggest_column,
)
from clinaudit.sources.cxr_labels import CHEXPERT_ALIASES, FINDINGS
from clinaudit.validation.errors import QuarantineRecord

__all__ = ["CXR_IDS", "quarantined_image_ids", "read_vendor_scores"]


CXR_IDS = IdRules(
    column=ID_COLUMN,
    unit="image",
    table="label table",
    missing_fix=f"name the image id column {ID_COLUMN!r} (header line 1)",
    unknown_fix="score only images of this site/batch, or fix the id spelling; an image whose "
    "label row was refused at ingest (see the site's quarantine report) is not audited: drop "
    "its score, or fix the row and land the batch again",
    unscored_fix="add a row for every image of the label table",
)


def _finding_columns(
    labels: tuple[str, ...],
) -> Callable[[list[str], ProblemCollector], dict[str, str]]:
    """label -> CSV column that holds it (CheXpert aliases accepted, extra columns warned)."""

    def resolve(columns: list[str], col: ProblemCollector) -> dict[str, str]:
        aliases = {finding: alias for alias, finding in CHEXPERT_ALIASES.items()}
        found: dict[str, str] = {}
        for label in labels:
            if label in columns:
                found[label] = label
            elif aliases.get(label) in columns:
                found[label] = aliases[label]
                col.add(
                    "alias",
                    f"column {aliases[label]!r} read as finding {label!r} (CheXpert name)",
                    f"name the column {label!r} to silence this warning",
                    column=aliases[label],
                    severity="warning",
                )
            else:
                col.add(
                    "missing_column",
                    f"no probability column for finding {label!r}{suggest_column(label, columns)}",
                    f"add a column named exactly {label!r} with one probability per image",
                    column=label,
                )
        used = set(found.values()) | {ID_COLUMN}
        for extra in (c for c in columns if c not in used):
            col.add(
                "extra_column",
                f"column {extra!r} is not a finding and is ignored",
                "remove it or check its spelling against the finding names",
                column=extra,
                severity="warning",
            )
        return found

    return resolve


def read_vendor_scores(
    path: str | os.PathLike[str],
    *,
    label_table: pd.DataFrame,
    labels: tuple[str, ...] = FINDINGS,
    site: str,
    batch: str,
    max_per_check: int = 20,
    set_aside: Collection[str] = (),
    others: Literal["error", "ignore"] = "error",
) -> tuple[pd.DataFrame, list[QuarantineRecord]]:
    """Read and validate a vendor scores CSV against the label table it must cover.

    Parameters
    ----------
    path : path
        The CSV (``Image Index`` + one probability column per label).
    label_table : pandas.DataFrame
        Exactly the images the CSV must score (e.g. the validated images of the site), with
        ``image_id``, ``site`` and ``patient_pseudonym``.
    labels : tuple of str
        Findings that must be scored, in output order.
    site, batch : str
        Recorded in every problem (for the quarantine table).
    max_per_check : int
        At most this many problems per (check, column) are listed; the rest are counted.
    set_aside : collection of str
        Ids of images quarantined at ingest (:func:`quarantined_image_ids`): their rows are set
        aside (``predictions.attrs["n_set_aside"]`` counts them), not reported as unknown ids.
    others : {"error", "ignore"}
        Ids absent from ``label_table``: an error (the predictions stage), or skipped (reading
        only some images' scores, e.g. the reference test split's to derive thresholds).

    Returns
    -------
    predictions : pandas.DataFrame
        Rows in label-table order, validated by the ``Predictions`` schema; ``model_sha256`` is
        the sha256 of the CSV file.
    warnings : list of QuarantineRecord
        Non-blocking problems (ignored columns, alias names).

    Raises
    ------
    ScoresError
        If there is any error; ``.problems`` holds all problems (errors and warnings).
    ValueError
        If ``label_table`` lacks the identifier columns or has duplicate image ids.

    Examples
    --------
    >>> preds, warnings = read_vendor_scores(  # doctest: +SKIP
    ...     "scores.csv", label_table=table, site="site_a", batch="b001")
    """
    missing = [c for c in ID_COLUMNS if c not in label_table.columns]
    if missing:
        raise ValueError(
            f"label_table lacks columns {missing} (has {list(label_table.columns)}); pass the "
            "validated images table"
        )
    duplicated = label_table["image_id"][label_table["image_id"].duplicated()].tolist()
    if duplicated:
        raise ValueError(f"label_table has duplicate image ids {duplicated[:5]}; ingest first")
    read = read_scores(
        path,
        expected=label_table["image_id"].astype(str),
        rules=CXR_IDS if others == "error" else replace(CXR_IDS, others="ignore"),
        labels=labels,
        site=site,
        batch=batch,
        max_per_check=max_per_check,
        resolve_columns=_finding_columns(labels),
        set_aside=frozenset(set_aside) - set(label_table["image_id"].astype(str)),
    )
    probs = np.column_stack([read.values[label] for label in labels])
    table = label_table.reset_index(drop=True)
    preds = predictions_frame(table, probs, labels, read.sha256)
    preds.attrs["n_set_aside"] = read.n_set_aside
    return preds, list(read.warnings)


def quarantined_image_ids(quarantine: pd.DataFrame | None) -> set[str]:
    """Image ids of the images ingest quarantined (from each record's ``file``: the NIH
    ``images/<Image Index>`` or the CheXpert relative path), for :func:`read_vendor_scores`'s
    ``set_aside``. Records about the label table itself (a refused row) name no image file and
    give no id."""
    if quarantine is None or not len(quarantine) or "file" not in quarantine.columns:
        return set()
    errors = (
        quarantine[quarantine["severity"] == "error"] if "severity" in quarantine else quarantine
    )
    files = errors["file"].dropna().astype(str)
    files = files[files.str.lower().str.endswith((".png", ".dcm", ".jpg", ".jpeg", ".dicom"))]
    return set(files) | {f.removeprefix("images/") for f in files}
