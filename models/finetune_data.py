"""Site data for focused re-training: a patient-disjoint split, checks and decoded images."""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from clinaudit.audit.bootstrap import derive_rng
from clinaudit.models.inference import ImageFileLoader
from clinaudit.models.training import load_images
from clinaudit.models.vendor_model import stable_patient_order
from clinaudit.sources.landing import image_paths

SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")


def split_site_patients(
    images: pd.DataFrame,
    *,
    patient_col: str = "patient_pseudonym",
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    seed: int = 0,
) -> pd.Series:
    """Patient-disjoint ``"train"``/``"val"``/``"test"`` label of every image.

    Patients (sorted, then shuffled with a generator derived from ``seed``) are dealt to the
    splits in the given proportions (largest remainders; each split gets at least one patient).

    Parameters
    ----------
    images : pandas.DataFrame
        One row per image with a patient column.
    patient_col : str
        The patient column (the bootstrap cluster of the audit).
    fractions : sequence of 3 floats
        Shares of the *patients* in train, val and test; positive, summing to 1.
    seed : int
        Seed; the same table and seed always give the same split.

    Returns
    -------
    pandas.Series
        Index of ``images``, name ``"finetune_split"``.

    Raises
    ------
    ValueError
        If the column is missing or has empty ids, fractions are invalid, or there are fewer than
        three patients.

    Examples
    --------
    >>> t = pd.DataFrame({"patient_pseudonym": list("aabbccdde")})
    >>> s = split_site_patients(t, seed=0)
    >>> sorted(s.unique()), int(t.assign(s=s).groupby("patient_pseudonym")["s"].nunique().max())
    (['test', 'train', 'val'], 1)
    """
    if patient_col not in images.columns:
        raise ValueError(
            f"images has no column {patient_col!r} (columns {list(images.columns)}); pass "
            "patient_col= naming the patient id column of the validated images table"
        )
    shares = np.asarray(fractions, dtype=float)
    if shares.shape != (3,) or (shares <= 0).any() or not math.isclose(shares.sum(), 1.0):
        raise ValueError(
            f"fractions={tuple(fractions)} must be 3 positive shares (train, val, test) summing "
            "to 1, e.g. (0.6, 0.2, 0.2)"
        )
    patients = images[patient_col]
    if patients.isna().any() or (patients.astype(str) == "").any():
        raise ValueError(
            f"column {patient_col!r} has empty patient ids; every image needs its patient id"
        )
    # Ordered by each patient's first image id, not by pseudonym: the split must depend neither
    # on the secret pseudonymisation key nor on the table's row order.
    keys = images["image_id"] if "image_id" in images.columns else None
    unique = stable_patient_order(patients.astype(str).to_numpy(), keys)
    if len(unique) < 3:
        raise ValueError(
            f"{len(unique)} patient(s) in {patient_col!r}; a train/val/test split needs >= 3"
        )
    raw = shares * len(unique)
    counts = np.maximum(np.floor(raw).astype(int), 1)
    while counts.sum() < len(unique):
        counts[int(np.argmax(raw - counts))] += 1
    while counts.sum() > len(unique):
        counts[int(np.argmax(np.where(counts > 1, counts - raw, -np.inf)))] -= 1
    order = derive_rng(int(seed), "split_site_patients").permutation(len(unique))
    assigned = np.repeat(np.array(SPLIT_NAMES), counts)
    split_of = dict(zip(unique[order].tolist(), assigned.tolist(), strict=True))
    return patients.astype(str).map(split_of).rename("finetune_split")


def image_files(
    table: pd.DataFrame, landing_root: str | os.PathLike[str] | None = None, study: str = "cxr"
) -> list[Path]:
    """Image file of every row: the ``image_path`` column, else ``site``/``batch``/``file``.

    Parameters
    ----------
    table : pandas.DataFrame
        Validated images table.
    landing_root : path, optional
        Landing root the ``file`` column is relative to (``<root>/<study>/<site>/<batch>/``).
    study : str
        Study folder under the landing root.

    Returns
    -------
    list of Path
    """
    if "image_path" in table.columns:
        return [Path(p) for p in table["image_path"]]
    if landing_root is None:
        raise ValueError(
            "the images table has no 'image_path' column and no landing_root was given: pass "
            "landing_root= (files are <landing_root>/<study>/<site>/<batch>/<file>) or add "
            "absolute paths as 'image_path'"
        )
    return image_paths(table, landing_root, study)


def decode_table(
    table: pd.DataFrame,
    size: int,
    *,
    landing_root: str | os.PathLike[str] | None = None,
    workers: int = 0,
) -> np.ndarray:
    """Decode a table's images at ``size`` px, refusing files whose sha256 changed since ingest."""
    files = image_files(table, landing_root)
    expected = (
        dict(zip(map(str, files), table["sha256"], strict=True))
        if "sha256" in table.columns
        else None
    )
    loader = ImageFileLoader(size, expected_sha256=expected)
    return load_images(files, size, loader, workers)


def check_site_frames(
    train: pd.DataFrame, val: pd.DataFrame, labels: Sequence[str], focus: Sequence[str]
) -> str:
    """The one site of patient-disjoint train/val frames whose train split has focus positives."""
    for name, frame in (("train_images", train), ("val_images", val)):
        missing = [c for c in ("site", "patient_pseudonym", *labels) if c not in frame.columns]
        if missing or frame.empty:
            raise ValueError(
                f"{name} has {len(frame)} rows and lacks columns {missing}; pass a non-empty "
                "validated images table (cxr_validated_images) of the site"
            )
    sites = sorted(set(train["site"].astype(str)) | set(val["site"].astype(str)))
    if len(sites) != 1:
        raise ValueError(f"train_images/val_images hold sites {sites}; re-train one site at a time")
    shared = sorted(set(train["patient_pseudonym"]) & set(val["patient_pseudonym"]))
    if shared:
        raise ValueError(
            f"{len(shared)} patient(s) are in both train_images and val_images (first "
            f"{shared[0]!r}); split by patient with split_site_patients"
        )
    no_pos = [f for f in focus if not (train[f] == 1).any()]
    if no_pos:
        raise ValueError(
            f"site {sites[0]!r} has no labelled positive image for focus finding(s) {no_pos} in "
            f"its training split ({len(train)} images), so re-training cannot target them; drop "
            "them from focus_findings or collect more labelled images at the site"
        )
    return sites[0]


def has_both_classes(y: np.ndarray) -> bool:
    """Whether the labelled entries of ``y`` hold both a positive and a negative."""
    known = y[~np.isnan(y)]
    return bool(0 < known.sum() < known.size)


def selection_findings(
    y_val: np.ndarray,
    labels: Sequence[str],
    focus: Sequence[str],
    site: str,
    log: Callable[[str], None],
) -> list[str]:
    """Focus findings whose validation AUROC is defined (they select the epoch)."""
    scored = [f for f in focus if has_both_classes(y_val[:, list(labels).index(f)])]
    if not scored:
        raise ValueError(
            f"no focus finding of {list(focus)} has both positive and negative images in the "
            f"validation split of {site!r} ({len(y_val)} images): no epoch can be selected; "
            "enlarge the validation fraction"
        )
    if len(scored) < len(focus):
        undefined = [f for f in focus if f not in scored]
        log(f"validation AUROC undefined for {undefined}; selecting the epoch on {scored}")
    return scored


def table_sha256(table: pd.DataFrame, labels: Sequence[str]) -> str:
    """sha256 of the image hashes (or ids), patients and labels of a table, order-independent."""
    cols = [c for c in ("sha256", "image_id") if c in table.columns][:1]
    body = table[[*cols, "patient_pseudonym", *labels]].sort_values(cols or ["patient_pseudonym"])
    return hashlib.sha256(body.to_csv(index=False).encode()).hexdigest()
