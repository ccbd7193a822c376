"""peds_vqa end to end on its tiny demo (``conftest.tiny_demo``): what the signed package and the
stored evidence must show, whatever the tiny model learned."""

from __future__ import annotations

import io
import json
import re
import subprocess

import numpy as np
import pytest
from system_tools import require_tool

from clinaudit.assets.audit_stages import stored_bundle
from clinaudit.assets.resources import ClinauditHome
from clinaudit.audit.calibration_fit import expit
from clinaudit.models.vlm.package import load_vlm_package
from clinaudit.models.vlm.train import lora_modules_by_tower
from clinaudit.studies import get_study
from clinaudit.studies.peds_vqa.localization import MAP_FILE
from clinaudit.studies.peds_vqa.policy import PedsVqaPolicy


@pytest.fixture(scope="module")
def bundle(tiny_demo):
    study = get_study("peds_vqa")
    home = ClinauditHome(root=str(tiny_demo(study.name)))
    return stored_bundle(home, study)


def test_the_model_stage_records_both_models_and_lora_only_in_the_language_model(bundle) -> None:
    facts = bundle.model.facts
    assert set(facts["packages"]) == {"base", "tuned"}
    towers = facts["lora"]["lora"]["modules_by_tower"]
    assert towers["vision"] == 0 and towers["language"] > 0
    tuned = load_vlm_package(facts["packages"]["tuned"]["path"])
    assert tuned.sha256 == facts["packages"]["tuned"]["sha256"]
    assert lora_modules_by_tower(tuned.model)["vision"] == 0  # merged: no LoRA module left
    assert facts["pretraining"]["n_images"] > 0 and facts["lora"]["n_images"] > 0


def test_recalibrated_answers_follow_the_fitted_temperatures(bundle) -> None:
    ev = bundle.evidence
    fits = ev["calibrators"].set_index(["model", "group"])
    answers = ev["evaluation_set"]
    for r in answers.itertuples():
        fit = fits.loc[(r.model, r.category)]
        assert r.p == pytest.approx(float(expit(r.z / fit["temperature"])), abs=1e-9)


def test_thresholds_come_from_validation_and_criteria_from_the_pooled_test(bundle) -> None:
    ev, policy = bundle.evidence, bundle.policy
    assert isinstance(policy, PedsVqaPolicy)
    thr = ev["thresholds"]
    assert len(thr) == 2 * len(policy.categories)
    ops = ev["operating"]
    pooled = ops[ops["set"] == "pooled_test"].merge(thr, left_on=["model", "group"],
                                                    right_on=["model", "category"])  # fmt: skip
    assert np.allclose(pooled["threshold_x"], pooled["threshold_y"])
    crit = bundle.decisions["criteria"]
    sens = crit[crit["criterion"] == "sensitivity"].set_index("category")["value"]
    tuned = pooled[pooled["model"] == "tuned"].set_index("group")
    assert np.allclose(sens.loc[tuned.index], tuned["sensitivity"])
    decisions = bundle.decisions["decisions"].set_index("category")["decision"]
    for cat in policy.categories:
        failed = crit[(crit["category"].isin([cat, "overall"]))
                      & (crit["passed"] == False)]  # noqa: E712  # fmt: skip
        assert decisions[cat] == ("NO-GO" if len(failed) else "GO")


def test_calibration_is_shown_beside_the_perfectly_calibrated_reference(bundle) -> None:
    cal = bundle.evidence["calibration"]
    assert set(cal["set"]) == {"pooled_test", "evaluation_set"}
    assert (cal["perfect_plugin_median"] > cal["perfect_debiased_median"]).all()
    assert (cal["debiased_ci_low"] <= cal["debiased_ci_high"]).all()
    rel = bundle.evidence["reliability"]
    assert (
        rel.groupby("set")["n"].sum().to_dict()
        == cal[(cal["model"] == "tuned") & (cal["scale"] == "recalibrated")]
        .set_index("set")["n"]
        .to_dict()
    )


def test_maps_latency_and_controls_are_measured(bundle) -> None:
    ev = bundle.evidence
    lat = ev["latency"]
    assert len(lat) > 0 and (lat["seconds"] > 0).all()
    assert lat["hardware"].iloc[0] and lat["precision"].iloc[0] in ("fp32", "bf16")
    controls = ev["controls"]
    assert set(controls["control"]) >= {"blank"}
    examples = ev["map_examples"]
    if len(examples):
        npz = np.load(io.BytesIO(ev.files[MAP_FILE]))
        grid = bundle.model.facts["config"]["image_size"] // bundle.model.facts["config"][
            "patch_size"]  # fmt: skip
        assert npz["gradcam_0"].shape == (grid, grid) and npz["gradcam_0"].max() > 0
    towers = ev["localization"]
    assert set(towers["method"]) <= {"gradcam", "rollout"}


def test_the_package_carries_the_question_set_and_the_report_states_the_settings(
    tiny_demo,
) -> None:
    home = ClinauditHome(root=str(tiny_demo("peds_vqa")))
    package = sorted(p for p in (home.reports / "peds_vqa").iterdir() if p.is_dir())[-1]
    doc = json.loads((package / "evaluation_set.json").read_text())
    assert doc["questions"] and {"question_id", "question", "answer"} <= set(doc["questions"][0])
    pdftotext = require_tool("pdftotext", "poppler-utils")
    text = subprocess.run([pdftotext, str(package / "report.pdf"), "-"], capture_output=True,
                          text=True, check=True).stdout  # fmt: skip
    # Hyphenation breaks words across lines with U+2010; join them before matching.
    flat = " ".join(re.sub(r"\u2010\s*", "", text).split())
    assert "lora_rank=8" in flat and "0 in the vision tower" in flat
    assert "no clinical claim" in flat and "context only" in flat


def test_a_local_checkpoint_is_lora_tuned_and_audited_through_the_same_stages(
    tiny_demo, tmp_path, monkeypatch
) -> None:
    """``--base-model``: a checkpoint with its own tokenizer and a config VlmConfig cannot
    express is read (kind from config.json), LoRA-tuned, packaged with its class configuration,
    audited on the tiny landing, and the report says the base was not pretrained here."""
    from vlm_checkpoint import save_tiny_checkpoint

    from clinaudit.orchestration.cli import main

    ckpt = save_tiny_checkpoint(tmp_path / "ckpt", "paligemma", seed=1)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    landing = tiny_demo("peds_vqa") / "landing"
    args = ["audit", "--study", "peds_vqa", "--landing", str(landing), "--out",
            str(tmp_path / "out"), "--base-model", str(ckpt), "--workers", "1"]  # fmt: skip
    assert main(args) == 0
    study = get_study("peds_vqa")
    bundle = stored_bundle(ClinauditHome(root=str(tmp_path / "out")), study)
    facts = bundle.model.facts
    assert facts["pretraining"] == {"source": str(ckpt.resolve()), "local_files_only": True}
    assert facts["settings"]["kind"] == "paligemma" and "adult_images" not in facts["settings"]
    assert facts["lora"]["lora"]["modules_by_tower"]["vision"] == 0
    tuned = load_vlm_package(facts["packages"]["tuned"]["path"])
    assert tuned.model.config.text_config.num_key_value_heads == 1
    assert tuned.tokenizer.bos_token_id == 2  # the checkpoint's tokenizer, not a retrained one
    package = sorted(p for p in (tmp_path / "out" / "reports" / "peds_vqa").iterdir())[-1]
    pdftotext = require_tool("pdftotext", "poppler-utils")
    text = subprocess.run([pdftotext, str(package / "report.pdf"), "-"], capture_output=True,
                          text=True, check=True).stdout  # fmt: skip
    flat = " ".join(re.sub(r"\u2010\s*", "", text).split())
    assert "not pretrained here" in flat and f"base_model={ckpt.resolve()}" in flat
