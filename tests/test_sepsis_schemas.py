"""Schemas of the sepsis_ews tables: every producer's table meets its schema unchanged, a broken
table is refused naming the column, and the consumers (decisions, monitoring plan, the result the
report reads, the report) refuse an input without a column they read, naming it."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from pandera.errors import SchemaErrors

from clinaudit.audit.burden import AlertBurdenTable
from clinaudit.audit.calibration import CalibrationTable, ReliabilityTable
from clinaudit.audit.discrimination import DiscriminationTable
from clinaudit.audit.fairness_mitigation import GroupThresholds, MitigationTable
from clinaudit.audit.records import TableSet
from clinaudit.audit.schemas import schema_columns, validate_table
from clinaudit.audit.types import AuditInputError
from clinaudit.models.tabular import predict_stays, train_tabular_vendor_model
from clinaudit.sources.sepsis_simulator import simulate_network, simulate_vendor_population
from clinaudit.studies import get_study
from clinaudit.studies.base import ModelSpec, RunDirs
from clinaudit.studies.sepsis_ews.decisions import CRITERIA_COLUMNS, decide, disadvantaged_groups
from clinaudit.studies.sepsis_ews.decisions_schema import (
    CriteriaTable,
    DisadvantagedGroups,
    MitigationEffects,
    disadvantaged_columns,
)
from clinaudit.studies.sepsis_ews.drift import DRIFT_COLUMNS, CardDrift
from clinaudit.studies.sepsis_ews.evaluate import (
    AuditedStays,
    audit_settings,
    evidence,
    fairness_from,
)
from clinaudit.studies.sepsis_ews.ingest import (
    SUMMARY_COLUMNS,
    HospitalSummary,
    duplicate_stays,
    hospital_summary,
    quarantine_frame,
)
from clinaudit.studies.sepsis_ews.model import predict_hospital, resolve_model
from clinaudit.studies.sepsis_ews.monitoring import PLAN_COLUMNS, MonitoringPlan, monitoring_plan
from clinaudit.studies.sepsis_ews.report import build_sepsis_view, kept_stays
from clinaudit.studies.sepsis_ews.report_appendix import SepsisProvenance
from clinaudit.studies.sepsis_ews.result import TABLE_SCHEMAS, SepsisAuditResult
from clinaudit.studies.sepsis_ews.schema import ERROR_COLUMNS, StayQuarantine, validate_stays
from clinaudit.studies.sepsis_ews.scores import StayScores, unmatched_score_ids
from clinaudit.studies.sepsis_ews.stages import (
    DECISION_COLUMNS,
    DecisionTable,
    StayAlerts,
    decision_tables,
    mitigation_outcome,
    mitigation_tables,
    monitoring_tables,
    recommendation_of,
)
from clinaudit.studies.sepsis_ews.tables import scored_stays
from clinaudit.studies.sepsis_ews.tables_schema import (
    CalibrationByAttribute,
    CohortTable,
    CompositionTable,
    DiscriminationByAttribute,
    ReliabilityByAttribute,
)

STUDY = get_study("sepsis_ews")
EVIDENCE_SCHEMAS = {
    "discrimination": DiscriminationByAttribute,
    "calibration": CalibrationByAttribute,
    "reliability": ReliabilityByAttribute,
    "cohort": CohortTable,
    "composition": CompositionTable,
    "disadvantaged": DisadvantagedGroups,
    "drift": CardDrift,
    "excluded_stays": StayQuarantine,
    "unmatched_scores": StayQuarantine,
}


def _run(stays: pd.DataFrame, preds: pd.DataFrame, card, threshold: float) -> SimpleNamespace:
    """The stages one by one (as the pipeline runs them), keeping every table set."""
    policy = STUDY.load_policy()
    frame = scored_stays(stays, preds)
    settings = audit_settings(policy, threshold=threshold, threshold_source="configured")
    settings = replace(settings, n_boot=20)
    hospitals = tuple(sorted(set(frame["hospital"])))
    ev = evidence(AuditedStays(frame, hospitals), card=card, settings=settings)
    mit = mitigation_tables(ev, frame, policy)
    dec = decision_tables(ev, mit, policy)
    mon = monitoring_tables(ev, mit, dec, frame, policy)
    result = SepsisAuditResult.from_sets(ev, mit, dec, mon)
    return SimpleNamespace(
        policy=policy, frame=frame, ev=ev, mit=mit, dec=dec, mon=mon, result=result
    )


@pytest.fixture(scope="module")
def stays() -> pd.DataFrame:
    valid, errors = validate_stays(simulate_network("tiny", seed=0).stays)
    assert (errors["severity"] == "error").sum() == 0
    return valid


@pytest.fixture(scope="module")
def carded(stays):
    """With the vendor's card: drift, the card's discrimination row, the mitigation run."""
    vendor = train_tabular_vendor_model(simulate_vendor_population("tiny", seed=0).stays, seed=0)
    return _run(stays, predict_stays(vendor, stays), vendor.card, vendor.threshold)


@pytest.fixture(scope="module")
def scores_only():
    """Scores without a card on four months: no drift, no card row, too few cases to mitigate."""
    stays, _ = validate_stays(simulate_network("tiny", seed=1, months=(1, 2, 3, 4)).stays)
    score = stays["sepsis"] * 0.6 + 0.1
    preds = pd.DataFrame({"stay_id": stays["stay_id"], "score": score, "model_sha256": "c" * 64})
    return _run(stays, preds, None, 0.3)


def _unchanged(table: pd.DataFrame, schema) -> None:
    """Validation returns the table itself and changes no column, order, dtype or value."""
    before = table.copy(deep=True)
    assert validate_table(table, schema) is table
    pd.testing.assert_frame_equal(table, before, check_dtype=True, check_exact=True)
    pd.testing.assert_frame_equal(schema.validate(before, lazy=True), before, check_dtype=True)


def _refused(table: pd.DataFrame, schema, column: str) -> None:
    """Refused naming ``column``: the failing column, or the missing / unexpected one."""
    with pytest.raises(SchemaErrors, match=schema.__name__) as info:
        validate_table(table, schema)
    cases = info.value.failure_cases
    assert column in {*cases["column"].astype(str), *cases["failure_case"].astype(str)}
    assert column in str(info.value)


def _refused_check(table: pd.DataFrame, schema, check: str) -> None:
    """A table-wide check (no single column to name) is refused naming the check."""
    with pytest.raises(SchemaErrors, match=check):
        validate_table(table, schema)


def _set(table: pd.DataFrame, row: int, column: str, value: object) -> pd.DataFrame:
    out = table.copy()
    out[column] = out[column].astype(object)
    out.loc[row, column] = value
    return out


# ---------------------------------------------------------------- evidence tables


def test_evidence_tables_meet_their_schemas_unchanged(carded, scores_only) -> None:
    for run in (carded, scores_only):
        for name, schema in EVIDENCE_SCHEMAS.items():
            table = run.ev[name]
            if name == "drift" and run is scores_only:
                assert table.empty and not len(table.columns)  # no card: no drift table
                continue
            _unchanged(table, schema)
        assert tuple(run.ev["fairness_rates"].columns)  # the core's own tables, validated there
    d_card, d_scores = carded.ev["discrimination"], scores_only.ev["discrimination"]
    assert "vendor_card" in set(d_card["attribute"]) and d_card["n_clusters"].dtype == float
    assert "vendor_card" not in set(d_scores["attribute"]) and d_scores["n_clusters"].dtype == int
    dis = carded.ev["disadvantaged"]
    assert set(dis["status"]) == {"ok", "insufficient data"} and dis["largest"].dtype == object
    assert list(scores_only.ev["disadvantaged"].columns) == ["attribute", "status", "reference"]
    assert tuple(carded.ev["drift"].columns) == DRIFT_COLUMNS == schema_columns(CardDrift)
    assert carded.ev["reliability"]["bin"].dtype == int  # also when a grouping has no bins
    assert scores_only.ev["reliability"]["bin"].dtype == int


def test_study_tables_by_attribute_are_the_core_schemas_with_attribute_first() -> None:
    core = schema_columns(DiscriminationTable)
    compared = ("target", "is_reference", "auroc_diff_vs_reference")
    kept = [c for c in core if c not in compared and not c.startswith("delong_")]
    vendor = ["auroc_diff_vs_vendor", "diff_ci_low", "diff_ci_high", "diff_p"]
    assert schema_columns(DiscriminationByAttribute) == ("attribute", *kept, *vendor)
    calibration = ("attribute", *schema_columns(CalibrationTable))
    assert schema_columns(CalibrationByAttribute) == calibration
    reliability = ("attribute", *schema_columns(ReliabilityTable))
    assert schema_columns(ReliabilityByAttribute) == reliability
    # The core's checks come along: a reliability bin's count is a count, an AUROC a probability.
    assert DiscriminationByAttribute.to_schema().columns["auroc"].checks
    effects = [c for c in schema_columns(MitigationTable) if c not in ("method", "n_boot",
                                                                        "ci_level")]  # fmt: skip
    assert schema_columns(MitigationEffects) == tuple(effects)


def test_broken_evidence_tables_are_refused_naming_the_column(carded) -> None:
    ev = carded.ev
    d = ev["discrimination"]
    _refused(d.assign(auroc=1.5), DiscriminationByAttribute, "auroc")  # the core's check
    _refused(d.assign(n_boot=d["n_boot"] + 0.5), DiscriminationByAttribute, "n_boot")
    _refused(d.drop(columns="diff_p"), DiscriminationByAttribute, "diff_p")
    _refused_check(d.assign(threshold=np.nan), DiscriminationByAttribute,
                   "missing_only_on_the_vendor_card_row")  # fmt: skip
    _refused(ev["calibration"].assign(ece_width=2.0), CalibrationByAttribute, "ece_width")
    _refused(ev["reliability"].assign(binning="quantile"), ReliabilityByAttribute, "binning")
    _refused(ev["cohort"].assign(female_share=1.2), CohortTable, "female_share")
    _refused(pd.concat([ev["cohort"], ev["cohort"].iloc[:1]]), CohortTable, "hospital")
    _refused(ev["composition"].assign(share=-0.1), CompositionTable, "share")
    drift = ev["drift"]
    _refused(drift.assign(kind="categorical"), CardDrift, "kind")
    _refused(drift.assign(psi_level="huge"), CardDrift, "psi_level")
    _refused(_set(drift, 0, "card_atoms", "yes"), CardDrift, "card_atoms")
    dis = ev["disadvantaged"]
    _refused(dis.assign(n=dis["n"] + 0.5), DisadvantagedGroups, "n")
    _refused(_set(dis, 0, "largest", "yes"), DisadvantagedGroups, "largest")
    _refused(dis.assign(extra=1), DisadvantagedGroups, "extra")
    _refused_check(dis.drop(columns="highest_group"), DisadvantagedGroups,
                   "every_column_when_an_attribute_is_ok")  # fmt: skip
    assert disadvantaged_columns(dis) == list(schema_columns(DisadvantagedGroups))


# ---------------------------------------------------------------- mitigation and decisions


def test_mitigation_and_decision_tables_meet_their_schemas_unchanged(carded, scores_only) -> None:
    mit, dec = carded.mit, carded.dec
    assert mit.facts["status"] == "run"
    _unchanged(mit["mitigation"], MitigationTable)
    _unchanged(mit["mitigation_thresholds"], GroupThresholds)
    _unchanged(mit["mitigation_effects"], MitigationEffects)
    _unchanged(mit["alerts"], StayAlerts)
    for run in (carded, scores_only):
        _unchanged(run.dec["criteria"], CriteriaTable)
        _unchanged(run.dec["decision"], DecisionTable)
        _unchanged(run.mon["monitoring"], MonitoringPlan)
    assert tuple(dec["criteria"].columns) == CRITERIA_COLUMNS == schema_columns(CriteriaTable)
    assert tuple(dec["decision"].columns) == DECISION_COLUMNS == schema_columns(DecisionTable)
    assert tuple(carded.mon["monitoring"].columns) == PLAN_COLUMNS
    # Not run: no rows of alerts (typed), the other mitigation tables without columns.
    not_run = scores_only.mit
    assert not_run.facts["status"] == "not run" and not len(not_run["mitigation"].columns)
    _unchanged(not_run["alerts"], StayAlerts)


def test_broken_mitigation_and_decision_tables_are_refused_naming_the_column(carded) -> None:
    mit, dec, plan = carded.mit, carded.dec, carded.mon["monitoring"]
    _refused(mit["mitigation_effects"].assign(status="maybe"), MitigationEffects, "status")
    _refused(mit["mitigation_effects"].assign(method="group_thresholds"), MitigationEffects,
             "method")  # fmt: skip
    alerts = mit["alerts"]
    _refused(alerts.assign(after=alerts["after"].astype(int)), StayAlerts, "after")
    _refused(pd.concat([alerts, alerts.iloc[:1]]), StayAlerts, "stay_id")
    criteria = dec["criteria"]
    _refused(criteria.assign(comparator="!="), CriteriaTable, "comparator")
    _refused(criteria.assign(criterion="vibes"), CriteriaTable, "criterion")
    _refused(criteria.assign(passed_after=np.nan), CriteriaTable, "passed_after")
    decision = dec["decision"]
    _refused(decision.assign(recommendation="MAYBE"), DecisionTable, "recommendation")
    _refused(decision.assign(reasons="not json"), DecisionTable, "reasons")
    _refused_check(pd.concat([decision, decision]), DecisionTable, "one_row")
    _refused(plan.assign(kind="weather"), MonitoringPlan, "kind")
    _refused(plan.assign(direction="sideways"), MonitoringPlan, "direction")
    _refused(plan.assign(window_months=0), MonitoringPlan, "window_months")


# ---------------------------------------------------------------- ingest, predictions


def _bad_batch() -> pd.DataFrame:
    frame = simulate_network("tiny", seed=7, months=(13,)).stays
    frame = frame[frame["hospital"] == "hosp_c"].head(8).reset_index(drop=True)
    frame = frame.astype({"age": object, "race_ethnicity": object})
    frame.loc[0, "age"] = -4.0
    frame.loc[1, "race_ethnicity"] = "black"
    return frame


def test_ingest_tables_and_predictions_meet_their_schemas_unchanged(stays, tmp_path) -> None:
    valid, errors = validate_stays(_bad_batch(), source="hosp_c/x/stays.csv", site="hosp_c")
    assert len(errors) >= 2 and tuple(errors.columns) == ERROR_COLUMNS
    _unchanged(errors, StayQuarantine)
    batches = stays.assign(batch=stays["admit_month"])
    twice = pd.concat([batches, batches.iloc[:2].assign(batch="2099-01")], ignore_index=True)
    dup, records = duplicate_stays(twice)
    assert dup.sum() == 4 and records["row"].notna().all()
    _unchanged(records, StayQuarantine)
    empty = quarantine_frame()
    assert empty.empty and tuple(empty.columns) == schema_columns(StayQuarantine)
    by_hospital = {str(h): t for h, t in batches.groupby("hospital")}
    summary = hospital_summary(by_hospital, {"hosp_c": errors, "hosp_x": empty})
    assert tuple(summary.columns) == SUMMARY_COLUMNS and "hosp_x" in set(summary["hospital"])
    _unchanged(summary, HospitalSummary)
    folder = tmp_path / "scores"
    folder.mkdir()
    hosp_b = by_hospital["hosp_b"]
    pd.DataFrame({"stay_id": [*hosp_b["stay_id"], "ghost-1"], "score": 0.2}).to_csv(
        folder / "hosp_b.csv", index=False
    )
    dirs = RunDirs(*(tmp_path / n for n in ("l", "a", "q", "r", "k")))
    model = resolve_model(ModelSpec(scores=str(folder), threshold=0.25), dirs=dirs, log=print)
    unmatched = unmatched_score_ids(folder / "hosp_b.csv", set(hosp_b["stay_id"]))
    assert unmatched["value"].tolist() == ["ghost-1"]
    _unchanged(unmatched, StayQuarantine)
    (folder / "hosp_b.csv").write_text(  # the model stage recorded this file's hash: rewrite
        pd.DataFrame({"stay_id": hosp_b["stay_id"], "score": 0.2}).to_csv(index=False)
    )
    model = resolve_model(ModelSpec(scores=str(folder), threshold=0.25), dirs=dirs, log=print)
    scores, _ = predict_hospital(model, hosp_b, hospital="hosp_b", log=print)
    _unchanged(scores, StayScores)


def test_broken_ingest_tables_and_predictions_are_refused_naming_the_column(stays) -> None:
    batches = stays.assign(batch=stays["admit_month"])
    summary = hospital_summary({str(h): t for h, t in batches.groupby("hospital")}, {})
    _refused(summary.assign(first_month="Jan"), HospitalSummary, "first_month")
    _refused(summary.assign(n_stays=-1), HospitalSummary, "n_stays")
    _, errors = validate_stays(_bad_batch(), source="x.csv", site="hosp_c")
    _refused(errors.assign(value=1), StayQuarantine, "value")
    _refused(errors.assign(severity="fatal"), StayQuarantine, "severity")
    preds = pd.DataFrame({"stay_id": stays["stay_id"], "score": 0.5, "model_sha256": "a" * 64})
    _unchanged(preds, StayScores)
    _refused(preds.assign(score=1.5), StayScores, "score")
    _refused(preds.assign(model_sha256="x" * 64), StayScores, "model_sha256")
    _refused(pd.concat([preds, preds.iloc[:1]]), StayScores, "stay_id")


# ---------------------------------------------------------------- consumers


def _missing(name: str, column: str, schema) -> str:
    return rf"{name}: received a table without columns \['{column}'\].*{schema.__name__}"


def test_scored_stays_refuses_inputs_without_a_column_it_reads(stays) -> None:
    preds = pd.DataFrame({"stay_id": stays["stay_id"], "score": 0.5, "model_sha256": "a" * 64})
    with pytest.raises(AuditInputError, match=_missing("predictions", "model_sha256", StayScores)):
        scored_stays(stays, preds.drop(columns="model_sha256"))
    with pytest.raises(AuditInputError, match=r"stays: .*\['window_hours'\].*SepsisStays"):
        scored_stays(stays.drop(columns="window_hours"), preds)


def test_decisions_refuse_an_input_without_a_column_they_read(carded) -> None:
    ev, policy = carded.ev, carded.policy
    fairness, outcome = fairness_from(ev), mitigation_outcome(carded.mit)
    tables = {n: ev[n] for n in ("discrimination", "calibration", "burden")}
    cases = {
        "discrimination": ("auroc_ci_low", DiscriminationByAttribute),  # the policy's statistic
        "calibration": ("ece_width", CalibrationByAttribute),
        "burden": ("alert_rate_ci_high", AlertBurdenTable),
    }
    for name, (column, schema) in cases.items():
        broken = tables | {name: tables[name].drop(columns=column)}
        with pytest.raises(AuditInputError, match=_missing(name, column, schema)):
            decide(policy, broken["discrimination"], broken["calibration"], broken["burden"],
                   fairness, outcome)  # fmt: skip
    gaps = replace(fairness, gaps=fairness.gaps.drop(columns="versus"))
    with pytest.raises(AuditInputError, match=r"fairness_gaps: .*\['versus'\].*FairnessGaps"):
        decide(policy, *tables.values(), gaps, outcome)
    effects = replace(outcome, effects=outcome.effects.drop(columns="after_ci_low"))
    with pytest.raises(AuditInputError, match=_missing("mitigation_effects", "after_ci_low",
                                                       MitigationEffects)):  # fmt: skip
        decide(policy, *tables.values(), fairness, effects)
    rates = replace(fairness, rates=fairness.rates.drop(columns="tpr_ci_low"))
    with pytest.raises(AuditInputError, match=r"fairness_rates: .*\['tpr_ci_low'\]"):
        disadvantaged_groups(rates)


def test_monitoring_plan_refuses_an_input_without_a_column_it_reads(carded) -> None:
    ev, frame = carded.ev, carded.frame
    kw = dict(
        threshold=ev.fact("threshold"), decision=recommendation_of(carded.dec),
        drift=ev["drift"], mitigation=mitigation_outcome(carded.mit, frame),
        discrimination=ev["discrimination"], calibration=ev["calibration"],
        fairness=fairness_from(ev),
    )  # fmt: skip
    cases = {
        "drift": ("psi_level", CardDrift),
        "discrimination": ("auroc_se_delong", DiscriminationByAttribute),
        "calibration": ("ece_width_ci_low", CalibrationByAttribute),
    }
    for name, (column, schema) in cases.items():
        broken = kw | {name: kw[name].drop(columns=column)}
        with pytest.raises(AuditInputError, match=_missing(name, column, schema)):
            monitoring_plan(carded.policy, frame, **broken)
    mit = carded.mit
    alerts = TableSet({**mit.tables, "alerts": mit["alerts"].drop(columns="after")}, mit.facts)
    with pytest.raises(AuditInputError, match=_missing("alerts", "after", StayAlerts)):
        mitigation_outcome(alerts, frame)


@pytest.mark.parametrize("name", sorted(TABLE_SCHEMAS))
def test_the_result_refuses_a_table_without_a_column_of_its_schema(carded, name: str) -> None:
    schema, table = TABLE_SCHEMAS[name], getattr(carded.result, name)
    if not len(table):  # no records here: check on the empty table's columns
        assert tuple(table.columns) == schema_columns(schema)
    column = schema_columns(schema)[-1]
    with pytest.raises(AuditInputError, match=_missing(name, column, schema)):
        replace(carded.result, **{name: table.drop(columns=column)})


def test_the_result_accepts_the_tables_of_stages_that_did_not_run(scores_only) -> None:
    res = scores_only.result  # made from its table sets: no drift, no mitigation
    assert not len(res.drift.columns) and not len(res.mitigation.columns)
    assert replace(res).disadvantaged.shape == (3, 3)
    with pytest.raises(AuditInputError, match=_missing("cohort", "female_share", CohortTable)):
        replace(res, cohort=res.cohort.drop(columns="female_share"))


def test_the_report_refuses_kept_stays_and_records_without_a_column_it_reads(carded) -> None:
    res = carded.result
    kept = res.cohort[res.cohort["hospital"] != "network"][["hospital", "n_stays"]]
    kept = kept.assign(n_batches=12)
    quarantine = quarantine_frame()
    provenance = SepsisProvenance("a", "2026-01-01T00:00:00Z", {}, "ab" * 32, "t", "CN=t", True)
    kw = dict(model={}, policy=carded.policy, provenance=provenance)
    with pytest.raises(AuditInputError, match=_missing("kept", "n_batches", HospitalSummary)):
        build_sepsis_view(res, kept=kept.drop(columns="n_batches"), quarantine=quarantine, **kw)
    with pytest.raises(AuditInputError, match=_missing("quarantine", "severity", StayQuarantine)):
        build_sepsis_view(res, kept=kept, quarantine=quarantine.drop(columns="severity"), **kw)
    bundle = SimpleNamespace(cohort=kept.drop(columns="n_stays"))
    with pytest.raises(AuditInputError, match=_missing("cohort", "n_stays", HospitalSummary)):
        kept_stays(bundle, res)
