"""multisite_cxr model stage: what is audited, and its predictions per site.

Three modes (``ModelSpec.mode``): a vendor model package (verified on load), vendor scores (a
folder of ``<site>.csv``, or one CSV for a one-site audit), or by default the embedded vendor
model, trained here on the reference site's train split and reused while spec and data are
unchanged. The resolved :class:`~clinaudit.audit.records.ModelRef` carries the identity, the
operating thresholds and the model-card facts, so no later stage re-loads the package for them.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clinaudit.audit.records import ModelRef
from clinaudit.audit.types import AuditInputError
from clinaudit.models.devices import select_device
from clinaudit.models.evaluation import fit_operating_thresholds, per_label_auroc
from clinaudit.models.inference import (
    ImageFileLoader,
    default_batch_size,
    predict,
    predictions_frame,
)
from clinaudit.models.package import CARD_FILE, load_package, package_sha256
from clinaudit.models.thresholds_file import read_thresholds_file
from clinaudit.models.training import TrainConfig
from clinaudit.models.vendor_model import VendorTrainingSpec, train_vendor_model
from clinaudit.models.vendor_scores import quarantined_image_ids, read_vendor_scores
from clinaudit.sources.cxr_labels import FINDINGS
from clinaudit.sources.landing import image_paths, sha256_file
from clinaudit.studies.base import ModelSpec, RunDirs

__all__ = [
    "auroc_markdown",
    "derived_thresholds",
    "model_fingerprint",
    "predict_site",
    "resolve_model",
    "scores_files",
    "training_spec",
]

KIND = "image_multilabel"
LANDING_DIR = "cxr"
#: Settings of the embedded model a run may change (``StudyModel.training``); ``scale`` is the
#: demo scale, which sets the others' defaults (:data:`SCALE_TRAINING`).
TRAINING_KEYS = ("arch", "input_size", "epochs", "scale")
#: Embedded-model settings per demo scale (the tiny scale is for tests: small input, two epochs).
SCALE_TRAINING: dict[str, dict[str, int]] = {"tiny": {"input_size": 64, "epochs": 2}}


def training_spec(spec: ModelSpec) -> VendorTrainingSpec:
    """The embedded model's training spec from the model settings (defaults: ``TrainConfig``)."""
    training = spec.training_settings("multisite_cxr", TRAINING_KEYS)
    settings = {**SCALE_TRAINING.get(str(training.get("scale")), {}), **training}
    train = TrainConfig(
        **{k: settings[k] for k in TRAINING_KEYS[:3] if settings.get(k) is not None},
        seed=spec.seed,
        device=spec.device,  # type: ignore[arg-type]
    )
    # Decoding training images overlaps nothing else: workers always help there.
    workers = VendorTrainingSpec.load_workers if spec.num_workers is None else spec.num_workers
    return VendorTrainingSpec(train=train, load_workers=workers)


def scores_files(scores: str) -> dict[str, Path]:
    """Site -> scores CSV: ``<scores>/<site>.csv``, or ``{"*": scores}`` for one file."""
    path = Path(scores).resolve()
    if path.is_file():
        return {"*": path}
    files = {f.stem: f for f in sorted(path.glob("*.csv"))}
    if not files:
        raise FileNotFoundError(
            f"{path}: no <site>.csv vendor scores files; put one CSV per site there named "
            "<site>.csv (Image Index + one probability column per finding, docs/formats.md)"
        )
    return files


def _scores_identity(files: dict[str, Path]) -> tuple[str, dict[str, str]]:
    digests = {key: sha256_file(f) for key, f in files.items()}
    by_name = {files[key].name: d for key, d in digests.items()}
    identity = hashlib.sha256(json.dumps(by_name, sort_keys=True).encode()).hexdigest()
    return identity, digests


def model_fingerprint(spec: ModelSpec) -> tuple[str, dict[str, Any]]:
    """Data version of what ``spec`` points at (see ``Study.model_fingerprint``)."""
    if spec.mode == "package":
        path = Path(str(spec.package_dir)).resolve()
        return package_sha256(path), {"mode": spec.mode, "package_dir": str(path)}
    if spec.mode == "scores":
        files = scores_files(str(spec.scores))
        digests = {f.name: sha256_file(f) for f in files.values()}
        version = "scores:" + ",".join(f"{k}={v[:16]}" for k, v in sorted(digests.items()))
        meta: dict[str, Any] = {"mode": spec.mode, "scores_files": digests}
        if spec.thresholds:
            digest = sha256_file(Path(spec.thresholds))
            version += f";thresholds={digest[:16]}"
            meta["thresholds_file"] = {str(Path(spec.thresholds).resolve()): digest}
        return version, meta
    doc = json.dumps(asdict(training_spec(spec)), sort_keys=True, default=str)
    meta = {"mode": spec.mode, "training_spec": json.loads(doc)}
    return "embedded-spec:" + hashlib.sha256(doc.encode()).hexdigest(), meta


def _card_summary(package_dir: Path) -> dict[str, Any]:
    """The model-card facts the report's appendix prints."""
    package = load_package(package_dir, expected_labels=FINDINGS)  # verifies the hash
    card = json.loads((package_dir / CARD_FILE).read_text(encoding="utf-8"))
    config = card.get("config", {})
    summary = {
        "vendor": card.get("vendor"),
        "intended_use": card.get("intended_use"),
        "adapter": card.get("adapter"),
        "architecture": config.get("architecture"),
        "input_size": config.get("input_size"),
        "version": config.get("version"),
        "created_utc": card.get("created_utc"),
        "labels": len(package.card.operating_thresholds),
    }
    return {k: v for k, v in summary.items() if v not in (None, "")}


def _package_ref(package_dir: Path, facts: dict[str, Any], mode: str) -> ModelRef:
    package = load_package(package_dir, expected_labels=FINDINGS)
    thresholds = {f: float(package.card.operating_thresholds[f]) for f in FINDINGS}
    return ModelRef(
        study="multisite_cxr",
        kind=KIND,
        mode=mode,
        identity=package.sha256,
        source=str(package.path.resolve()),
        targets=FINDINGS,
        thresholds=thresholds,
        threshold_source="the model card",
        card=_card_summary(package.path),
        facts={"vendor_reported_auroc": dict(package.card.validation_auroc), **facts},
    )


def resolve_model(
    spec: ModelSpec,
    *,
    reference: pd.DataFrame | None,
    dirs: RunDirs,
    log: Callable[[str], None],
    reference_site: str,
    policy: Any = None,
) -> ModelRef:
    """Verify the package, hash the scores files, or train / reuse the embedded model.

    Vendor scores are judged at the vendor's thresholds file (``spec.thresholds``); without one,
    at thresholds derived on the reference site's test split under the policy's rule
    (:func:`derived_thresholds`), and the threshold source says so.

    Raises
    ------
    AuditInputError
        If one operating threshold is configured: the 14 findings have one each, from the model
        card or the vendor's thresholds file (never a single number applied to every finding,
        silently or not); if a thresholds file comes with a model package (its card has them);
        if thresholds must be derived and the reference test split cannot give them.
    ThresholdsFileError
        If the thresholds file is missing, not JSON, or lacks / misnames a finding or has a value
        outside (0, 1).
    """
    if spec.threshold is not None:
        raise AuditInputError(
            "threshold",
            repr(spec.threshold),
            "no single threshold: multisite_cxr judges each finding at the operating threshold "
            "of the model card or of the vendor's thresholds file",
            "unset --threshold / CLINAUDIT_MULTISITE_CXR_THRESHOLD (vendor scores: pass "
            "--thresholds FILE with one threshold per finding)",
        )
    if spec.thresholds and spec.mode != "scores":
        raise AuditInputError(
            "thresholds",
            str(spec.thresholds),
            "a thresholds file only with vendor scores (a model package's card has them)",
            "unset --thresholds / CLINAUDIT_MULTISITE_CXR_THRESHOLDS",
        )
    if spec.mode == "scores":
        files = scores_files(str(spec.scores))
        identity, digests = _scores_identity(files)
        if spec.thresholds:
            vendor = read_thresholds_file(spec.thresholds, FINDINGS)
            thresholds, source = dict(vendor), vendor.source()
        else:
            thresholds, source = derived_thresholds(
                files, reference, reference_site=reference_site, policy=policy
            )
        log(f"operating thresholds: {source}")
        return ModelRef(
            study="multisite_cxr",
            kind=KIND,
            mode="scores",
            identity=identity,
            source=str(Path(str(spec.scores)).resolve()),
            targets=FINDINGS,
            thresholds=thresholds,
            threshold_source=source,
            card={
                "mode": "vendor scores only (no model package)",
                "scores_files": {files[k].name: d for k, d in digests.items()},
            },
            scores_files=digests,
        )
    if spec.mode == "package":
        return _package_ref(Path(str(spec.package_dir)), {}, "package")
    if reference is None:
        raise FileNotFoundError(
            f"the reference site {reference_site!r} is not ingested; land its batch (with "
            f"train_val_list.txt / test_list.txt) and materialize multisite_cxr/validated"
            f"[{reference_site}], or audit a vendor package (CLINAUDIT_MULTISITE_CXR_MODEL)"
        )
    result = train_vendor_model(
        reference,
        image_paths(reference, dirs.landing, LANDING_DIR),
        dirs.artifacts / "models" / "vendor_model",
        spec=training_spec(spec),
        log=log,
    )
    facts: dict[str, Any] = {
        "heldout_mean_auroc": result.heldout_mean_auroc,
        "heldout_auroc": auroc_markdown(result.heldout_auroc, result.heldout_positives),
        "n_test": result.n_test,
        "reused": result.reused,
        "seconds": round(result.seconds, 1),
    }
    if not result.reused:
        facts.update({"n_train": result.n_train, "n_val": result.n_val})
    return _package_ref(result.package_dir, facts, "embedded")


def derived_thresholds(
    files: dict[str, Path],
    reference: pd.DataFrame | None,
    *,
    reference_site: str,
    policy: Any,
) -> tuple[dict[str, float], str]:
    """Thresholds of vendor scores that came without the vendor's: per finding, the highest
    threshold giving the policy's ``derived_threshold_sensitivity`` on the reference test split.

    Returns
    -------
    (dict, str)
        Finding -> threshold, and the rule in words (printed on the report's first page).

    Raises
    ------
    AuditInputError
        If the reference site is not ingested, has no scores file or no test split, or a finding
        has no positive image of a finding at all (its threshold is undefined).
    """
    target = getattr(policy, "derived_threshold_sensitivity", None)
    fix = "pass the vendor's operating thresholds: --thresholds FILE (docs/model_package.md)"
    if target is None:
        raise AuditInputError("policy", "none", "the study policy (its threshold rule)", fix)
    path = files.get(reference_site) or files.get("*")
    if reference is None or path is None:
        what = "not ingested" if reference is None else f"without a {reference_site}.csv"
        raise AuditInputError(
            "thresholds",
            f"no vendor thresholds, and the reference site {reference_site!r} is {what}",
            "the vendor's thresholds, or the reference test split to derive them on",
            fix,
        )
    preds, _ = read_vendor_scores(
        path, label_table=reference, site=reference_site, batch="reference", others="ignore"
    )
    scores = preds.set_index("image_id").loc[reference["image_id"], list(FINDINGS)]
    labels = reference[list(FINDINGS)].to_numpy(float)
    test = (reference["split"] == "test").to_numpy() if "split" in reference else None
    if test is None or not test.any():
        raise AuditInputError(
            "thresholds",
            f"no vendor thresholds, and the reference site {reference_site!r} has no test split",
            "the vendor's thresholds, or a reference test split to derive them on",
            fix,
        )
    thresholds, widened, none = {}, [], []
    for j, finding in enumerate(FINDINGS):
        for rows, name in ((test, "test"), (np.ones_like(test), "all")):
            if (labels[rows, j] == 1).any():
                thresholds.update(
                    fit_operating_thresholds(
                        labels[rows, j : j + 1],
                        scores.to_numpy(float)[rows, j : j + 1],
                        target_sensitivity=float(target),
                        labels=[finding],
                    )
                )
                widened += [finding] if name == "all" else []
                break
        else:
            none.append(finding)
    if none:
        raise AuditInputError(
            "thresholds",
            f"no vendor thresholds, and the reference site {reference_site!r} has no positive "
            f"image of {none}, so no threshold reaches a sensitivity for them",
            "the vendor's operating threshold of every finding",
            fix,
        )
    source = (
        f"derived by the audit, not the vendor: no thresholds file came with the scores, so each "
        f"finding is judged at the highest threshold giving {float(target):.0%} sensitivity on "
        f"the reference test split ({reference_site}, {int(test.sum())} images; policy rule "
        "scores_without_thresholds.reference_sensitivity)"
    )
    if widened:
        source += (
            f"; {', '.join(widened)} had no positive in that split: derived on all "
            f"{len(reference)} labelled reference images"
        )
    return thresholds, source


def auroc_markdown(auroc: dict[str, float], positives: dict[str, int]) -> str:
    """Per-finding AUROC (and positives) as a markdown table."""
    lines = ["| finding | AUROC | positives |", "|---|---|---|"]
    for f in FINDINGS:
        lines.append(f"| {f} | {auroc.get(f, float('nan')):.3f} | {positives.get(f, 0)} |")
    return "\n".join(lines)


def predict_site(
    model: ModelRef,
    table: pd.DataFrame,
    *,
    site: str,
    spec: ModelSpec,
    dirs: RunDirs,
    log: Callable[[str], None],
    quarantine: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Scores of one site: the vendor's CSV checked against the site's images (the scores of
    images ``quarantine`` refused at ingest set aside and counted), or the package run on every
    validated image (each file re-hashed as it is read)."""
    t0 = time.perf_counter()
    n_aside = 0
    if model.mode == "scores":
        path = scores_files(model.source).get(site) or scores_files(model.source).get("*")
        if path is None or sha256_file(path) != model.partition_identity(site):
            raise ValueError(
                f"the scores file of {site!r} in {model.source} changed (or is missing) since "
                "the model stage hashed it; re-materialize multisite_cxr/model"
            )
        batches = ",".join(sorted(table["batch"].unique()))
        aside = quarantined_image_ids(quarantine)
        preds, warnings = read_vendor_scores(
            path, label_table=table, site=site, batch=batches, set_aside=aside
        )
        for w in warnings:
            log(f"warning: {w}")
        n_aside = int(preds.attrs.pop("n_set_aside", 0))
        if n_aside:
            log(f"{site}: scores of {n_aside} images quarantined at ingest set aside")
        device = "n/a (vendor scores)"
    else:
        pkg = load_package(model.source, expected_labels=FINDINGS)
        if pkg.sha256 != model.identity:
            raise ValueError(
                f"{pkg.path}: package sha256 {pkg.sha256} differs from the audited "
                f"{model.identity}; re-materialize multisite_cxr/model"
            )
        files = image_paths(table, dirs.landing, LANDING_DIR)
        loader = ImageFileLoader(
            pkg.config.input_size,
            expected_sha256=dict(zip(map(str, files), table["sha256"], strict=True)),
        )
        choice = select_device(spec.device, spec.precision)  # type: ignore[arg-type]
        batch = default_batch_size(choice) if spec.batch_size is None else spec.batch_size
        step = max(1, len(files) // 10)

        def progress(done: int, total: int) -> None:
            if done == total or done % step < batch:
                log(f"{site}: {done}/{total} images scored")

        probs = predict(
            pkg.model, pkg.config, files, batch_size=batch, num_workers=spec.num_workers,
            device=spec.device, precision=spec.precision, loader=loader,  # type: ignore[arg-type]
            progress=progress,
        )  # fmt: skip
        preds = predictions_frame(table, probs, FINDINGS, pkg.sha256)
        device = f"{choice.describe()}, batch {batch}"
    seconds = time.perf_counter() - t0
    y = table.set_index("image_id").loc[preds["image_id"], list(FINDINGS)].to_numpy(float)
    auroc = per_label_auroc(y, preds[list(FINDINGS)].to_numpy(float), FINDINGS)
    positives = {f: int(np.sum(y[:, i] == 1)) for i, f in enumerate(FINDINGS)}
    return preds, {
        "site": site,
        "n_images": len(preds),
        "model_sha256": str(preds["model_sha256"].iloc[0]) if len(preds) else "",
        "device": device,
        "scores_set_aside": n_aside if model.mode == "scores" else 0,
        "seconds": round(seconds, 2),
        "images_per_second": round(len(preds) / seconds, 1) if seconds > 0 else 0.0,
        "mean_auroc_point": float(np.nanmean(list(auroc.values()))),
        "auroc_point_estimates": "| Point estimates only; CIs come from the audit stage. |\n"
        "|---|\n\n" + auroc_markdown(auroc, positives),
    }
