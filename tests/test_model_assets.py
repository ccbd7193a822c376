"""multisite_cxr model + predictions in-process on a tiny cohort: embedded, package, scores."""

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from pipeline_helpers import materialize

from clinaudit.assets.factory import partitions_name
from clinaudit.assets.resources import ClinauditHome, StudyModel, read_stored
from clinaudit.audit.records import ModelRef
from clinaudit.models.training import TrainConfig
from clinaudit.models.vendor_model import (
    VendorTrainingSpec,
    patient_disjoint_split,
    train_vendor_model,
)
from clinaudit.sources.cxr_labels import FINDINGS
from clinaudit.sources.cxr_simulator import simulate_site_batch
from clinaudit.sources.landing import image_paths
from clinaudit.studies import get_study
from clinaudit.studies.base import ModelSpec

STUDY = "multisite_cxr"
SITES = ("vendor_dev", "site_c")
TINY = {"training": {"input_size": 64, "epochs": 2}, "num_workers": 0}


def _run(home: ClinauditHome, model: StudyModel, instance: dg.DagsterInstance, stage, site=None):
    config = {"ops": {f"{STUDY}__ingest": {"config": {"workers": 1}}}}
    result = materialize(
        home, instance, STUDY, stage, partition=site, model=model,
        run_config=config if stage == "validated" else None,
    )  # fmt: skip
    return result


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[ClinauditHome, dg.DagsterInstance]:
    root = tmp_path_factory.mktemp("models")
    home = ClinauditHome(root=str(root))
    for site in SITES:
        simulate_site_batch(
            home.landing, truth_root=root / "truth", site=site, scale="tiny", seed=5, workers=1
        )
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(partitions_name(get_study(STUDY)), list(SITES))
    model = StudyModel(study=STUDY, **TINY)
    for site in SITES:
        assert _run(home, model, instance, "validated", site).success
    assert _run(home, model, instance, "model").success
    for site in SITES:
        assert _run(home, model, instance, "predictions", site).success
    return home, instance


def _model(home: ClinauditHome) -> ModelRef:
    return read_stored(home, f"{STUDY}/model")


def test_embedded_model_and_predictions(pipeline: tuple[ClinauditHome, dg.DagsterInstance]) -> None:
    home, instance = pipeline
    model = _model(home)
    assert model.mode == "embedded" and model.targets == FINDINGS
    package = Path(model.source)
    assert (package / "model.safetensors").exists() and (package / "model_card.json").exists()
    # The card's thresholds and facts travel with the record: no later stage re-loads them.
    assert set(model.thresholds) == set(FINDINGS) and model.threshold_source == "the model card"
    assert model.card["architecture"] == "resnet10t" and model.card["input_size"] == 64
    event = instance.get_latest_materialization_event(dg.AssetKey([STUDY, "model"]))
    meta = event.asset_materialization.metadata
    assert 0.0 <= meta["heldout_mean_auroc"].value <= 1.0
    assert "Hernia" in meta["heldout_auroc"].value
    for site in SITES:
        preds = read_stored(home, f"{STUDY}/predictions", site)
        images = read_stored(home, f"{STUDY}/validated", site)
        assert list(preds["image_id"]) == list(images["image_id"])
        probs = preds[list(FINDINGS)].to_numpy()
        assert np.isfinite(probs).all() and (probs >= 0).all() and (probs <= 1).all()
        assert (preds["model_sha256"] == model.identity).all()


def test_package_mode_reproduces_predictions(
    pipeline: tuple[ClinauditHome, dg.DagsterInstance],
) -> None:
    home, instance = pipeline
    package = _model(home).source
    before = read_stored(home, f"{STUDY}/predictions", "site_c")
    model = StudyModel(study=STUDY, package_dir=package, num_workers=0)
    assert _run(home, model, instance, "model").success
    assert _model(home).mode == "package"
    assert _run(home, model, instance, "predictions", "site_c").success
    after = read_stored(home, f"{STUDY}/predictions", "site_c")
    pd.testing.assert_frame_equal(before, after)  # deterministic on CPU


def test_scores_mode_uses_vendor_csv_and_rejects_bad_ids(
    pipeline: tuple[ClinauditHome, dg.DagsterInstance], tmp_path: Path
) -> None:
    home, instance = pipeline
    preds = read_stored(home, f"{STUDY}/predictions", "site_c")
    scores = preds[["image_id", *FINDINGS]].rename(columns={"image_id": "Image Index"})
    scores_dir = tmp_path / "scores"
    scores_dir.mkdir()
    scores.to_csv(scores_dir / "site_c.csv", index=False)
    # Without the vendor's thresholds, and without the reference site's scores to derive them on,
    # the model stage refuses (never 0.5 silently) and says what to pass.
    derive = _run(home, StudyModel(study=STUDY, scores=str(scores_dir)), instance, "model")
    assert not derive.success
    error = derive.get_step_failure_events()[0].event_specific_data.error.to_string()
    assert "without a vendor_dev.csv" in error and "--thresholds FILE" in error
    thresholds = tmp_path / "thresholds.json"
    thresholds.write_text(json.dumps(dict(_model(home).thresholds)))
    model = StudyModel(study=STUDY, scores=str(scores_dir), thresholds=str(thresholds))
    assert _run(home, model, instance, "model").success
    assert _model(home).scores_files.keys() == {"site_c"}
    assert _model(home).threshold_source.startswith("the vendor's thresholds file")
    assert _run(home, model, instance, "predictions", "site_c").success
    got = read_stored(home, f"{STUDY}/predictions", "site_c")
    np.testing.assert_allclose(got[list(FINDINGS)].to_numpy(), preds[list(FINDINGS)].to_numpy())
    # A scores file changed after the model stage hashed it is refused until it re-runs.
    scores.loc[3, "Image Index"] = "not_an_image.dcm"
    scores.to_csv(scores_dir / "site_c.csv", index=False)
    stale = _run(home, model, instance, "predictions", "site_c")
    assert not stale.success
    message = stale.get_step_failure_events()[0].event_specific_data.error.to_string()
    assert "re-materialize multisite_cxr/model" in message
    # A scores file whose ids do not match the label table fails with the line and the id.
    assert _run(home, model, instance, "model").success
    result = _run(home, model, instance, "predictions", "site_c")
    assert not result.success
    failure = result.get_step_failure_events()[0].event_specific_data.error.to_string()
    assert "not_an_image.dcm" in failure and "line 5" in failure


def test_both_package_and_scores_is_refused() -> None:
    with pytest.raises(ValueError, match="not both"):
        ModelSpec(package_dir="a", scores="b").mode  # noqa: B018 (the property raises)
    with pytest.raises(ValueError, match=r"settings \['width'\] are not known"):
        get_study(STUDY).model_fingerprint(ModelSpec(training={"width": 3}))


def test_vendor_training_is_patient_disjoint_and_reused(
    pipeline: tuple[ClinauditHome, dg.DagsterInstance], tmp_path: Path
) -> None:
    home, _ = pipeline
    reference = read_stored(home, f"{STUDY}/validated", "vendor_dev")
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


def test_a_single_threshold_is_refused_not_ignored(
    pipeline: tuple[ClinauditHome, dg.DagsterInstance],
) -> None:
    home, instance = pipeline
    model = StudyModel(study=STUDY, threshold=0.3, **TINY)
    result = _run(home, model, instance, "model")
    assert not result.success
    message = result.get_step_failure_events()[0].event_specific_data.error.to_string()
    assert "operating threshold of the model card" in message and "--threshold" in message
    event = instance.get_latest_materialization_event(dg.AssetKey([STUDY, "validated"]))
    assert "pseudonym_key" in event.asset_materialization.metadata  # where the key came from
