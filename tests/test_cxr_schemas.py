"""Schemas of the multisite_cxr decision, monitoring, cohort and quarantine tables, and the
report / decisions / monitoring consumers checking their inputs against the producers' schemas."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from cxr_contract_fixtures import SITES
from cxr_report_fixtures import report_inputs, synthetic_base_tables
from pandera.errors import SchemaErrors

from clinaudit.audit.discrimination import DiscriminationTable
from clinaudit.audit.reference_audit import mean_auroc_by_group
from clinaudit.audit.schemas import schema_columns, validate_table
from clinaudit.audit.types import AuditInputError
from clinaudit.studies.multisite_cxr.decisions import Decisions, decide_sites
from clinaudit.studies.multisite_cxr.decisions_schema import (
    CriteriaContract,
    CriteriaTable,
    DecisionsTable,
)
from clinaudit.studies.multisite_cxr.evaluate import CALIBRATION_COLUMNS, MeanAuroc, SiteMetrics
from clinaudit.studies.multisite_cxr.monitoring import (
    MonitoringContract,
    MonitoringPlan,
    monitoring_plan,
)
from clinaudit.studies.multisite_cxr.policy import load_policy
from clinaudit.studies.multisite_cxr.report import INPUT_SCHEMAS, build_cxr_view
from clinaudit.validation.cohort import CohortSummary
from clinaudit.validation.errors import QuarantineRecord, QuarantineTable, records_to_frame


@pytest.fixture(scope="module")
def inputs():
    return report_inputs(synthetic_base_tables())


@pytest.fixture(scope="module")
def decided(inputs) -> Decisions:
    return decide_sites(
        load_policy(),
        metrics=inputs.metrics,
        calibration=inputs.calibration,
        recalibration=inputs.recalibration,  # contract A columns only
        drift=inputs.drift,
        retraining=inputs.retraining,  # contract B columns only
        sites=list(SITES),
    )


def _plan(inputs, decided: Decisions, **tables) -> pd.DataFrame:
    kw = dict(
        drift=inputs.drift,
        metrics=inputs.metrics,
        calibration=inputs.calibration,
        recalibration=inputs.recalibration,
    )
    return monitoring_plan(load_policy(), decided, **(kw | tables))


def _unchanged(table: pd.DataFrame, schema) -> None:
    before = table.copy(deep=True)
    assert validate_table(table, schema) is table
    pd.testing.assert_frame_equal(table, before, check_dtype=True, check_exact=True)
    pd.testing.assert_frame_equal(schema.validate(before, lazy=True), before, check_dtype=True)


def _refused(table: pd.DataFrame, schema, column: str) -> None:
    with pytest.raises(SchemaErrors, match=schema.__name__) as info:
        validate_table(table, schema)
    assert column in set(info.value.failure_cases["column"].astype(str))
    assert column in str(info.value)


# ---------------------------------------------------------------- evidence of the study


def test_site_metrics_are_discrimination_plus_checked_calibration_columns(inputs) -> None:
    assert schema_columns(SiteMetrics) == (
        *schema_columns(DiscriminationTable),
        *CALIBRATION_COLUMNS,
    )
    keys = ["group", "target"]
    merged = inputs.metrics.merge(inputs.calibration[[*keys, *CALIBRATION_COLUMNS]], on=keys)
    _unchanged(merged, SiteMetrics)
    _refused(merged.assign(brier=1.5), SiteMetrics, "brier")  # CalibrationTable's check
    by_site = mean_auroc_by_group(inputs.metrics).rename("mean_auroc").reset_index()
    _unchanged(by_site, MeanAuroc)
    _refused(by_site.assign(mean_auroc=-0.2), MeanAuroc, "mean_auroc")


# ---------------------------------------------------------------- decisions and criteria


def test_decision_tables_meet_their_schemas_unchanged(decided: Decisions) -> None:
    assert tuple(decided.table.columns) == schema_columns(DecisionsTable)
    assert tuple(decided.criteria.columns) == schema_columns(CriteriaTable)
    assert decided.criteria["ci_low"].isna().any()  # data sufficiency and drift rows
    _unchanged(decided.table, DecisionsTable)
    _unchanged(decided.criteria, CriteriaTable)
    # Contract C is a prefix of the criteria table (the full table inherits it).
    contract = schema_columns(CriteriaContract)
    assert schema_columns(CriteriaTable)[: len(contract)] == contract


def test_broken_decision_tables_are_refused_naming_the_column(decided: Decisions) -> None:
    table, criteria = decided.table, decided.criteria
    _refused(table.assign(decision=["MAYBE", *table["decision"].iloc[1:]]), DecisionsTable,
             "decision")  # fmt: skip
    _refused(table.assign(policy_sha256="not-a-hash"), DecisionsTable, "policy_sha256")
    _refused(pd.concat([table, table.iloc[:1]]), DecisionsTable, "site")  # one row per site
    _refused(criteria.assign(comparator="!="), CriteriaTable, "comparator")
    _refused(criteria.assign(mitigation="prayer"), CriteriaTable, "mitigation")
    _refused(criteria.assign(passed_after=np.nan), CriteriaTable, "passed_after")


def test_decisions_refuse_an_input_without_a_column_it_reads(inputs) -> None:
    policy, tables = load_policy(), dict(
        metrics=inputs.metrics, calibration=inputs.calibration,
        recalibration=inputs.recalibration, drift=inputs.drift,
    )  # fmt: skip
    cases = {
        "metrics": "sensitivity_ci_low",
        "calibration": "ece_width_ci_high",
        "recalibration": "sensitivity_site_threshold_ci_low",
        "drift": "psi_level",
    }
    for name, column in cases.items():
        broken = tables | {name: tables[name].drop(columns=column)}
        with pytest.raises(AuditInputError, match=rf"{name}: received a table without columns "
                           rf"\['{column}'\]"):  # fmt: skip
            decide_sites(policy, **broken, sites=list(SITES))


# ---------------------------------------------------------------- monitoring plan


def test_monitoring_plan_meets_its_schema_unchanged(inputs, decided: Decisions) -> None:
    plan = _plan(inputs, decided)
    assert tuple(plan.columns) == schema_columns(MonitoringPlan)
    assert set(plan["kind"]) >= {"deployment", "calibration"}  # NO-GO and deployed sites
    _unchanged(plan, MonitoringPlan)
    _refused(plan.assign(kind="weather"), MonitoringPlan, "kind")
    _refused(plan.assign(direction="sideways"), MonitoringPlan, "direction")
    contract = schema_columns(MonitoringContract)
    assert schema_columns(MonitoringPlan)[: len(contract)] == contract


def test_monitoring_refuses_an_input_without_a_column_it_reads(inputs, decided) -> None:
    with pytest.raises(AuditInputError, match=r"drift: received a table without columns "
                       r"\['psi_level'\].*DriftTable"):  # fmt: skip
        _plan(inputs, decided, drift=inputs.drift.drop(columns="psi_level"))
    with pytest.raises(AuditInputError, match=r"metrics: .*\['auroc_ci_low'\]"):
        _plan(inputs, decided, metrics=inputs.metrics.drop(columns="auroc_ci_low"))


# ---------------------------------------------------------------- cohort and quarantine


def test_cohort_and_quarantine_tables_meet_their_schemas_unchanged(inputs) -> None:
    cohort, quarantine = inputs.cohort, inputs.quarantine
    assert list(cohort.columns[:7]) == list(schema_columns(CohortSummary))
    _unchanged(cohort, CohortSummary)
    _refused(cohort.assign(female_share=2.0), CohortSummary, "female_share")
    _refused(cohort.assign(prev_Effusion=-0.5), CohortSummary, "prev_Effusion")
    assert quarantine["row"].isna().any() and quarantine["column"].isna().any()
    _unchanged(quarantine, QuarantineTable)
    _refused(quarantine.assign(severity="fatal"), QuarantineTable, "severity")
    empty = records_to_frame([])
    assert empty.empty and tuple(empty.columns) == schema_columns(QuarantineTable)
    _unchanged(empty, QuarantineTable)


def test_a_record_of_another_shape_is_refused_where_the_table_is_made() -> None:
    record = QuarantineRecord("site_a", "b1", "labels.csv", 3, 7, "age", "too old", "fix it")
    with pytest.raises(SchemaErrors, match="QuarantineTable") as info:
        records_to_frame([record])  # column must be a name (str), not 7
    assert set(info.value.failure_cases["column"]) == {"column"}


# ---------------------------------------------------------------- the report


@pytest.mark.parametrize("name", sorted(INPUT_SCHEMAS))
def test_report_refuses_a_table_without_a_column_of_its_schema(inputs, name: str) -> None:
    column = schema_columns(INPUT_SCHEMAS[name])[-1]
    broken = replace(inputs, **{name: getattr(inputs, name).drop(columns=column)})
    with pytest.raises(AuditInputError, match=rf"^{name}: received a table without columns "
                       rf"\['{column}'\].*{INPUT_SCHEMAS[name].__name__}"):  # fmt: skip
        build_cxr_view(broken)


def test_report_refuses_a_retraining_summary_without_a_key(inputs) -> None:
    summary = {k: v for k, v in inputs.retraining_summary.items() if k != "device"}
    with pytest.raises(AuditInputError, match=r"retraining_summary: received no keys \['device'\]"):
        build_cxr_view(replace(inputs, retraining_summary=summary))
