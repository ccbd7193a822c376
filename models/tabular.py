"""Tabular vendor model packages (study ``sepsis_ews``): train, save, load safely, predict.

Format ``clinaudit.tabular_model/v1``: a directory holding exactly::

    model.skops        the fitted scikit-learn estimator, written with ``skops.io.dump``
    model_card.json    what the model is and how it was built (written last)

Loading (:func:`load_tabular_package`) never unpickles. It refuses pickle-like files in the
directory (``.pkl``, ``.joblib``, ...), checks the card, recomputes the sha256 of ``model.skops``
and compares it with ``model_sha256`` of the card, asks ``skops.io.get_untrusted_types`` which
types the file needs and refuses it when any is outside :data:`TRUSTED_TYPES` (the error names
them), loads with ``skops.io.load(path, trusted=TRUSTED_TYPES)`` and checks the estimator's class
and feature count. Every refusal raises :class:`TabularModelError` (path, problem, fix).

``model.skops`` is written canonically (object ids renumbered in traversal order, fixed zip
timestamps), so the same estimator always gives the same bytes and the same sha256.

The card (keys in ``docs/sepsis_formats.md``) states the features in input order, the operating
threshold (alert when ``score >= threshold``; chosen so that the vendor's held-out alert rate is
``target_alert_rate``), version, vendor, intended use, held-out performance and the training-data
summary (per-feature quantiles and missing rate, group composition and prevalence per protected
attribute). The training-data summary is what the audit compares local data with (drift).

Scores-only audits read a vendor's ``stay_id,score`` CSV with
:func:`clinaudit.studies.sepsis_ews.scores.read_sepsis_scores` (on the study-neutral reader
:func:`clinaudit.models.scores_csv.read_scores`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sklearn
import skops
import skops.io as sio
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score

from clinaudit.audit.bootstrap import derive_rng
from clinaudit.models.model_card import json_safe
from clinaudit.sources.landing import sha256_file
from clinaudit.sources.sepsis_tables import FEATURES, LABEL, summarize_stays

TABULAR_FORMAT = "clinaudit.tabular_model/v1"
MODEL_FILE = "model.skops"
CARD_FILE = "model_card.json"
#: Types a tabular package may need beyond those skops trusts by default (checked on load).
TRUSTED_TYPES: tuple[str, ...] = (
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
)
#: Estimator classes a package may hold.
ESTIMATOR_CLASSES: tuple[type, ...] = (HistGradientBoostingClassifier,)
#: Files that can run code when loaded; a package holding one is refused.
PICKLE_SUFFIXES: tuple[str, ...] = (".pkl", ".pickle", ".joblib", ".sav", ".pt", ".pth", ".bin")
#: Release date recorded in the card of the simulated vendor model (reproducible bytes).
VENDOR_RELEASE_UTC = "2022-06-01T00:00:00Z"
_CARD_KEYS = ("format", "estimator", "model_file", "model_sha256", "features", "label")
_CARD_KEYS += ("operating_threshold", "version", "vendor", "intended_use", "training_data")
__all__ = [
    "TabularModel",
    "TabularModelError",
    "load_tabular_package",
    "predict_stays",
    "save_tabular_package",
    "train_tabular_vendor_model",
]


class TabularModelError(ValueError):
    """A tabular model package that cannot be used: the path, the problem and the fix."""

    def __init__(self, path: str | os.PathLike[str], message: str, fix: str) -> None:
        self.path = str(path)
        self.message = message
        self.fix = fix
        super().__init__(f"{self.path}: {message}. Fix: {fix}")


@dataclass(frozen=True)
class HgbConfig:
    """Hyper-parameters of the vendor's HistGradientBoostingClassifier."""

    max_iter: int = 300
    learning_rate: float = 0.05
    max_leaf_nodes: int = 15
    min_samples_leaf: int = 20
    l2_regularization: float = 1.0
    validation_fraction: float = 0.15
    n_iter_no_change: int = 20


@dataclass(frozen=True)
class TabularModel:
    """A fitted estimator, its card, and the exact bytes of ``model.skops``."""

    estimator: HistGradientBoostingClassifier
    card: Mapping[str, Any]
    model_bytes: bytes = field(repr=False)

    @property
    def features(self) -> tuple[str, ...]:
        """Input columns in order."""
        return tuple(self.card["features"])

    @property
    def threshold(self) -> float:
        """Operating threshold: alert when ``score >= threshold``."""
        return float(self.card["operating_threshold"])

    @property
    def model_sha256(self) -> str:
        """sha256 of ``model.skops``."""
        return str(self.card["model_sha256"])

    @property
    def package_sha256(self) -> str:
        """Package identity: sha256 of the canonical card JSON (which holds the model's hash)."""
        return hashlib.sha256(_canonical_json(self.card)).hexdigest()


def _canonical_json(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def canonical_skops_bytes(estimator: Any) -> bytes:
    """``skops.io.dumps(estimator)`` with object ids renumbered and fixed zip timestamps.

    skops names arrays by ``id()`` and stamps the zip with the current time; both are replaced
    (consistently, so shared references stay shared) to make the bytes reproducible.
    """
    src = zipfile.ZipFile(io.BytesIO(sio.dumps(estimator)))
    members = set(src.namelist())
    ids: dict[int, int] = {}
    files: dict[str, str] = {}

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(v) for v in node]
        if not isinstance(node, dict):
            return node
        out = {}
        for key, value in node.items():
            if key == "__id__" and isinstance(value, int):
                out[key] = ids.setdefault(value, len(ids))
            elif key == "file" and isinstance(value, str) and value in members:
                out[key] = files.setdefault(value, f"{len(files):06d}{Path(value).suffix}")
            else:
                out[key] = walk(value)
        return out

    schema = walk(json.loads(src.read("schema.json")))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as dst:
        for old, new in sorted(files.items(), key=lambda item: item[1]):
            dst.writestr(zipfile.ZipInfo(new, date_time=(1980, 1, 1, 0, 0, 0)), src.read(old))
        info = zipfile.ZipInfo("schema.json", date_time=(1980, 1, 1, 0, 0, 0))
        dst.writestr(info, json.dumps(schema, indent=2))
    return out.getvalue()


def _feature_matrix(frame: pd.DataFrame, features: Sequence[str], what: str) -> np.ndarray:
    missing = [f for f in features if f not in frame.columns]
    if missing:
        raise ValueError(
            f"{what} lacks feature columns {missing} (has {list(frame.columns)}); pass the "
            "validated stays table (clinaudit.studies.sepsis_ews.schema.validate_stays)"
        )
    values = frame.loc[:, list(features)].apply(pd.to_numeric, errors="coerce")
    bad = [f for f in features if (values[f].isna() & frame[f].notna()).any()]
    if bad:
        raise ValueError(f"{what}: columns {bad} hold non-numeric values; validate the stays first")
    return values.to_numpy(dtype=float)


def _split(frame: pd.DataFrame, seed: int, test_fraction: float) -> np.ndarray:
    """Boolean test mask: the ``split`` column when present, else a seeded draw."""
    if "split" in frame.columns:
        split = frame["split"].astype(str)
        unknown = sorted(set(split) - {"train", "test"})
        if unknown or not (split == "test").any() or not (split == "train").any():
            raise ValueError(
                f"column 'split' must hold both 'train' and 'test' (found {sorted(set(split))}); "
                "fix it or drop the column to draw a seeded split"
            )
        return (split == "test").to_numpy()
    return derive_rng(seed, "tabular/split").random(len(frame)) < test_fraction


def train_tabular_vendor_model(
    frame: pd.DataFrame,
    *,
    seed: int = 0,
    alert_rate: float = 0.15,
    test_fraction: float = 0.25,
    config: HgbConfig | None = None,
    vendor: str = "Simulated Sepsis Analytics Inc.",
    version: str = "1.0.0",
    intended_use: str = (
        "Early warning of sepsis in adult ICU stays; alerts when score >= operating_threshold. "
        "Not validated outside the vendor's development hospitals."
    ),
    created_utc: str = VENDOR_RELEASE_UTC,
) -> TabularModel:
    """Train the vendor's HistGradientBoosting sepsis model and write its card.

    Parameters
    ----------
    frame : pandas.DataFrame
        Development stays (e.g. ``simulate_vendor_population(...).stays``) with the features of
        ``sepsis_tables.FEATURES`` (NaN = not measured) and ``sepsis``. A ``split`` column
        (``train``/``test``) is used when present; otherwise ``test_fraction`` of the stays is
        held out by a seeded draw.
    seed : int
        Seed of the split and of the estimator's early-stopping split.
    alert_rate : float
        Share of held-out stays that should alert; the operating threshold is the
        ``1 - alert_rate`` quantile of the held-out scores.
    test_fraction : float
        Held-out share when there is no ``split`` column.
    config : HgbConfig, optional
        Hyper-parameters (defaults of :class:`HgbConfig`).
    vendor, version, intended_use, created_utc : str
        Recorded in the card.

    Returns
    -------
    TabularModel
        Estimator, card (with held-out AUROC, sensitivity and alert rate at the threshold) and
        the canonical ``model.skops`` bytes.

    Examples
    --------
    >>> from clinaudit.sources.sepsis_simulator import simulate_vendor_population
    >>> model = train_tabular_vendor_model(simulate_vendor_population("tiny").stays, seed=0)
    >>> 0.0 < model.threshold < 1.0
    True
    """
    if not 0.0 < alert_rate < 1.0:
        raise ValueError(f"alert_rate={alert_rate} must lie in (0, 1), e.g. 0.15")
    if LABEL not in frame.columns:
        raise ValueError(f"frame lacks the label column {LABEL!r}; pass the stays table")
    cfg = config or HgbConfig()
    x = _feature_matrix(frame, FEATURES, "frame")
    y = frame[LABEL].to_numpy(dtype=int)
    test = _split(frame, seed, test_fraction)
    if len(set(y[test])) < 2 or len(set(y[~test])) < 2:
        raise ValueError("both splits need septic and non-septic stays; pass more stays")
    estimator = HistGradientBoostingClassifier(
        **vars(cfg), early_stopping=True, random_state=seed
    ).fit(x[~test], y[~test])
    scores = estimator.predict_proba(x[test])[:, 1]
    threshold = float(np.quantile(scores, 1.0 - alert_rate))
    alerts = scores >= threshold
    validation = {
        "split": "vendor held-out stays",
        "n": int(test.sum()),
        "n_pos": int(y[test].sum()),
        "auroc": float(roc_auc_score(y[test], scores)),
        "sensitivity_at_threshold": float(alerts[y[test] == 1].mean()),
        "specificity_at_threshold": float(1.0 - alerts[y[test] == 0].mean()),
        "alert_rate_at_threshold": float(alerts.mean()),
    }
    model_bytes = canonical_skops_bytes(estimator)
    card = {
        "format": TABULAR_FORMAT,
        "estimator": f"{type(estimator).__module__}.{type(estimator).__name__}",
        "hyperparameters": vars(cfg) | {"random_state": seed, "n_iter": int(estimator.n_iter_)},
        "library_versions": {"scikit-learn": sklearn.__version__, "skops": skops.__version__},
        "model_file": MODEL_FILE,
        "model_sha256": hashlib.sha256(model_bytes).hexdigest(),
        "features": list(FEATURES),
        "label": LABEL,
        "operating_threshold": threshold,
        "target_alert_rate": alert_rate,
        "threshold_rule": "alert when score >= operating_threshold",
        "version": version,
        "vendor": vendor,
        "intended_use": intended_use,
        "created_utc": created_utc,
        "validation": validation,
        "training_data": summarize_stays(frame.loc[~test]),
    }
    return TabularModel(estimator, json_safe(card), model_bytes)


def save_tabular_package(model: TabularModel, directory: str | os.PathLike[str]) -> Path:
    """Write ``model.skops`` then ``model_card.json`` into an empty or new ``directory``.

    Returns
    -------
    Path
        The package directory.

    Raises
    ------
    TabularModelError
        If ``directory`` already holds files (packages are never overwritten) or the bytes do
        not match the card's ``model_sha256``.
    """
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise TabularModelError(directory, "directory is not empty", "save into a new directory")
    if hashlib.sha256(model.model_bytes).hexdigest() != model.model_sha256:
        raise TabularModelError(directory, "model bytes do not match the card", "re-train")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MODEL_FILE).write_bytes(model.model_bytes)
    doc = json.dumps(model.card, indent=1, sort_keys=True, allow_nan=False) + "\n"
    (directory / CARD_FILE).write_text(doc, encoding="utf-8")
    return directory


def _read_card(directory: Path) -> dict[str, Any]:
    path = directory / CARD_FILE
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise TabularModelError(path, "model_card.json is missing", "ship the card") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TabularModelError(path, f"not UTF-8 JSON ({err})", "re-export the card") from err
    missing = [k for k in _CARD_KEYS if not isinstance(card, dict) or k not in card]
    if missing:
        raise TabularModelError(path, f"card lacks keys {missing}", "write every documented key")
    if card["format"] != TABULAR_FORMAT:
        raise TabularModelError(
            path, f"format {card['format']!r} is not {TABULAR_FORMAT!r}", "re-export the package"
        )
    if card["model_file"] != MODEL_FILE:
        raise TabularModelError(
            path,
            f"model_file {card['model_file']!r} is not {MODEL_FILE!r}",
            f"save the estimator with skops.io.dump as {MODEL_FILE}",
        )
    if list(card["features"]) != list(FEATURES):
        raise TabularModelError(
            path,
            f"features {card['features']} differ from the study's {list(FEATURES)}",
            "ship a model trained on the documented features, in that order",
        )
    threshold = card["operating_threshold"]
    if not isinstance(threshold, int | float) or not 0.0 <= threshold <= 1.0:
        raise TabularModelError(
            path, f"operating_threshold {threshold!r} is not in [0, 1]", "state a probability"
        )
    return card


def _refuse_pickles(directory: Path) -> None:
    found = sorted(p.name for p in directory.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if found:
        raise TabularModelError(
            directory,
            f"package holds pickle-like files {found}, which can run code when loaded",
            f"remove them and ship the estimator as {MODEL_FILE} written with skops.io.dump",
        )


def _check_types(path: Path, trusted: Sequence[str]) -> None:
    try:
        needed = sio.get_untrusted_types(file=path)
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as err:
        raise TabularModelError(
            path,
            f"not a skops file ({type(err).__name__}: {err}); pickle/joblib files are refused",
            "save the estimator with skops.io.dump",
        ) from err
    untrusted = sorted(set(needed) - set(trusted))
    if untrusted:
        raise TabularModelError(
            path,
            f"the file needs types outside the trusted list: {untrusted} "
            f"(trusted: {list(trusted)})",
            "ship a plain scikit-learn HistGradientBoostingClassifier; never add types to the "
            "trusted list without reviewing the vendor's code",
        )


def load_tabular_package(
    directory: str | os.PathLike[str], *, trusted: Sequence[str] = TRUSTED_TYPES
) -> TabularModel:
    """Load and verify a tabular model package (see the module docstring for every check).

    Parameters
    ----------
    directory : path
        The package directory.
    trusted : sequence of str
        Types allowed beyond skops' defaults.

    Returns
    -------
    TabularModel

    Raises
    ------
    TabularModelError
        If any check fails (pickle files, card, hash mismatch, untrusted types, estimator class
        or feature count).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise TabularModelError(directory, "package directory does not exist", "pass its path")
    _refuse_pickles(directory)
    card = _read_card(directory)
    path = directory / MODEL_FILE
    if not path.is_file():
        raise TabularModelError(path, f"{MODEL_FILE} is missing", "ship the skops file")
    digest = sha256_file(path)
    if digest != str(card["model_sha256"]).lower():
        raise TabularModelError(
            path,
            f"sha256 {digest} differs from the card's model_sha256 {card['model_sha256']} "
            "(file corrupted or replaced)",
            "obtain the package again from the vendor; do not edit model files",
        )
    _check_types(path, trusted)
    estimator = sio.load(path, trusted=list(trusted))
    if not isinstance(estimator, ESTIMATOR_CLASSES):
        raise TabularModelError(
            path,
            f"holds a {type(estimator).__name__}, expected one of "
            f"{[c.__name__ for c in ESTIMATOR_CLASSES]}",
            "ship a fitted HistGradientBoostingClassifier",
        )
    if getattr(estimator, "n_features_in_", None) != len(FEATURES):
        raise TabularModelError(
            path,
            f"estimator expects {getattr(estimator, 'n_features_in_', None)} features, the card "
            f"lists {len(FEATURES)}",
            "train on the documented features in their order",
        )
    return TabularModel(estimator, card, path.read_bytes())


def predict_stays(model: TabularModel, frame: pd.DataFrame) -> pd.DataFrame:
    """Score validated stays.

    Parameters
    ----------
    model : TabularModel
        Trained or loaded model.
    frame : pandas.DataFrame
        Stays with ``stay_id`` and the model's features.

    Returns
    -------
    pandas.DataFrame
        ``stay_id, score, model_sha256`` in ``frame`` order; ``score`` is the probability of
        sepsis and ``model_sha256`` the package identity (:attr:`TabularModel.package_sha256`).
    """
    if "stay_id" not in frame.columns:
        raise ValueError(f"frame lacks 'stay_id' (has {list(frame.columns)}); pass the stays")
    x = _feature_matrix(frame, model.features, "frame")
    scores = model.estimator.predict_proba(x)[:, 1] if len(frame) else np.empty(0)
    return pd.DataFrame(
        {
            "stay_id": frame["stay_id"].astype(str).to_numpy(),
            "score": scores.astype(float),
            "model_sha256": model.package_sha256,
        }
    )
