"""The sepsis_ews study's stage functions without Dagster: which hospitals and stays are audited,
the privacy check, the stages' table sets and what the UI shows."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from clinaudit.audit.policy_base import Decision
from clinaudit.audit.records import ModelRef
from clinaudit.audit.types import AuditInputError
from clinaudit.sources.sepsis_simulator import simulate_network
from clinaudit.studies import get_study
from clinaudit.studies.base import AuditData
from clinaudit.studies.sepsis_ews.evaluate import audit_settings, audited_stays, evidence
from clinaudit.studies.sepsis_ews.schema import validate_stays
from clinaudit.studies.sepsis_ews.stages import (
    decision_tables,
    mitigation_tables,
    monitoring_tables,
)

STUDY = get_study("sepsis_ews")
IDENTITY = "a" * 64


def _model(**changes: object) -> ModelRef:
    values = {
        "study": STUDY.name, "kind": "tabular", "mode": "embedded", "identity": IDENTITY,
        "source": "/x", "targets": ("sepsis",), "thresholds": {"sepsis": 0.3},
        "threshold_source": "configured",
    }  # fmt: skip
    return ModelRef(**{**values, **changes})


@pytest.fixture(scope="module")
def network() -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    stays, errors = validate_stays(simulate_network("tiny", seed=2, months=(1, 2, 3, 4)).stays)
    assert (errors["severity"] == "error").sum() == 0
    rng = np.random.default_rng(0)
    stays = stays.assign(batch=stays["admit_month"])
    validated = {str(h): part.reset_index(drop=True) for h, part in stays.groupby("hospital")}
    predictions = {
        h: pd.DataFrame(
            {"stay_id": t["stay_id"], "score": np.clip(0.5 * t["sepsis"] + rng.random(len(t)) * 0.5,
             0, 1), "model_sha256": IDENTITY}
        )
        for h, t in validated.items()
    }  # fmt: skip
    return validated, predictions


def test_stale_missing_and_foreign_predictions_leave_a_hospital_out_with_the_reason(
    network,
) -> None:
    validated, predictions = network
    predictions = dict(predictions)
    predictions["hosp_b"] = predictions["hosp_b"].iloc[1:]  # one stay without a score
    predictions["hosp_c"] = predictions["hosp_c"].assign(model_sha256="b" * 64)
    del predictions["hosp_d"]
    audited = audited_stays(AuditData(validated, predictions, _model()))
    assert audited.hospitals == ("hosp_a",)
    assert audited.left_out["hosp_b"].startswith("predictions are stale: 1 validated stays")
    assert "not the audited aaaaaaaaaaaa" in audited.left_out["hosp_c"]
    assert audited.left_out["hosp_d"].startswith("no predictions yet")
    assert set(audited.frame["hospital"]) == {"hosp_a"}
    assert audited.frame["stay_id"].tolist() == validated["hosp_a"]["stay_id"].tolist()
    with pytest.raises(AuditInputError, match="none usable"):
        audited_stays(AuditData(validated, {}, _model()))


def test_a_hospital_without_its_scores_file_is_left_out(network) -> None:
    validated, predictions = network
    model = _model(mode="scores", scores_files={"hosp_a": IDENTITY, "hosp_b": IDENTITY})
    audited = audited_stays(AuditData(validated, predictions, model))
    assert audited.hospitals == ("hosp_a", "hosp_b")
    assert "add hosp_c.csv" in audited.left_out["hosp_c"]


def test_a_stay_landed_at_two_hospitals_is_left_out_with_a_record(network) -> None:
    validated, predictions = network
    twin = validated["hosp_a"].iloc[[0]].assign(hospital="hosp_b", batch="2025-01")
    validated = {**validated, "hosp_b": pd.concat([validated["hosp_b"], twin])}
    predictions = {
        **predictions,
        "hosp_b": pd.concat([predictions["hosp_b"], predictions["hosp_a"].iloc[[0]]]),
    }
    audited = audited_stays(AuditData(validated, predictions, _model()))
    assert audited.left_out == {}
    stay = twin["stay_id"].iloc[0]
    assert stay not in set(audited.frame["stay_id"])
    records = audited.excluded
    assert sorted(records["site"]) == ["hosp_a", "hosp_b"] and set(records["value"]) == {stay}
    assert records["message"].str.contains("several hospitals").all()
    assert records["row"].notna().all() and (records["severity"] == "error").all()


def test_stages_run_one_by_one_from_their_table_sets(network) -> None:
    validated, predictions = network
    policy = STUDY.load_policy()
    audited = audited_stays(AuditData(validated, predictions, _model()))
    settings = audit_settings(policy, threshold=0.3, threshold_source="configured")
    settings = type(settings)(**{**settings.to_facts(), "attributes": settings.attributes,
                                 "n_boot": 20})  # fmt: skip
    ev = evidence(audited, card=None, settings=settings)
    assert ev.facts["settings"]["n_boot"] == 20 and ev.facts["threshold_source"] == "configured"
    mit = mitigation_tables(ev, audited.frame, policy)
    dec = decision_tables(ev, mit, policy)
    assert Decision(dec.facts["recommendation"]) in set(Decision)
    assert list(dec["decision"].columns) == ["recommendation", "reasons", "conditions", "caveats"]
    assert dec.facts["summary"]["policy_sha256"] == policy.sha256
    assert STUDY.decision_summary(dec) == {"network": dec.facts["recommendation"]}
    mon = monitoring_tables(ev, mit, dec, audited.frame, policy)
    assert len(mon["monitoring"]) == mon.facts["n_items"] > 0
    # Another set of stays than the evidence audited is refused, naming what to re-run.
    with pytest.raises(AuditInputError, match="re-materialize sepsis_ews/evidence"):
        mitigation_tables(ev, audited.frame.iloc[1:], policy)
    other = ev.with_facts(policy_sha256=hashlib.sha256(b"other").hexdigest())
    with pytest.raises(AuditInputError, match="under the configured policy"):
        decision_tables(other, mit, policy)
    meta = STUDY.describe_stage("decisions", dec)
    assert meta["recommendation"] == dec.facts["recommendation"]
    assert str(meta["criteria"]).startswith("| criterion")
    assert STUDY.describe_stage("evidence", ev)["hospitals"] == list(audited.hospitals)
    assert STUDY.describe_stage("mitigation_largest_gap", mit)["method"] == "group_thresholds"
    assert STUDY.describe_stage("monitoring", mon)["items"] == len(mon["monitoring"])
    assert STUDY.describe_stage("model", _model())["threshold"] == 0.3


def test_privacy_check_flags_phi_and_columns_outside_the_format(network) -> None:
    validated, _ = network
    table = validated["hosp_a"]
    assert STUDY.privacy_problems(table) == []
    leaky = table.assign(PatientName="DOE^JANE", patient_id="123")
    problems = STUDY.privacy_problems(leaky)
    assert any("'PatientName' is PHI" in p for p in problems)
    assert any("not in the stays format" in p for p in problems)


def test_the_study_declares_itself() -> None:
    assert (STUDY.name, STUDY.unit, STUDY.partition_by, STUDY.landing_dir) == (
        "sepsis_ews", "stay", "hospital", "sepsis_ews",
    )  # fmt: skip
    assert STUDY.targets == ("sepsis",) and STUDY.model_kind == "tabular"
    assert STUDY.identifiers == ("stay_id",) and STUDY.policy_attachment == "audit_policy"
    assert [m.name for m in STUDY.mitigations] == ["largest_gap"]
    assert STUDY.load_policy().STUDY == "sepsis_ews"


def test_scores_folder_one_file_per_hospital(network, tmp_path) -> None:
    from clinaudit.models.scores_csv import ScoresError
    from clinaudit.studies.base import ModelSpec, RunDirs
    from clinaudit.studies.sepsis_ews.model import predict_hospital, resolve_model

    validated, _ = network
    folder = tmp_path / "scores"
    folder.mkdir()
    for hospital in ("hosp_a", "hosp_b"):
        table = validated[hospital]
        pd.DataFrame({"stay_id": table["stay_id"], "score": 0.2}).to_csv(
            folder / f"{hospital}.csv", index=False
        )
    dirs = RunDirs(*(tmp_path / n for n in ("l", "a", "q", "r", "k")))
    with pytest.raises(AuditInputError, match="CLINAUDIT_SEPSIS_EWS_THRESHOLD"):
        resolve_model(ModelSpec(scores=str(folder)), dirs=dirs, log=print)
    model = resolve_model(ModelSpec(scores=str(folder), threshold=0.25), dirs=dirs, log=print)
    assert sorted(model.scores_files) == ["hosp_a", "hosp_b"] and model.card == {}
    scores, facts = predict_hospital(model, validated["hosp_b"], hospital="hosp_b", log=print)
    assert set(scores["model_sha256"]) == {model.scores_files["hosp_b"]}
    assert facts["alert_rate"] == 0.0 and len(scores) == len(validated["hosp_b"])
    with pytest.raises(AuditInputError, match="add hosp_c.csv"):
        predict_hospital(model, validated["hosp_c"], hospital="hosp_c", log=print)
    with pytest.raises(ScoresError, match="is not in the stays table"):  # hosp_a's file
        predict_hospital(model, validated["hosp_a"].iloc[1:], hospital="hosp_a", log=print)
    (folder / "hosp_a.csv").write_text("stay_id,score\n")  # changed after the model stage
    with pytest.raises(AuditInputError, match="re-materialize sepsis_ews/model"):
        predict_hospital(model, validated["hosp_a"], hospital="hosp_a", log=print)
