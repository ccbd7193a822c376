"""The embedded vendor model: trained on the reference (vendor) site, packaged and evaluated.

Only the reference site's ``train`` split is used for fitting; a patient-disjoint slice of it is
the validation set used for the operating thresholds; the ``test`` split (the vendor's "current
single-site held-out evaluation set") is touched once, after training, for the held-out AUROCs
written into the model card. A package is keyed by the training spec and the content of the
training data, so an unchanged spec on unchanged data reuses the package instead of retraining.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from clinaudit.models.evaluation import fit_operating_thresholds, per_label_auroc
from clinaudit.models.inference import predict_images
from clinaudit.models.model_card import ModelCard, summarize_training_data
from clinaudit.models.package import (
    LoadedPackage,
    ModelPackageError,
    load_package,
    save_package,
)
from clinaudit.models.training import EpochRecord, TrainConfig, load_images, train_multilabel
from clinaudit.validation.quality import QUALITY_FEATURES

VENDOR_NAME = "clinaudit embedded vendor (SIMULATED)"
INTENDED_USE = (
    "Research demonstration only. Multi-label detection of the 14 ChestX-ray14 findings on adult "
    "frontal chest radiographs; trained on SIMULATED images of one development site."
)


@dataclass(frozen=True)
class VendorTrainingSpec:
    """Everything that determines the embedded vendor model (one home for the defaults)."""

    train: TrainConfig = TrainConfig()
    val_fraction: float = 0.15
    target_sensitivity: float = 0.8
    load_workers: int = 2

    def key(self, data_hash: str) -> str:
        """Package key: spec + training data content, 16 hex characters."""
        doc = json.dumps({"spec": asdict(self), "data": data_hash}, sort_keys=True, default=str)
        return hashlib.sha256(doc.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class VendorModelResult:
    """Where the package is and what it achieved on the vendor's held-out set."""

    package_dir: Path
    package_sha256: str
    reused: bool
    heldout_auroc: dict[str, float]
    heldout_positives: dict[str, int]
    n_train: int | None
    n_val: int | None
    n_test: int
    seconds: float

    @property
    def heldout_mean_auroc(self) -> float:
        values = [v for v in self.heldout_auroc.values() if np.isfinite(v)]
        return float(np.mean(values)) if values else float("nan")


def stable_patient_order(patients: Sequence[str], keys: Sequence[str] | None = None) -> np.ndarray:
    """Distinct patients in an order that does not depend on the pseudonymisation key.

    Pseudonyms are keyed hashes, so sorting them would make every seeded split depend on the
    site's secret key. Patients are ordered by their smallest ``keys`` value (e.g. the image ids
    the site assigned); without keys, by pseudonym (then the split depends on the key).
    """
    frame = pd.DataFrame({"p": np.asarray(patients, dtype=str)})
    if keys is None:
        return np.unique(frame["p"].to_numpy())
    frame["k"] = np.asarray(keys, dtype=str)
    first = frame.groupby("p", sort=False)["k"].min()
    return first.sort_values(kind="stable").index.to_numpy(dtype=str)


def patient_uniform(patients: Sequence[str], keys: Sequence[str], salt: str) -> np.ndarray:
    """A number in ``[0, 1)`` per row, the same for every row of a patient, that depends neither
    on the pseudonymisation key nor on the row order.

    Comparing it with cumulative shares gives a patient-disjoint split that is the same in every
    process and every home on the same landed data (pseudonyms are keyed hashes, and a home
    without ``CLINAUDIT_PSEUDONYM_KEY`` makes its own key, so a hash of the pseudonym would
    split the same data differently in every fresh home).

    Parameters
    ----------
    patients : sequence of str
        Patient (pseudonym) per row; only which rows share a patient is used.
    keys : sequence of str
        A stable identifier per row, e.g. ``"<batch>/<image id>"``. A patient is identified by
        its smallest key: with batch names that sort in landing order, its first landed image,
        so the patient keeps its split as later batches land.
    salt : str
        Key of the hash: another salt gives another, equally valid, partition.

    Returns
    -------
    numpy.ndarray
        ``float64`` of shape ``(n,)``.

    Examples
    --------
    >>> u = patient_uniform(["a", "b", "a"], ["b1/x2", "b1/x1", "b2/x9"], "s")
    >>> bool(u[0] == u[2]), bool(0.0 <= u.min() and u.max() < 1.0)
    (True, True)
    """
    frame = pd.DataFrame({"p": np.asarray(patients, dtype=str), "k": np.asarray(keys, dtype=str)})
    if len(frame) and (frame["k"] == "").any():
        row = int(np.flatnonzero(frame["k"].to_numpy() == "")[0])
        raise ValueError(f"keys: row {row} is empty; every row needs a stable identifier")
    first = frame.groupby("p", sort=False)["k"].transform("min")
    secret = salt.encode()

    def unit(key: str) -> float:
        digest = hmac.new(secret, key.encode(), hashlib.sha256).digest()
        return int.from_bytes(digest[:8], "big") / 2.0**64

    values = {k: unit(k) for k in pd.unique(first)}
    return first.map(values).to_numpy(dtype=np.float64)


def patient_disjoint_split(
    patients: Sequence[str], fraction: float, *, seed: int, keys: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (rest, held) with about ``fraction`` of the *patients* held out.

    ``keys`` (e.g. image ids) fix the patients' order independently of their pseudonyms (see
    :func:`stable_patient_order`).

    Examples
    --------
    >>> rest, held = patient_disjoint_split(["a", "a", "b", "c"], 0.34, seed=0)
    >>> bool((rest ^ held).all())
    True
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction={fraction} must lie strictly between 0 and 1")
    patients = np.asarray(patients, dtype=str)
    unique = stable_patient_order(patients, keys)
    rng = np.random.default_rng(seed)
    n_held = max(1, int(round(fraction * len(unique))))
    held_patients = rng.choice(unique, size=n_held, replace=False)
    held = np.isin(patients, held_patients)
    return ~held, held


def _labels(table: pd.DataFrame, labels: Sequence[str]) -> np.ndarray:
    return table[list(labels)].to_numpy(dtype=np.float32)


def _operating_thresholds(
    y_val: np.ndarray,
    p_val: np.ndarray,
    y_train: np.ndarray,
    p_train: Callable[[], np.ndarray],
    *,
    labels: Sequence[str],
    target_sensitivity: float,
) -> tuple[dict[str, float], dict[str, str]]:
    """Thresholds reaching ``target_sensitivity`` per label, and where each came from.

    From the validation slice where it has positives; else from the training images (in-sample,
    so optimistic, and said so); a label without any positive keeps 0.5 and is reported as such.
    """
    thresholds: dict[str, float] = {}
    sources: dict[str, str] = {}
    train_probs: np.ndarray | None = None
    for j, label in enumerate(labels):
        for name, y, probs in (
            ("validation", y_val, p_val),
            ("training (in-sample)", y_train, None),
        ):
            if not np.any(y[:, j] == 1):
                continue
            if probs is None:
                train_probs = p_train() if train_probs is None else train_probs
                probs = train_probs
            fitted = fit_operating_thresholds(
                y[:, [j]], probs[:, [j]], target_sensitivity=target_sensitivity, labels=(label,)
            )
            thresholds[label], sources[label] = fitted[label], name
            break
        else:
            thresholds[label], sources[label] = 0.5, "no positive image: 0.5, not fitted"
    return thresholds, sources


def _reusable_package(
    package_dir: Path,
    labels: Sequence[str],
    log: Callable[[str], None],
    *,
    what: str = "vendor model package",
) -> LoadedPackage | None:
    """The verified package at ``package_dir`` or ``None`` (absent, or failing verification).

    ``what`` names the package in the log messages (e.g. ``"transferred package"``).
    """
    if not (package_dir / "model_card.json").exists():
        return None
    try:
        loaded = load_package(package_dir, expected_labels=tuple(labels))
    except ModelPackageError as err:
        # Kept, not deleted: a package that stopped verifying is evidence (corruption, tampering).
        rejected = package_dir.parent / "rejected" / f"{package_dir.name}-{time.time_ns()}"
        rejected.parent.mkdir(parents=True, exist_ok=True)
        os.replace(package_dir, rejected)
        log(f"package {package_dir} does not verify ({err}); moved to {rejected}; retraining")
        return None
    log(f"reusing {what} {package_dir} (same spec and training data)")
    return loaded


def train_vendor_model(
    reference: pd.DataFrame,
    files: Sequence[Path],
    packages_root: Path,
    *,
    spec: VendorTrainingSpec | None = None,
    log: Callable[[str], None] = print,
) -> VendorModelResult:
    """Train (or reuse) the embedded vendor model on the reference site's train split.

    Parameters
    ----------
    reference : DataFrame
        Validated table of the reference site (``split`` in {"train", "test"}, finding columns,
        ``patient_pseudonym``, ``sha256``).
    files : sequence of Path
        Image file of each row of ``reference`` (same order).
    packages_root : Path
        Packages go to ``<packages_root>/<key>/``.
    spec : VendorTrainingSpec, optional
        Training settings.
    log : callable
        Progress messages.

    Returns
    -------
    VendorModelResult
    """
    spec = spec or VendorTrainingSpec()
    if len(files) != len(reference):
        raise ValueError(f"{len(files)} files for {len(reference)} reference rows")
    splits = set(reference["split"].unique())
    if not {"train", "test"} <= splits:
        raise ValueError(
            f"the reference table has splits {sorted(splits)}, expected 'train' and 'test': land "
            "the vendor site with train_val_list.txt and test_list.txt (docs/formats.md)"
        )
    labels = spec.train.labels
    t0 = time.perf_counter()
    train_rows = (reference["split"] == "train").to_numpy()
    test_rows = (reference["split"] == "test").to_numpy()
    # Everything that shapes the fit: image bytes, labels, patients (they set the validation
    # split) and the split itself; a change in any of them trains a new package.
    key_cols = ["sha256", "patient_pseudonym", "split", *labels]
    data_hash = hashlib.sha256(
        reference[key_cols].sort_values("sha256").to_csv(index=False).encode()
    ).hexdigest()
    package_dir = packages_root / spec.key(data_hash)
    files = [Path(f) for f in files]
    size = spec.train.input_size
    test_idx = np.flatnonzero(test_rows)
    y_test = _labels(reference[test_rows], labels)
    log(f"decoding {len(test_idx)} held-out images at {size} px")
    x_test = load_images([files[i] for i in test_idx], size, workers=spec.load_workers)

    loaded = _reusable_package(package_dir, labels, log)
    n_train = n_val = None  # a reused package's split sizes are in its card's training summary
    if loaded is None:
        train_table = reference[train_rows]
        rest, held = patient_disjoint_split(
            train_table["patient_pseudonym"].to_numpy(),
            spec.val_fraction,
            seed=spec.train.seed,
            keys=train_table["image_id"].to_numpy(),
        )
        train_idx = np.flatnonzero(train_rows)
        log(f"decoding {len(train_idx)} training images at {size} px")
        x_all = load_images([files[i] for i in train_idx], size, workers=spec.load_workers)
        y_all = _labels(train_table, labels)
        n_train, n_val = int(rest.sum()), int(held.sum())

        def on_epoch(rec: EpochRecord) -> None:
            log(
                f"epoch {rec.epoch}/{spec.train.epochs}: train loss {rec.train_loss:.4f}, "
                f"val loss {rec.val_loss:.4f}, val mean AUROC {rec.val_mean_auroc:.3f} "
                f"({rec.seconds:.0f} s)"
            )

        result = train_multilabel(
            x_all[rest], y_all[rest], x_all[held], y_all[held], spec.train, progress=on_epoch
        )
        thresholds, sources = _operating_thresholds(
            y_all[held],
            result.val_probabilities,
            y_all[rest],
            lambda: predict_images(result.model, result.adapter.config, x_all[rest]),
            labels=labels,
            target_sensitivity=spec.target_sensitivity,
        )
        fallback = {k: v for k, v in sources.items() if v != "validation"}
        if fallback:
            log(f"operating thresholds not from the validation slice: {fallback}")
        heldout = per_label_auroc(
            y_test, predict_images(result.model, result.adapter.config, x_test), labels=labels
        )
        card = ModelCard(
            vendor=VENDOR_NAME,
            intended_use=INTENDED_USE,
            operating_thresholds=thresholds,
            training_data=summarize_training_data(
                train_table,
                labels=labels,
                demographic_columns=("sex", "age", "view_position"),
                quality_columns=QUALITY_FEATURES,
            ),
            validation_auroc=heldout,
            description=(
                f"{spec.train.arch} at {size} px, {spec.train.epochs} epochs, seed "
                f"{spec.train.seed}; thresholds give >= {spec.target_sensitivity:.0%} sensitivity "
                "on a patient-disjoint validation slice of the training split; validation_auroc "
                "is measured on the held-out test split."
                + (f" Threshold sources other than validation: {fallback}." if fallback else "")
            ),
        )
        tmp = package_dir.with_name(package_dir.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        save_package(tmp, result.adapter, result.model, card)
        os.replace(tmp, package_dir)
        loaded = load_package(package_dir, expected_labels=labels)
    # Always re-measured from the package as written, so the numbers describe what ships.
    auroc = per_label_auroc(y_test, predict_images(loaded.model, loaded.config, x_test), labels)
    positives = {f: int(np.sum(y_test[:, i] == 1)) for i, f in enumerate(labels)}
    return VendorModelResult(
        package_dir=package_dir,
        package_sha256=loaded.sha256,
        reused=n_train is None,
        heldout_auroc=auroc,
        heldout_positives=positives,
        n_train=n_train,
        n_val=n_val,
        n_test=int(test_rows.sum()),
        seconds=time.perf_counter() - t0,
    )
