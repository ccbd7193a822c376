"""The sepsis_ews pipeline on a tiny landed network (temporary instance and home).

The generic runner materializes every stage of the study; the landing holds a batch with bad
rows, a stay landed twice in one hospital, a stay landed at two hospitals and a batch whose
bytes changed after landing. Also: an unsafe vendor package and scores without a threshold are
refused at the model stage, and a scores-only audit reports scores of stays nobody landed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import skops.io as sio
from sepsis_fixtures import STUDY, fast_policy, landed_files, step_failure, tiny_model

from clinaudit.assets.resources import ClinauditHome, StudyModel, read_stored
from clinaudit.audit.policy_base import Decision
from clinaudit.audit.records import ModelRef, TableSet
from clinaudit.models.tabular import (
    CARD_FILE,
    MODEL_FILE,
    save_tabular_package,
    train_tabular_vendor_model,
)
from clinaudit.orchestration.runner import PipelineRunner, register_partitions
from clinaudit.reporting.verify import verify_pdf
from clinaudit.sources.landing import sha256_file
from clinaudit.sources.sepsis_simulator import (
    simulate_network,
    simulate_vendor_population,
    write_sepsis_batch,
)

P = STUDY.name


def _bad_batch(home: ClinauditHome) -> int:
    """hosp_c lands a month as CSV with six bad rows among good ones; returns its rows."""
    frame = simulate_network("tiny", seed=7, months=(13,)).stays
    frame = frame[frame["hospital"] == "hosp_c"].head(12).reset_index(drop=True)
    frame = frame.astype({"age": object, "heart_rate": object, "race_ethnicity": object})
    frame.loc[0, "age"] = -4.0
    frame.loc[1, "heart_rate"] = 350.0
    frame.loc[2, "race_ethnicity"] = "black"
    frame.loc[4, "stay_id"] = frame.loc[3, "stay_id"]  # both copies are quarantined
    frame.loc[5, "hospital"] = "hosp_a"  # landed under the wrong hospital
    write_sepsis_batch(home.landing, frame, "2025-01", site="hosp_c", fmt="csv")
    return len(frame)


def _twice(home: ClinauditHome) -> str:
    """hosp_b lands a copy of one hosp_a stay (under hosp_b): landed at two hospitals."""
    stays = simulate_network("tiny", seed=0, months=(1,)).stays
    copy = stays[stays["hospital"] == "hosp_a"].head(1).assign(hospital="hosp_b")
    write_sepsis_batch(home.landing, copy, "2025-02", site="hosp_b")
    return str(copy["stay_id"].iloc[0])


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("sepsis")
    home = ClinauditHome(root=str(root / "home"))
    summary = STUDY.simulate(home.landing, root / "truth", scale="tiny", seed=0, workers=1)
    n_bad_batch = _bad_batch(home)
    twin = _twice(home)
    victim = home.landing / P / "hosp_d" / "2024-05" / "stays.parquet"
    victim.write_bytes(victim.read_bytes() + b"\0")  # changed after landing: refused whole
    before = landed_files(home)
    instance = dg.DagsterInstance.ephemeral()
    policy = fast_policy(root / "policy")
    runner = PipelineRunner(
        instance, home, STUDY, model=tiny_model(), policy_path=str(policy),
        console_level="CRITICAL",
    )  # fmt: skip
    runs = runner.run_all(register_partitions(instance, home, STUDY))
    assert landed_files(home) == before, "landed data must never be modified"
    return {
        "home": home, "instance": instance, "runs": runs, "n_bad_batch": n_bad_batch,
        "twin": twin, "summary": summary, "policy": policy, "root": root,
    }  # fmt: skip


def _latest_meta(instance: dg.DagsterInstance, key: str) -> dict[str, object]:
    records = instance.fetch_materializations(dg.AssetKey(key.split("/")), limit=1).records
    assert records, f"{key} was never materialized"
    meta = records[0].asset_materialization.metadata
    return {k: getattr(v, "value", v) for k, v in meta.items()}


def test_simulator_landed_the_tiny_network(pipeline) -> None:
    summary = pipeline["summary"]
    assert sorted(summary.partitions) == ["hosp_a", "hosp_b", "hosp_c", "hosp_d"]
    assert summary.unit == "stay" and sum(summary.partitions.values()) == len(
        simulate_network("tiny", seed=0).stays
    )
    truth = json.loads((pipeline["root"] / "truth" / P / "truth.json").read_text())
    assert truth["disadvantaged"]["group"] == "Black"


def test_every_stage_ran_and_the_package_verifies(pipeline) -> None:
    home, instance, runs = pipeline["home"], pipeline["instance"], pipeline["runs"]
    blocked = {r.partition for r in runs if r.blocking_failure}
    assert blocked == {"hosp_d"}, runs  # its changed batch fails the blocking integrity check
    stages = [r.stage for r in runs if r.partition is None]
    assert stages[-5:] == ["evidence", "mitigation_largest_gap", "decisions", "monitoring",
                           "package"]  # fmt: skip
    assert all(r.success for r in runs if r.partition is None)
    meta = _latest_meta(instance, f"{P}/package")
    assert meta["verified"] is True and meta["simulated"] is True
    assert meta["decisions"] == {"network": read_stored(home, f"{P}/decisions").facts[
        "recommendation"]}  # fmt: skip
    assert STUDY.page_budget[0] - 2 <= meta["pages"] <= STUDY.page_budget[1]
    package = Path(str(meta["package_dir"]))
    assert package.parent == home.reports / P
    verdict = verify_pdf(package / "report.pdf", package_dir=package)
    assert verdict.ok, verdict
    manifest = json.loads((package / "manifest.json").read_text())
    assert f"{P}/hosp_a/2024-01" in manifest["inputs"] and "audit_policy" in manifest["inputs"]
    assert f"{P}/hosp_d/2024-05" not in manifest["inputs"]  # refused batch: no rows used
    assert not any(k.startswith(f"{P}/hosp_d/") for k in manifest["inputs"])  # left out
    outputs = set(manifest["outputs"])
    assert {"tables/fairness_gaps.csv", "tables/monitoring.csv", "tables/quarantine.csv",
            "audit_policy.yaml", "decision.json", "model_card.json"} <= outputs  # fmt: skip
    assert not any("alerts" in name for name in outputs)  # per-stay alerts stay internal
    decision = json.loads((package / "decision.json").read_text())
    assert decision["recommendation"] in set(Decision)
    assert decision["summary"]["threshold_source"] == "model card"
    assert decision["summary"]["n_boot"] == 40  # the run's setting, from the policy used


def test_stages_hand_each_other_typed_values(pipeline) -> None:
    home = pipeline["home"]
    model = read_stored(home, f"{P}/model")
    assert isinstance(model, ModelRef) and model.mode == "embedded"
    assert model.threshold_source == "model card"
    assert model.thresholds == {"sepsis": model.card["operating_threshold"]}
    assert Path(model.source).parent == home.artifacts / "models" / "sepsis_vendor"
    preds = read_stored(home, f"{P}/predictions", "hosp_a")
    assert set(preds["model_sha256"]) == {model.identity}
    evidence = read_stored(home, f"{P}/evidence")
    assert isinstance(evidence, TableSet) and evidence.facts["settings"]["n_boot"] == 40
    assert evidence.facts["hospitals"] == ["hosp_a", "hosp_b", "hosp_c"]
    mitigation = read_stored(home, f"{P}/mitigation_largest_gap")
    assert mitigation.facts["method"] == "group_thresholds" and mitigation.facts["caveats"]
    assert set(read_stored(home, f"{P}/monitoring")["monitoring"]["kind"]) >= {"alert rate"}


def test_bad_rows_are_named_and_other_hospitals_proceed(pipeline) -> None:
    home, n_bad_batch = pipeline["home"], pipeline["n_bad_batch"]
    q = read_stored(home, f"{P}/quarantine", "hosp_c")
    bad = q[q["batch"] == "2025-01"]
    checks = set(bad["check"])
    assert {"negative_value", "impossible_value", "unknown_category", "duplicate_stay_id",
            "site_mismatch"} <= checks  # fmt: skip
    assert set(bad.loc[bad["check"] == "negative_value", "column"]) == {"age"}
    assert bad.loc[bad["check"] == "unknown_category", "message"].str.contains("Black").all()
    assert bad["row"].notna().all() and set(bad["file"]) == {"hosp_c/2025-01/stays.csv"}
    stays = read_stored(home, f"{P}/validated", "hosp_c")
    assert len(stays[stays["batch"] == "2025-01"]) == n_bad_batch - 6  # both duplicate copies
    refused = read_stored(home, f"{P}/quarantine", "hosp_d")
    refused = refused[refused["batch"] == "2024-05"]
    assert len(refused) and (refused["check"] == "integrity").all()
    assert refused["message"].str.contains("size differs").any()
    batches = read_stored(home, f"{P}/batches", "hosp_d").set_index("batch")
    assert batches.loc["2024-05", "status"] == "failed" and batches.loc["2024-06", "n_rows_ok"]
    report = home.quarantine / P / "hosp_c" / "2025-01.json"
    assert {r["check"] for r in json.loads(report.read_text())["records"]} >= {"site_mismatch"}


def test_left_out_hospital_and_stays_are_named_not_dropped(pipeline) -> None:
    home, twin = pipeline["home"], pipeline["twin"]
    evidence = read_stored(home, f"{P}/evidence")
    assert evidence.facts["left_out"] == {
        "hosp_d": "no predictions yet (re-run the hospital's predictions)"
    }
    excluded = evidence["excluded_stays"]
    assert sorted(excluded["site"]) == ["hosp_a", "hosp_b"] and set(excluded["value"]) == {twin}
    assert (excluded["check"] == "duplicate_stay_id_across_hospitals").all()
    assert evidence.facts["excluded_stays"] == {"hosp_a": 1, "hosp_b": 1}
    cohort = evidence["cohort"].set_index("hospital")
    validated = read_stored(home, f"{P}/validated", "hosp_a")
    assert cohort.loc["hosp_a", "n_stays"] == len(validated) - 1
    package = Path(str(_latest_meta(pipeline["instance"], f"{P}/package")["package_dir"]))
    quarantine = pd.read_csv(package / "tables" / "quarantine.csv")
    assert set(quarantine.loc[quarantine["value"] == twin, "site"]) == {"hosp_a", "hosp_b"}
    text = _pdf_text(package / "report.pdf")
    assert "Hospitals left out of this audit" in text and "no predictions yet" in text
    assert twin not in text  # identifiers never reach the report
    pages = [p for p in text.split("\f") if p.strip()]
    assert all("SIMULATED DATA" in p for p in pages)


def _pdf_text(pdf: Path) -> str:
    found = shutil.which("pdftotext")
    if found is None:
        message = "pdftotext is missing: install poppler-utils (make system-deps)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    out = subprocess.run([found, "-layout", str(pdf), "-"], check=True, capture_output=True)
    return out.stdout.decode()


class Payload:
    """A type no vendor package may need (skops refuses it unless trusted)."""

    def __init__(self) -> None:
        self.value = 1


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = train_tabular_vendor_model(simulate_vendor_population("tiny", seed=0).stays, seed=0)
    return save_tabular_package(model, tmp_path_factory.mktemp("pkg") / "pkg")


def _model_stage(pipeline, model: StudyModel) -> tuple[bool, str | None]:
    runner = PipelineRunner(
        pipeline["instance"], pipeline["home"], STUDY, model=model,
        policy_path=str(pipeline["policy"]), console_level="CRITICAL",
    )  # fmt: skip
    run = runner._run("model", None)
    return run.success, None if run.success else step_failure(pipeline["instance"], run.run_id)


@pytest.mark.parametrize("attack", ["pickle_file", "untrusted_type"])
def test_unsafe_vendor_model_is_refused(pipeline, package, tmp_path, attack) -> None:
    hostile = shutil.copytree(package, tmp_path / "pkg")
    if attack == "pickle_file":
        (hostile / "model.pkl").write_bytes(b"\x80\x04N.")
        expected = "pickle-like files ['model.pkl']"
    else:
        (hostile / MODEL_FILE).write_bytes(sio.dumps(Payload()))
        card = json.loads((hostile / CARD_FILE).read_text())
        card["model_sha256"] = sha256_file(hostile / MODEL_FILE)
        (hostile / CARD_FILE).write_text(json.dumps(card))
        expected = "types outside the trusted list"
    ok, message = _model_stage(pipeline, StudyModel(study=P, package_dir=str(hostile)))
    assert not ok and expected in str(message)


def test_vendor_scores_without_a_threshold_are_refused_with_the_fix(
    pipeline, tmp_path, monkeypatch
) -> None:
    scores = tmp_path / "scores.csv"
    scores.write_text("stay_id,score\nx,0.5\n")
    ok, message = _model_stage(pipeline, StudyModel(study=P, scores=str(scores)))
    assert not ok
    assert "vendor scores come without a model card" in str(message)
    assert "CLINAUDIT_SEPSIS_EWS_THRESHOLD" in str(message)
    # What `clinaudit audit --predictions` sets for every run: the environment, read when used.
    monkeypatch.setenv("CLINAUDIT_SEPSIS_EWS_SCORES", str(scores))
    ok, message = _model_stage(pipeline, StudyModel(study=P))
    assert not ok and "CLINAUDIT_SEPSIS_EWS_THRESHOLD" in str(message)
    spec = StudyModel(study=P).spec()
    monkeypatch.setenv("CLINAUDIT_SEPSIS_EWS_THRESHOLD", "0.1")
    assert (spec.threshold, StudyModel(study=P).spec().threshold) == (None, 0.1)


def test_scores_only_audit_reports_scores_of_stays_nobody_landed(pipeline, tmp_path) -> None:
    home = ClinauditHome(root=str(tmp_path / "home"))
    STUDY.simulate(home.landing, tmp_path / "truth", scale="tiny", seed=1, months=(1, 2, 3, 4))
    stays = simulate_network("tiny", seed=1, months=(1, 2, 3, 4)).stays
    scores = tmp_path / "network_scores.csv"
    rows = pd.DataFrame({"stay_id": [*stays["stay_id"], "ghost-0001"],
                         "score": [*stays["sepsis"] * 0.6 + 0.1, 0.5]})  # fmt: skip
    rows.to_csv(scores, index=False)
    instance = dg.DagsterInstance.ephemeral()
    runner = PipelineRunner(
        instance, home, STUDY, model=StudyModel(study=P, scores=str(scores), threshold=0.3),
        policy_path=str(pipeline["policy"]), console_level="CRITICAL",
    )  # fmt: skip
    runs = runner.run_all(register_partitions(instance, home, STUDY))
    assert all(r.success and not r.blocking_failure for r in runs), runs
    model = read_stored(home, f"{P}/model")
    assert model.mode == "scores" and model.scores_files == {"*": sha256_file(scores)}
    assert model.threshold_source == "configured" and model.card == {}
    evidence = read_stored(home, f"{P}/evidence")
    unmatched = evidence["unmatched_scores"]
    assert unmatched[["row", "value"]].values.tolist() == [[len(stays) + 2, "ghost-0001"]]
    assert evidence["drift"].empty and evidence.facts["unmatched_scores"] == 1
    package = Path(str(_latest_meta(instance, f"{P}/package")["package_dir"]))
    outputs = json.loads((package / "manifest.json").read_text())["outputs"]
    assert "tables/unmatched_scores.csv" in outputs and "model_card.json" not in outputs
    assert "belong to no validated stay" in _pdf_text(package / "report.pdf")
