"""What the ``sepsis_ews`` audit evaluates, and its scores for one hospital.

Three modes (:class:`~clinaudit.studies.base.ModelSpec`):

* ``package``: a vendor tabular package (``clinaudit.tabular_model/v1``), verified and loaded with
  skops' trusted-type check, never unpickled (:func:`clinaudit.models.tabular.
  load_tabular_package`); its card gives the operating threshold unless one is configured;
* ``scores``: vendor scores (``stay_id,score`` CSV, :mod:`.scores`), one file for the network or a
  folder of ``<hospital>.csv``; without a card, the operating threshold must be configured;
* ``embedded``: the vendor model trained once on the simulated vendor population
  (``training["scale"]``, ``seed``), deterministic, saved under
  ``<artifacts>/models/sepsis_vendor/<key>/`` and reused.

The model stage records a :class:`~clinaudit.audit.records.ModelRef`: identity, source, the
threshold and where it comes from (``"model card"`` or ``"configured"``) and the vendor card
(threshold, held-out validation, training-data summary), so no later stage loads the package for
metadata.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from clinaudit.audit.records import ModelRef
from clinaudit.audit.schemas import validate_table
from clinaudit.audit.types import AuditInputError
from clinaudit.models.tabular import (
    CARD_FILE,
    MODEL_FILE,
    HgbConfig,
    TabularModel,
    load_tabular_package,
    predict_stays,
    save_tabular_package,
    train_tabular_vendor_model,
)
from clinaudit.sources.landing import sha256_file
from clinaudit.sources.sepsis_simulator import simulate_vendor_population
from clinaudit.studies.base import Log, ModelSpec, RunDirs

from .ingest import absent_columns, n_rows_quarantined, quarantined_stays, refused_tables
from .scores import StayScores, read_sepsis_scores
from .tables import TARGET

__all__ = [
    "KIND",
    "TARGET",
    "embedded_key",
    "model_fingerprint",
    "predict_hospital",
    "resolve_model",
]

STUDY = "sepsis_ews"
KIND = "tabular"
#: Scale of the simulated vendor population the embedded model is trained on, by default.
DEFAULT_VENDOR_SCALE = "demo"
THRESHOLD_ENV = "CLINAUDIT_SEPSIS_EWS_THRESHOLD"


#: Settings of the embedded model a run may change (``StudyModel.training``): ``scale``, the
#: demo scale, is the size of the simulated vendor population it is trained on.
TRAINING_KEYS = ("scale",)


def _vendor_scale(spec: ModelSpec) -> str:
    training = spec.training_settings("sepsis_ews", TRAINING_KEYS)
    return str(training.get("scale") or DEFAULT_VENDOR_SCALE)


def embedded_key(scale: str, seed: int) -> str:
    """Folder name of the embedded model: a hash of everything that shapes it."""
    doc = {"scale": scale, "seed": seed, "hgb": asdict(HgbConfig()), "format": 1}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _embedded_package(root: Path, scale: str, seed: int, log: Log) -> tuple[TabularModel, Path]:
    """Train (or reuse) the simulated vendor's model under ``root/<key>``."""
    key = embedded_key(scale, seed)
    target = root / key
    if not target.is_dir():
        log(f"training the embedded vendor model (scale {scale}, seed {seed}) into {target}")
        stays = simulate_vendor_population(scale, seed=seed).stays
        model = train_tabular_vendor_model(stays, seed=seed)
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
        try:
            save_tabular_package(model, tmp / "package")
            os.replace(tmp / "package", target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return load_tabular_package(target), target


def _scores_files(source: Path) -> dict[str, str]:
    """``{"*": sha}`` for one file, ``{hospital: sha}`` for a folder of ``<hospital>.csv``."""
    if source.is_file():
        return {"*": sha256_file(source)}
    if source.is_dir():
        files = {p.stem: sha256_file(p) for p in sorted(source.glob("*.csv"))}
        if files:
            return files
        raise AuditInputError(
            "scores", f"folder {source} without *.csv files", "<hospital>.csv files or one CSV",
            "put one stay_id,score CSV per hospital (hosp_a.csv, ...) in the folder",
        )  # fmt: skip
    raise AuditInputError(
        "scores", f"{source} (does not exist)", "a stay_id,score CSV or a folder of them",
        "check the path given as CLINAUDIT_SEPSIS_EWS_SCORES / --predictions",
    )  # fmt: skip


def _identity(files: dict[str, str]) -> str:
    if set(files) == {"*"}:
        return files["*"]
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def _threshold(spec: ModelSpec, card: dict[str, Any] | None) -> tuple[float, str]:
    if spec.threshold is not None:
        return float(spec.threshold), "configured"
    if card is None or "operating_threshold" not in card:
        raise AuditInputError(
            "threshold",
            "None, and vendor scores come without a model card",
            "the vendor's operating threshold of the scores (alert when score >= threshold)",
            f"set {THRESHOLD_ENV} (or the sepsis_ews_model resource's threshold, or "
            "`clinaudit audit --threshold`) to the vendor's alert threshold",
        )
    return float(card["operating_threshold"]), "model card"


def model_fingerprint(spec: ModelSpec) -> tuple[str, dict[str, Any]]:
    """Data version of what ``spec`` points at (files are hashed, nothing is trained)."""
    mode, threshold = spec.mode, spec.threshold
    if mode == "package":
        root = Path(str(spec.package_dir)).resolve()
        hashed = {n: sha256_file(root / n) for n in (CARD_FILE, MODEL_FILE) if (root / n).is_file()}
        meta: dict[str, Any] = {"mode": mode, "source": str(root), "files": hashed}
    elif mode == "scores":
        source = Path(str(spec.scores)).resolve()
        meta = {"mode": mode, "source": str(source), "files": _scores_files(source)}
    else:
        scale = _vendor_scale(spec)
        meta = {"mode": mode, "vendor_scale": scale, "seed": spec.seed,
                "key": embedded_key(scale, spec.seed)}  # fmt: skip
    meta["threshold"] = threshold if threshold is not None else "from the model card"
    version = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()
    return version, meta


def resolve_model(spec: ModelSpec, *, dirs: RunDirs, log: Log) -> ModelRef:
    """Verify the package, hash the scores or train/reuse the embedded model.

    Raises
    ------
    AuditInputError
        Scores without a configured threshold, or a scores path that does not exist.
    TabularModelError
        A package that fails verification (pickle files, hash mismatch, untrusted types, ...).
    """
    mode = spec.mode
    if mode == "scores":
        source = Path(str(spec.scores)).resolve()
        threshold, threshold_source = _threshold(spec, None)
        files = _scores_files(source)
        return ModelRef(
            study=STUDY, kind=KIND, mode=mode, identity=_identity(files), source=str(source),
            targets=(TARGET,), thresholds={TARGET: threshold},
            threshold_source=threshold_source, scores_files=files,
            facts={"model_sha256": _identity(files), "n_files": len(files)},
        )  # fmt: skip
    if mode == "package":
        source = Path(str(spec.package_dir)).resolve()
        model = load_tabular_package(source)
    else:
        root = dirs.artifacts / "models" / "sepsis_vendor"
        model, source = _embedded_package(root, _vendor_scale(spec), spec.seed, log)
    card = dict(model.card)
    threshold, threshold_source = _threshold(spec, card)
    log(f"audited model {model.package_sha256[:12]} ({mode}), threshold {threshold:.4f} "
        f"({threshold_source})")  # fmt: skip
    return ModelRef(
        study=STUDY, kind=KIND, mode=mode, identity=model.package_sha256, source=str(source),
        targets=(TARGET,), thresholds={TARGET: threshold}, threshold_source=threshold_source,
        card=card, facts={"model_sha256": model.model_sha256, "vendor": card.get("vendor", ""),
                          "version": card.get("version", "")},
    )  # fmt: skip


def _no_stays(hospital: str, quarantine: pd.DataFrame | None) -> AuditInputError:
    refused = refused_tables(quarantine)
    why = (
        f"its stays table was refused at ingest: {refused}"
        if refused
        else f"every row was quarantined at ingest ({n_rows_quarantined(quarantine)} rows)"
        if quarantine is not None and n_rows_quarantined(quarantine)
        else "ingest kept no stay"
    )
    return AuditInputError(
        "stays", f"no validated stay of hospital {hospital!r}: {why}",
        "at least one validated stay to score",
        "fix the stays table named above (see its quarantine report under "
        f"quarantine/{STUDY}/{hospital}/) and land it again; the scores are not the problem",
    )  # fmt: skip


def _check_features(model: ModelRef, stays: pd.DataFrame, hospital: str, absent: tuple) -> None:
    features = [str(f) for f in model.card.get("features", ())]
    missing = [f for f in features if f not in stays.columns or f in absent]
    if missing:
        batches = sorted(set(stays["batch"].astype(str))) if "batch" in stays else []
        raise AuditInputError(
            "stays", f"hospital {hospital!r} (batches {batches}) without the model card's "
            f"feature column(s) {missing}",
            f"every feature the model card lists: {features}",
            f"add the column(s) {missing} to the hospital's stays table (docs/sepsis_formats.md) "
            "and land it again, or audit the vendor's scores instead (a scores-only audit needs "
            "no model feature)",
        )  # fmt: skip


def predict_hospital(
    model: ModelRef,
    stays: pd.DataFrame,
    *,
    hospital: str,
    log: Log,
    quarantine: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One score per validated stay of ``hospital`` (:class:`~.scores.StayScores`).

    ``quarantine``: the hospital's ingest records. Scores of stays quarantined there are set
    aside and counted (``facts["n_set_aside"]``), never taken for unknown stays; a hospital
    without a validated stay is refused naming the refused stays table.

    Raises
    ------
    AuditInputError
        No validated stay (naming the refused stays file and why), a model package whose card
        lists features the stays table lacks (naming them), or a package or scores file that
        changed since the model stage recorded it.
    ScoresError
        A scores file with problems (each named by line, column and fix).
    """
    if not len(stays):
        raise _no_stays(hospital, quarantine)
    expected = model.partition_identity(hospital)
    facts: dict[str, Any] = {"n_stays": len(stays), "mode": model.mode}
    if model.mode == "scores":
        shared = "*" in model.scores_files and hospital not in model.scores_files
        path = Path(model.source) if shared else Path(model.source) / f"{hospital}.csv"
        if sha256_file(path) != expected:
            raise AuditInputError(
                "scores", f"{path} with sha256 {sha256_file(path)}",
                f"the file the model stage recorded ({expected})",
                f"re-materialize {STUDY}/model, then this hospital's predictions",
            )  # fmt: skip
        aside = quarantined_stays(quarantine) - set(stays["stay_id"].astype(str))
        scores = read_sepsis_scores(path, stays, site=hospital, shared=shared, set_aside=aside)
        facts["n_other_rows"] = int(scores.attrs.pop("n_other_rows", 0))
        facts["n_set_aside"] = int(scores.attrs.pop("n_set_aside", 0))
    else:
        _check_features(model, stays, hospital, absent_columns(quarantine))
        package = load_tabular_package(model.source)
        if package.package_sha256 != expected:
            raise AuditInputError(
                "model", f"{model.source} with sha256 {package.package_sha256}",
                f"the package the model stage recorded ({expected})",
                f"re-materialize {STUDY}/model, then the predictions",
            )  # fmt: skip
        scores = predict_stays(package, stays)
    threshold = model.thresholds[TARGET]
    facts["alert_rate"] = float((scores["score"] >= threshold).mean()) if len(scores) else 0.0
    facts["model_sha256"] = expected
    log(f"{hospital}: {len(scores)} stays scored ({model.mode})")
    return validate_table(scores, StayScores), facts
