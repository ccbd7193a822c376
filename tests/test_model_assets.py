"""vendor_model + cxr_predictions in-process on a tiny cohort: embedded, package, scores modes."""

from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from clinaudit.assets import multisite_cxr, multisite_cxr_model
from clinaudit.assets.multisite_cxr_model import AuditedModel
from clinaudit.models.training import TrainConfig
from clinaudit.models.vendor_model import (
    VendorTrainingSpec,
    patient_disjoint_split,
    train_vendor_model,
)
from clinaudit.orchestration.definitions import ALL_ASSETS, build_resources
from clinaudit.orchestration.resources import ClinauditHome
from clinaudit.sources.cxr_labels import FINDINGS
from clinaudit.sources.cxr_simulator import simulate_site_batch
from clinaudit.sources.landing import image_paths

SITES = ("vendor_dev", "site_c")
TINY = {"input_size": 64, "epochs": 2, "num_workers": 0}


def _run(home: ClinauditHome, model: AuditedModel, instance: dg.DagsterInstance, asset, site=None):
    return dg.materialize(
        ALL_ASSETS,
        selection=[asset],
        partition_key=site,
        instance=instance,
        resources=build_resources(home, model),
        run_config={"ops": {"cxr_ingest": {"config": {"workers": 1}}}}
        if asset is multisite_cxr.cxr_ingest
        else None,
    )


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[ClinauditHome, dg.DagsterInstance]:
    root = tmp_path_factory.mktemp("models")
    home = ClinauditHome(root=str(root))
    for site in SITES:
        simulate_site_batch(
            home.landing, truth_root=root / "truth", site=site, scale="tiny", seed=5, workers=1
        )
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("cxr_sites", list(SITES))
    model = AuditedModel(**TINY)
    for site in SITES:
        _run(home, model, instance, multisite_cxr.cxr_ingest, site)
    _run(home, model, instance, multisite_cxr_model.vendor_model)
    for site in SITES:
        _run(home, model, instance, multisite_cxr_model.cxr_predictions, site)
    return home, instance


def _table(home: ClinauditHome, asset: str, partition: str) -> pd.DataFrame:
    return pd.read_parquet(home.artifacts / "tables" / asset / f"{partition}.parquet")


def test_embedded_model_and_predictions(pipeline: tuple[ClinauditHome, dg.DagsterInstance]) -> None:
    home, instance = pipeline
    model_row = _table(home, "vendor_model", "__all__").iloc[0]
    assert model_row["mode"] == "embedded"
    package = Path(model_row["package_dir"])
    assert (package / "model.safetensors").exists() and (package / "model_card.json").exists()
    event = instance.get_latest_materialization_event(dg.AssetKey("vendor_model"))
    meta = event.asset_materialization.metadata
    assert 0.0 <= meta["heldout_mean_auroc"].value <= 1.0
    assert "Hernia" in meta["heldout_auroc"].value
    for site in SITES:
        preds = _table(home, "cxr_predictions", site)
        images = _table(home, "cxr_validated_images", site)
        assert list(preds["image_id"]) == list(images["image_id"])
        probs = preds[list(FINDINGS)].to_numpy()
        assert np.isfinite(probs).all() and (probs >= 0).all() and (probs <= 1).all()
        assert (preds["model_sha256"] == model_row["package_sha256"]).all()


def test_package_mode_reproduces_predictions(
    pipeline: tuple[ClinauditHome, dg.DagsterInstance],
) -> None:
    home, instance = pipeline
    package = _table(home, "vendor_model", "__all__").iloc[0]["package_dir"]
    before = _table(home, "cxr_predictions", "site_c")
    model = AuditedModel(package_dir=package, num_workers=0)
    _run(home, model, instance, multisite_cxr_model.vendor_model)
    assert _table(home, "vendor_model", "__all__").iloc[0]["mode"] == "package"
    _run(home, model, instance, multisite_cxr_model.cxr_predictions, "site_c")
    after = _table(home, "cxr_predictions", "site_c")
    pd.testing.assert_frame_equal(before, after)  # deterministic on CPU


def test_scores_mode_uses_vendor_csv_and_rejects_bad_ids(
    pipeline: tuple[ClinauditHome, dg.DagsterInstance], tmp_path: Path
) -> None:
    home, instance = pipeline
    preds = _table(home, "cxr_predictions", "site_c")
    scores = preds[["image_id", *FINDINGS]].rename(columns={"image_id": "Image Index"})
    scores_dir = tmp_path / "scores"
    scores_dir.mkdir()
    scores.to_csv(scores_dir / "site_c.csv", index=False)
    model = AuditedModel(scores_dir=str(scores_dir))
    _run(home, model, instance, multisite_cxr_model.vendor_model)
    _run(home, model, instance, multisite_cxr_model.cxr_predictions, "site_c")
    got = _table(home, "cxr_predictions", "site_c")
    np.testing.assert_allclose(got[list(FINDINGS)].to_numpy(), preds[list(FINDINGS)].to_numpy())
    # A scores file whose ids do not match the label table fails with the line and the id.
    scores.loc[3, "Image Index"] = "not_an_image.dcm"
    scores.to_csv(scores_dir / "site_c.csv", index=False)
    _run(home, model, instance, multisite_cxr_model.vendor_model)
    result = dg.materialize(
        ALL_ASSETS,
        selection=[multisite_cxr_model.cxr_predictions],
        partition_key="site_c",
        instance=instance,
        resources=build_resources(home, model),
        raise_on_error=False,
    )
    assert not result.success
    failure = result.get_step_failure_events()[0].event_specific_data.error.to_string()
    assert "not_an_image.dcm" in failure and "line 5" in failure


def test_both_package_and_scores_is_refused() -> None:
    with pytest.raises(ValueError, match="not both"):
        AuditedModel(package_dir="a", scores_dir="b").mode()


def test_vendor_training_is_patient_disjoint_and_reused(
    pipeline: tuple[ClinauditHome, dg.DagsterInstance], tmp_path: Path
) -> None:
    home, _ = pipeline
    reference = _table(home, "cxr_validated_images", "vendor_dev")
    rest, held = patient_disjoint_split(reference["patient_pseudonym"], 0.2, seed=0)
    assert not set(reference["patient_pseudonym"][rest]) & set(reference["patient_pseudonym"][held])
    spec = VendorTrainingSpec(
        train=TrainConfig(input_size=64, epochs=1, num_threads=1), load_workers=0
    )
    files = image_paths(reference, home.landing, "cxr")
    first = train_vendor_model(reference, files, tmp_path, spec=spec, log=lambda m: None)
    second = train_vendor_model(reference, files, tmp_path, spec=spec, log=lambda m: None)
    assert not first.reused and second.reused
    assert first.package_sha256 == second.package_sha256
    assert first.heldout_auroc == second.heldout_auroc
    assert first.n_test == int((reference["split"] == "test").sum())
