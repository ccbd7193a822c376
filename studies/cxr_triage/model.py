"""cxr_triage model stage: the triage model (``abnormal``, ``critical``) and its logits per site.

Two modes (``ModelSpec.mode``):

* ``package``: a triage model package (labels ``abnormal`` and ``critical``), verified on load;
* embedded (default): a pretrained backbone fine-tuned for triage on the reference site's
  ``train`` split (:func:`clinaudit.models.transfer.transfer_package`), next to the same network
  trained from scratch on the same rows (:func:`~clinaudit.models.transfer.train_scratch`); both
  are scored on the ``test`` split and the gain of the transfer is measured with paired
  intervals (:func:`~clinaudit.models.transfer_compare.compare_transfer`).

The backbone, in this order: ``training["backbone"]`` (a model package folder, e.g. a timm
package a user supplies); else the multisite vendor model this home already trained
(``artifacts/models/vendor_model``, newest by its card); else a backbone pre-trained here on the
14 findings of the reference site's triage ``train`` split, never its calibration or pile studies
(the card and the memo say which, and with what settings).
Vendor scores are refused: the certificate is fitted on logits, which probabilities rounded to
1.0 no longer rank.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa

from clinaudit.audit.records import ModelRef
from clinaudit.audit.types import AuditInputError
from clinaudit.models.devices import select_device
from clinaudit.models.inference import (
    ImageFileLoader,
    default_batch_size,
    predict,
    predictions_frame,
    predictions_schema,
)
from clinaudit.models.package import LoadedPackage, load_package, package_sha256
from clinaudit.models.training import TrainConfig
from clinaudit.models.transfer import train_scratch, transfer_package
from clinaudit.models.transfer_compare import compare_transfer
from clinaudit.models.transfer_spec import TransferConfig
from clinaudit.models.vendor_model import VendorTrainingSpec, train_vendor_model
from clinaudit.sources.landing import image_paths
from clinaudit.studies.base import ModelSpec, RunDirs

from .data import with_targets
from .labels import TARGETS
from .policy import TriagePolicy

__all__ = ["KIND", "LANDING_DIR", "model_fingerprint", "predict_site", "resolve_model"]

KIND = "image_multilabel"
LANDING_DIR = "cxr_triage"
#: Settings of the embedded model a run may change (``StudyModel.training``).
TRAINING_KEYS = ("backbone", "epochs", "trainable", "scale")
#: Per demo scale. ``epochs``: the fine-tuning and the from-scratch baseline alike (the same
#: budget for both arms; default ``TransferConfig.epochs``). ``input_size`` and
#: ``pretrain_epochs`` only shape a backbone pre-trained here (a supplied or vendor backbone keeps
#: its own input size). ``tiny``: tests. ``demo``: both arms at the defaults (2 epochs instead of
#: 3 saved ~70 CPU-s but left the baseline at test AUROC 0.62 instead of 0.74, a straw man), a
#: backbone pre-trained here at 128 px for 4 epochs.
SCALE_TRAINING: dict[str, dict[str, Any]] = {
    "tiny": {"epochs": 1, "input_size": 64, "pretrain_epochs": 2},
    "demo": {"input_size": 128, "pretrain_epochs": 4},
}
LOGITS = tuple(f"logit_{t}" for t in TARGETS)


def _settings(spec: ModelSpec) -> dict[str, Any]:
    training = spec.training_settings("cxr_triage", TRAINING_KEYS)
    return {**SCALE_TRAINING.get(str(training.get("scale")), {}), **training}


def transfer_config(spec: ModelSpec) -> TransferConfig:
    """The fine-tuning settings from the model settings (defaults: ``TransferConfig``)."""
    s = _settings(spec)
    kw = {k: s[k] for k in ("epochs", "trainable") if s.get(k) is not None}
    workers = VendorTrainingSpec.load_workers if spec.num_workers is None else spec.num_workers
    return TransferConfig(
        labels=TARGETS,
        seed=spec.seed,
        device=spec.device,  # type: ignore[arg-type]
        precision=spec.precision,  # type: ignore[arg-type]
        load_workers=workers,
        **kw,
    )


def _vendor_packages(dirs: RunDirs) -> list[Path]:
    root = dirs.artifacts / "models" / "vendor_model"
    return (
        sorted(p for p in root.glob("*") if (p / "model_card.json").is_file())
        if root.is_dir()
        else []
    )


def model_fingerprint(spec: ModelSpec) -> tuple[str, dict[str, Any]]:
    """Data version of what ``spec`` points at (see ``Study.model_fingerprint``)."""
    if spec.mode == "package":
        path = Path(str(spec.package_dir)).resolve()
        return package_sha256(path), {"mode": spec.mode, "package_dir": str(path)}
    if spec.mode == "scores":
        _refuse_scores(spec)
    s = _settings(spec)
    backbone = s.get("backbone")
    doc = json.dumps(
        {
            "transfer": transfer_config(spec).__dict__,
            "backbone": package_sha256(Path(backbone)) if backbone else "auto",
            "input_size": s.get("input_size"),
            "pretrain_epochs": s.get("pretrain_epochs"),
        },
        sort_keys=True,
        default=str,
    )
    meta = {"mode": spec.mode, "training": json.loads(doc)}
    return "embedded-spec:" + hashlib.sha256(doc.encode()).hexdigest(), meta


def _refuse_scores(spec: ModelSpec) -> None:
    raise AuditInputError(
        "scores",
        str(spec.scores),
        "a triage model package (labels abnormal, critical) or the embedded model",
        "cxr_triage fits its temperature and certificate on logits; pass the vendor's model "
        "package (--model DIR / CLINAUDIT_CXR_TRIAGE_MODEL), not a scores file",
    )


def _backbone(
    spec: ModelSpec, table: pd.DataFrame, files: list[Path], dirs: RunDirs, log: Callable
) -> tuple[Path, str]:
    """The pretrained package to fine-tune, and where it came from (in words).

    A backbone pre-trained here learns the 14 findings of the triage ``train`` split only (its
    held-out check is the ``test`` split): never a calibration study, whose labels the
    temperature and the certificate must meet unseen, nor a pile study.
    """
    s = _settings(spec)
    if s.get("backbone"):
        path = Path(str(s["backbone"])).resolve()
        return path, f"the model package supplied at {path}"
    found = _vendor_packages(dirs)
    if found:
        newest = max(found, key=lambda p: json.loads((p / "model_card.json").read_text())
                     .get("created_utc", ""))  # fmt: skip
        return newest, "the multisite_cxr vendor model of this home (14 findings)"
    keep = table["triage_split"].isin(["train", "test"]).to_numpy()
    pre = table[keep].assign(split=table.loc[keep, "triage_split"])
    shape = {"input_size": s["input_size"]} if s.get("input_size") else {}
    if s.get("pretrain_epochs"):
        shape["epochs"] = s["pretrain_epochs"]
    config = TrainConfig(seed=spec.seed, device=spec.device, **shape)  # type: ignore[arg-type]
    n_train = int((pre["split"] == "train").sum())
    log(
        f"no backbone package: pre-training one on the 14 findings of the {n_train} triage "
        f"training studies ({config.arch} at {config.input_size} px, {config.epochs} epochs)"
    )
    result = train_vendor_model(
        pre,
        [f for f, k in zip(files, keep, strict=True) if k],
        dirs.artifacts / "models" / "cxr_triage_pretrain",
        spec=VendorTrainingSpec(train=config),
        log=log,
    )
    return result.package_dir, (
        f"a backbone pre-trained here on the 14 findings of the triage train split ({n_train} "
        f"studies; {config.arch} at {config.input_size} px, {config.epochs} epochs; no outside "
        "data)"
    )


def _card(result: Any, source: str, comparison: pd.DataFrame) -> dict[str, Any]:
    row = comparison.set_index("label").loc["abnormal"]
    return {
        "model": "triage classifier (abnormal, critical), fine-tuned",
        "backbone": source,
        "parent_package_sha256": result.parent_package_sha256,
        "trainable": ", ".join(result.trainable[:3])
        + (" ..." if len(result.trainable) > 3 else ""),
        "n_train": result.n_train,
        "n_val": result.n_val,
        "selected_epoch": result.selected_epoch,
        "test_auroc_abnormal": float(row["auroc_transfer"]),
        "test_auroc_abnormal_scratch": float(row["auroc_scratch"]),
    }


def _fine_tuning(tuned: LoadedPackage, base: LoadedPackage) -> dict[str, Any]:
    """What both arms were trained with, read from their packages' cards (the run's settings)."""
    t, b = tuned.card.lineage or {}, base.card.lineage or {}
    return {
        "architecture": tuned.config.architecture,
        "input_size": tuned.config.input_size,
        "epochs": int(t["epochs"]),
        "epochs_scratch": int(b["epochs"]),
        "batch_size": int(t["config"]["batch_size"]),
        "trainable": str(t["trainable"]),
        "trainable_weights": int(t["trainable_weights"]),
        "lr": float(t["config"]["lr"]),
        "scratch_lr": float(b["config"]["scratch_lr"]),
        "n_train": int(t["split_sizes"]["train"]["images"]),
        "n_val": int(t["split_sizes"]["val"]["images"]),
        "selected_epoch": int(t["selected_epoch"]),
        "selected_epoch_scratch": int(b["selected_epoch"]),
    }


def _logits(
    package_dir: Path, table: pd.DataFrame, files: list[Path], spec: ModelSpec
) -> np.ndarray:
    pkg = load_package(package_dir, expected_labels=TARGETS)
    loader = ImageFileLoader(
        pkg.config.input_size,
        expected_sha256=dict(zip(map(str, files), table["sha256"], strict=True)),
    )
    choice = select_device(spec.device, spec.precision)  # type: ignore[arg-type]
    batch = default_batch_size(choice) if spec.batch_size is None else spec.batch_size
    return predict(
        pkg.model, pkg.config, files, batch_size=batch, num_workers=spec.num_workers,
        device=spec.device, precision=spec.precision, loader=loader,  # type: ignore[arg-type]
        output="logits",
    )  # fmt: skip


def resolve_model(
    spec: ModelSpec,
    *,
    reference: pd.DataFrame | None,
    dirs: RunDirs,
    log: Callable[[str], None],
    reference_site: str,
    policy: Any,
) -> ModelRef:
    """Verify the package, or fine-tune (or reuse) the embedded triage model and its baseline."""
    if spec.threshold is not None or spec.thresholds:
        raise AuditInputError(
            "threshold",
            repr(spec.threshold or spec.thresholds),
            "no operating threshold: the triage thresholds are certified by the audit",
            "unset --threshold / --thresholds for cxr_triage",
        )
    if spec.mode == "scores":
        _refuse_scores(spec)
    if spec.mode == "package":
        pkg = load_package(Path(str(spec.package_dir)), expected_labels=TARGETS)
        return ModelRef(
            study="cxr_triage", kind=KIND, mode="package", identity=pkg.sha256,
            source=str(pkg.path.resolve()), targets=TARGETS,
            thresholds={t: float(pkg.card.operating_thresholds[t]) for t in TARGETS},
            threshold_source="the model card (not used: the audit certifies its own)",
            card={"model": "vendor triage package", "labels": ", ".join(TARGETS)},
        )  # fmt: skip
    if reference is None:
        raise FileNotFoundError(
            f"the reference site {reference_site!r} is not ingested; land its development batch "
            "(labels.csv with train_val_list.txt / test_list.txt) and materialize "
            f"cxr_triage/validated[{reference_site}], or audit a triage package"
        )
    if not isinstance(policy, TriagePolicy):
        raise AuditInputError("policy", type(policy).__name__, "a TriagePolicy", "configure it")
    table = with_targets(reference, policy)
    files = [Path(f) for f in image_paths(reference, dirs.landing, LANDING_DIR)]
    parent, source = _backbone(spec, table, files, dirs, log)
    frame = table.assign(split=table["triage_split"])
    config = transfer_config(spec)
    root = dirs.artifacts / "models"
    tuned = transfer_package(parent, frame, files, root / "cxr_triage", config=config, log=log)
    base = train_scratch(parent, frame, files, root / "cxr_triage_scratch", config=config, log=log)
    test = (frame["split"] == "test").to_numpy()
    test_files = [f for f, keep in zip(files, test, strict=True) if keep]
    rows = frame[test]
    comparison = compare_transfer(
        rows[list(TARGETS)],
        _logits(tuned.package_dir, rows, test_files, spec),
        _logits(base.package_dir, rows, test_files, spec),
        rows["patient_pseudonym"].to_numpy(str),
        labels=list(TARGETS),
        n_boot=policy.calibration.n_boot,
        seed=spec.seed,
        ci_level=policy.calibration.ci_level,
    )
    pkg = load_package(tuned.package_dir, expected_labels=TARGETS)
    settings = _fine_tuning(pkg, load_package(base.package_dir, expected_labels=TARGETS))
    log(f"triage model {pkg.sha256[:12]} fine-tuned from {source}; both arms: {settings}")
    return ModelRef(
        study="cxr_triage",
        kind=KIND,
        mode="embedded",
        identity=pkg.sha256,
        source=str(pkg.path.resolve()),
        targets=TARGETS,
        thresholds={t: float(pkg.card.operating_thresholds[t]) for t in TARGETS},
        threshold_source="the model card (not used: the audit certifies its own)",
        card=_card(tuned, source, comparison),
        facts={
            "transfer_vs_scratch": json.loads(comparison.to_json(orient="records")),
            "reused": bool(tuned.reused and base.reused),
            "backbone": source,
            "fine_tuning": settings,
            "scratch_package_sha256": base.package_sha256,
        },
    )


def predictions_table_schema() -> pa.DataFrameSchema:
    """Predictions of the triage model: probabilities of both targets, and their logits."""
    return predictions_schema(TARGETS).add_columns(
        {c: pa.Column(float, pa.Check(lambda s: np.isfinite(s)), nullable=False) for c in LOGITS}
    )


def predict_site(
    model: ModelRef,
    table: pd.DataFrame,
    *,
    site: str,
    spec: ModelSpec,
    dirs: RunDirs,
    log: Callable[[str], None],
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Logits and probabilities of every validated image of one site (files re-hashed)."""
    pkg = load_package(Path(model.source), expected_labels=TARGETS)
    if pkg.sha256 != model.identity:
        raise ValueError(
            f"{pkg.path}: package sha256 {pkg.sha256} differs from the audited {model.identity}; "
            "re-materialize cxr_triage/model"
        )
    files = [Path(f) for f in image_paths(table, dirs.landing, LANDING_DIR)]
    logits, reused = _cached_logits(pkg, table, files, spec, dirs)
    probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    frame = predictions_frame(table, probs, TARGETS, pkg.sha256)
    for j, col in enumerate(LOGITS):
        frame[col] = logits[:, j].astype(np.float64)
    frame = predictions_table_schema().validate(frame, lazy=True)
    log(f"{site}: {len(frame)} images scored ({reused} logits reused from the cache)")
    return frame, {"site": site, "n_scored": len(frame), "n_reused": reused}


def _cached_logits(
    pkg: Any, table: pd.DataFrame, files: list[Path], spec: ModelSpec, dirs: RunDirs
) -> tuple[np.ndarray, int]:
    """Logits of every row, scoring only images this package has not scored on this device.

    The cache (``<artifacts>/predictions_cache/cxr_triage/<package>-<device>-<dtype>.parquet``)
    is keyed by the image bytes' sha256, which ingest verified: a reads batch or a new backlog
    batch re-runs the audit without re-scoring the images already landed. Returns the logits in
    ``table`` order and how many came from the cache.
    """
    if not len(table):
        return np.zeros((0, len(TARGETS))), 0
    choice = select_device(spec.device, spec.precision)  # type: ignore[arg-type]
    dtype = str(choice.autocast_dtype or "float32").removeprefix("torch.")
    path = (
        dirs.artifacts / "predictions_cache" / LANDING_DIR
        / f"{pkg.sha256[:16]}-{choice.device.type}-{dtype}.parquet"
    )  # fmt: skip
    known = pd.read_parquet(path) if path.is_file() else pd.DataFrame(columns=["sha256", *LOGITS])
    known = known.drop_duplicates("sha256").set_index("sha256")
    sha = table["sha256"].astype(str)
    need = ~sha.isin(known.index).to_numpy()
    if need.any():
        new = _logits(
            pkg.path, table[need], [f for f, n in zip(files, need, strict=True) if n], spec
        )
        fresh = pd.DataFrame(new, columns=list(LOGITS), index=pd.Index(sha[need], name="sha256"))
        fresh = fresh[~fresh.index.duplicated()]
        known = pd.concat([known, fresh]) if len(known) else fresh
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        known.reset_index().to_parquet(tmp, index=False)
        tmp.replace(path)
    return known.loc[sha, list(LOGITS)].to_numpy(np.float64), int((~need).sum())
