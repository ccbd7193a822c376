"""Study ``multisite_cxr``, stage 2: the audited model and its predictions per site.

What is audited comes from the ``audited_model`` resource: a vendor model package (verified on
load), a directory of vendor scores CSVs (one ``<site>.csv`` per site), or by default the embedded
vendor model, trained here on the reference site's train split.
"""

import time
from pathlib import Path
from typing import Literal

import dagster as dg
import numpy as np
import pandas as pd

from clinaudit.assets.multisite_cxr import GROUP, OWNERS, STUDY_DIR, cxr_sites
from clinaudit.models.devices import select_device
from clinaudit.models.evaluation import per_label_auroc
from clinaudit.models.inference import (
    ImageFileLoader,
    default_batch_size,
    predict,
    predictions_frame,
)
from clinaudit.models.package import load_package
from clinaudit.models.scores_csv import ScoresError, read_vendor_scores
from clinaudit.models.training import TrainConfig
from clinaudit.models.vendor_model import VendorTrainingSpec, train_vendor_model
from clinaudit.orchestration.resources import ClinauditHome, table_path
from clinaudit.sources.cxr_labels import FINDINGS
from clinaudit.sources.cxr_sites import REFERENCE_SITE
from clinaudit.sources.landing import image_paths, sha256_file


class AuditedModel(dg.ConfigurableResource):
    """What the audit evaluates, and how inference runs (one home for these defaults).

    Set at most one of ``package_dir`` (a vendor model package) and ``scores_dir`` (vendor scores:
    ``<scores_dir>/<site>.csv``, or one CSV file for a one-site audit); with neither, the
    embedded vendor model is trained on the reference site ``vendor_dev`` (reused when spec and
    data are unchanged).
    """

    package_dir: str | None = None
    scores_dir: str | None = None
    # Training defaults have one home, ``TrainConfig``; these fields only expose them.
    arch: str = TrainConfig.arch
    input_size: int = TrainConfig.input_size
    epochs: int = TrainConfig.epochs
    seed: int = TrainConfig.seed
    device: str = "auto"
    # float32 on CPU unless "bf16" (CPUs with native bf16: ~1.45x faster end to end; scores move
    # ~1e-3 on average, up to 0.08 on the demo model: see models.devices.select_device).
    precision: str = "auto"
    # None: models.inference.default_batch_size (16 on the CPU, where a batch's activations
    # should stay in cache; 32 on a GPU).
    batch_size: int | None = None
    # None: decode workers only on a GPU (see models.inference.default_num_workers).
    num_workers: int | None = None

    def mode(self) -> Literal["package", "scores", "embedded"]:
        if self.package_dir and self.scores_dir:
            raise ValueError(
                "audited_model: both package_dir and scores_dir are set; audit either a model "
                "package or a scores directory, not both"
            )
        return "package" if self.package_dir else "scores" if self.scores_dir else "embedded"

    def training_spec(self) -> VendorTrainingSpec:
        return VendorTrainingSpec(
            train=TrainConfig(
                arch=self.arch,
                input_size=self.input_size,
                epochs=self.epochs,
                seed=self.seed,
                device=self.device,  # type: ignore[arg-type]
            ),
            # Decoding training images overlaps nothing else: workers always help there.
            load_workers=(
                VendorTrainingSpec.load_workers if self.num_workers is None else self.num_workers
            ),
        )


def _auroc_md(auroc: dict[str, float], positives: dict[str, int]) -> str:
    lines = ["| finding | AUROC | positives |", "|---|---|---|"]
    for f in FINDINGS:
        value = auroc.get(f, float("nan"))
        lines.append(f"| {f} | {value:.3f} | {positives.get(f, 0)} |")
    return "\n".join(lines)


@dg.asset(
    group_name=GROUP,
    io_manager_key="table_io",
    owners=OWNERS,
    deps=[
        dg.AssetDep(
            "cxr_validated_images",
            partition_mapping=dg.SpecificPartitionsPartitionMapping([REFERENCE_SITE]),
        ),
        "vendor_model_package_file",
    ],
    description="The model under audit: a verified vendor model package, vendor scores, or the "
    "embedded vendor model trained on the reference site's train split (patient-disjoint from "
    "its held-out test split). Metadata: held-out AUROC per finding.",
)
def vendor_model(
    context: dg.AssetExecutionContext, audited_model: AuditedModel, home: ClinauditHome
) -> dg.Output[pd.DataFrame]:
    mode = audited_model.mode()
    meta: dict[str, object] = {"mode": mode}
    if mode == "scores":
        scores_dir = Path(audited_model.scores_dir).resolve()
        files = [scores_dir] if scores_dir.is_file() else sorted(scores_dir.glob("*.csv"))
        if not files:
            raise FileNotFoundError(
                f"{scores_dir}: no <site>.csv vendor scores files; see docs/formats.md"
            )
        digests = {f.name: sha256_file(f) for f in files}
        row = {"mode": mode, "scores_dir": str(scores_dir)}
        meta["scores_files"] = dg.MetadataValue.json(digests)
        version = "scores:" + ",".join(f"{k}={v[:16]}" for k, v in digests.items())
    elif mode == "package":
        pkg = load_package(audited_model.package_dir, expected_labels=FINDINGS)
        row = {"mode": mode, "package_dir": str(pkg.path.resolve()), "package_sha256": pkg.sha256}
        meta["vendor_reported_auroc"] = dg.MetadataValue.md(
            _auroc_md(dict(pkg.card.validation_auroc), {})
        )
        version = pkg.sha256
    else:
        ref_path = table_path(home, dg.AssetKey("cxr_validated_images"), REFERENCE_SITE)
        if not ref_path.exists():
            raise FileNotFoundError(
                f"{ref_path}: the reference site {REFERENCE_SITE!r} is not ingested; land its "
                "batch (with train_val_list.txt / test_list.txt) and materialize "
                f"cxr_validated_images[{REFERENCE_SITE}], or configure audited_model.package_dir"
            )
        reference = pd.read_parquet(ref_path)
        result = train_vendor_model(
            reference,
            image_paths(reference, home.landing, STUDY_DIR),
            home.artifacts / "models" / "vendor_model",
            spec=audited_model.training_spec(),
            log=context.log.info,
        )
        row = {
            "mode": mode,
            "package_dir": str(result.package_dir.resolve()),
            "package_sha256": result.package_sha256,
        }
        meta.update(
            {
                "heldout_mean_auroc": result.heldout_mean_auroc,
                "heldout_auroc": dg.MetadataValue.md(
                    _auroc_md(result.heldout_auroc, result.heldout_positives)
                ),
                **(
                    {"n_train": result.n_train, "n_val": result.n_val}
                    if not result.reused
                    else {"training_summary": "reused package: see its model_card.json"}
                ),
                "n_test": result.n_test,
                "reused": result.reused,
                "seconds": round(result.seconds, 1),
            }
        )
        version = result.package_sha256
    meta.update({k: v for k, v in row.items() if k != "mode"})
    return dg.Output(pd.DataFrame([row]), metadata=meta, data_version=dg.DataVersion(version))


def scores_file(scores: str, site: str) -> Path:
    """``<scores>/<site>.csv``, or ``scores`` itself when it is one CSV (a one-site audit)."""
    if Path(scores).is_file():
        return Path(scores)
    scores_dir = scores
    path = Path(scores_dir) / f"{site}.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no vendor scores for site {site!r}; put one CSV per site in {scores_dir} "
            "named <site>.csv (Image Index + one probability column per finding)"
        )
    return path


@dg.asset(
    group_name=GROUP,
    io_manager_key="table_io",
    owners=OWNERS,
    partitions_def=cxr_sites,
    ins={"cxr_validated_images": dg.AssetIn(), "vendor_model": dg.AssetIn()},
    description="Per-site predictions: image id, site, patient pseudonym, one probability per "
    "finding and the sha256 of the model package (or scores file) that produced them.",
)
def cxr_predictions(
    context: dg.AssetExecutionContext,
    cxr_validated_images: pd.DataFrame,
    vendor_model: pd.DataFrame,
    audited_model: AuditedModel,
    home: ClinauditHome,
) -> dg.Output[pd.DataFrame]:
    site = context.partition_key
    table = cxr_validated_images
    source = vendor_model.iloc[0]
    t0 = time.perf_counter()
    if source["mode"] == "scores":
        path = scores_file(source["scores_dir"], site)
        try:
            preds, warnings = read_vendor_scores(
                path, label_table=table, site=site, batch=",".join(sorted(table["batch"].unique()))
            )
        except ScoresError as err:
            context.log.error(str(err))
            raise
        for w in warnings:
            context.log.warning(str(w))
        device = "n/a (vendor scores)"
    else:
        pkg = load_package(source["package_dir"], expected_labels=FINDINGS)
        if pkg.sha256 != source["package_sha256"]:
            raise ValueError(
                f"{pkg.path}: package sha256 {pkg.sha256} differs from the audited "
                f"{source['package_sha256']}; re-materialize vendor_model"
            )
        files = image_paths(table, home.landing, STUDY_DIR)
        # Each file is re-hashed as it is read: what is scored is what was validated.
        loader = ImageFileLoader(
            pkg.config.input_size,
            expected_sha256=dict(zip(map(str, files), table["sha256"], strict=True)),
        )
        step = max(1, len(files) // 10)
        choice = select_device(audited_model.device, audited_model.precision)  # type: ignore[arg-type]
        batch = (
            default_batch_size(choice)
            if audited_model.batch_size is None
            else audited_model.batch_size
        )

        def progress(done: int, total: int) -> None:
            if done == total or done % step < batch:
                context.log.info(f"{site}: {done}/{total} images scored")

        probs = predict(
            pkg.model,
            pkg.config,
            files,
            batch_size=batch,
            num_workers=audited_model.num_workers,
            device=audited_model.device,  # type: ignore[arg-type]
            precision=audited_model.precision,  # type: ignore[arg-type]
            loader=loader,
            progress=progress,
        )
        preds = predictions_frame(table, probs, FINDINGS, pkg.sha256)
        device = f"{choice.describe()}, batch {batch}"
    seconds = time.perf_counter() - t0
    y = table.set_index("image_id").loc[preds["image_id"], list(FINDINGS)].to_numpy(float)
    auroc = per_label_auroc(y, preds[list(FINDINGS)].to_numpy(float), FINDINGS)
    positives = {f: int(np.sum(y[:, i] == 1)) for i, f in enumerate(FINDINGS)}
    return dg.Output(
        preds,
        metadata={
            "site": site,
            "n_images": len(preds),
            "model_sha256": str(preds["model_sha256"].iloc[0]) if len(preds) else "",
            "device": str(device),
            "seconds": round(seconds, 2),
            "images_per_second": round(len(preds) / seconds, 1) if seconds > 0 else 0.0,
            "mean_auroc_point": float(np.nanmean(list(auroc.values()))),
            "auroc_point_estimates": dg.MetadataValue.md(
                "Point estimates only; CIs come from the audit stage.\n\n"
                + _auroc_md(auroc, positives)
            ),
        },
    )


ASSETS = [vendor_model, cxr_predictions]
