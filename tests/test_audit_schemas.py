"""Output schemas of the audit core: each producer's table meets its schema, unchanged; a broken
table is refused naming the column; a consumer's column check names what is missing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pandera.errors import SchemaErrors

from clinaudit.audit import drift as drift_module
from clinaudit.audit.burden import AlertBurdenTable, alert_burden
from clinaudit.audit.calibration import CalibrationTable, ReliabilityTable, audit_calibration
from clinaudit.audit.discrimination import DiscriminationTable, audit_discrimination
from clinaudit.audit.drift import DriftConfig, DriftTable, drift_table
from clinaudit.audit.fairness import FairnessGaps, FairnessRates, group_rates
from clinaudit.audit.fairness_mitigation import (
    GroupThresholds,
    MitigationTable,
    mitigate_largest_gap,
)
from clinaudit.audit.recalibration import (
    RecalibrationConfig,
    RecalibrationContract,
    RecalibrationTable,
    recalibrate_sites,
)
from clinaudit.audit.schemas import require_columns, schema_columns, validate_table
from clinaudit.audit.types import AuditInputError
from clinaudit.audit.worst_cells import WorstCellsConfig, WorstCellsTable, worst_cells
from clinaudit.models.finetune_guard import (
    GUARD_COLUMNS,
    RetrainingContract,
    RetrainingTable,
    regression_guard,
)

TARGETS = ["a", "b"]


def _scored(seed: int = 0) -> pd.DataFrame:
    """A scored frame: reference + two sites, two targets; site ``thin`` has 4 positives of b."""
    rng = np.random.default_rng(seed)
    parts = []
    for k, (group, n, skill) in enumerate(
        (("ref", 300, 2.5), ("weak", 300, 0.4), ("thin", 120, 2))
    ):
        part = pd.DataFrame({"group": group, "cluster": [f"{group}/{i // 2}" for i in range(n)]})
        for t in TARGETS:
            y = (rng.random(n) < 0.3).astype(float)
            if group == "thin" and t == "b":
                y[:] = 0.0
                y[:4] = 1.0
            y[rng.random(n) < 0.05] = np.nan  # unlabelled rows
            logit = -1.0 + skill * np.nan_to_num(y) + rng.normal(size=n) + 0.3 * k
            part[t] = y
            part[f"score_{t}"] = 1.0 / (1.0 + np.exp(-logit))
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


@pytest.fixture(scope="module")
def audit():
    frame = _scored()
    common = dict(
        groups=frame["group"].to_numpy(),
        clusters=frame["cluster"].to_numpy(),
        targets=TARGETS,
        n_boot=60,
        seed=3,
    )
    y, s = frame[TARGETS], frame[[f"score_{t}" for t in TARGETS]].set_axis(TARGETS, axis=1)
    disc = audit_discrimination(y, s, reference_group="ref", thresholds=0.5, **common)
    cal = audit_calibration(y, s, **common)
    return frame, disc, cal


def _unchanged(table: pd.DataFrame, schema) -> None:
    """Validation returns the table itself and changes no column, order, dtype or value."""
    before = table.copy(deep=True)
    assert validate_table(table, schema) is table
    pd.testing.assert_frame_equal(table, before, check_dtype=True, check_exact=True)
    pd.testing.assert_frame_equal(schema.validate(before, lazy=True), before, check_dtype=True)


def _refused(table: pd.DataFrame, schema, column: str) -> SchemaErrors:
    """The broken table is refused; the error names the schema and the column."""
    with pytest.raises(SchemaErrors, match=schema.__name__) as info:
        validate_table(table, schema)
    assert column in str(info.value)
    cases = info.value.failure_cases
    assert column in set(cases["column"].astype(str)) | set(cases["failure_case"].astype(str))
    return info.value


# ---------------------------------------------------------------- discrimination


def test_discrimination_table_meets_its_schema_unchanged(audit) -> None:
    _, disc, _ = audit
    table = disc.table
    assert tuple(table.columns) == schema_columns(DiscriminationTable)
    assert set(table["status"]) == {"ok", "insufficient data"}  # NaN metrics are covered
    _unchanged(table, DiscriminationTable)


def test_broken_discrimination_tables_are_refused_naming_the_column(audit) -> None:
    table = audit[1].table
    bad = table.copy()
    bad.loc[0, "auroc"] = 1.5
    err = _refused(bad, DiscriminationTable, "auroc")
    assert 1.5 in err.failure_cases["failure_case"].tolist()
    _refused(table.drop(columns="n_boot_valid"), DiscriminationTable, "n_boot_valid")
    _refused(table.assign(status="maybe"), DiscriminationTable, "status")
    _refused(table.assign(extra=1), DiscriminationTable, "extra")  # strict
    reordered = table[[*table.columns[1:], table.columns[0]]]
    _refused(reordered, DiscriminationTable, "group")  # ordered


# ---------------------------------------------------------------- calibration


def test_calibration_and_reliability_tables_meet_their_schemas_unchanged(audit) -> None:
    cal = audit[2]
    assert tuple(cal.table.columns) == schema_columns(CalibrationTable)
    assert tuple(cal.reliability.columns) == schema_columns(ReliabilityTable)
    assert cal.reliability["observed_rate"].isna().any()  # empty bins carry NaN
    _unchanged(cal.table, CalibrationTable)
    _unchanged(cal.reliability, ReliabilityTable)


def test_broken_calibration_tables_are_refused_naming_the_column(audit) -> None:
    cal = audit[2]
    _refused(cal.table.assign(brier=-0.1), CalibrationTable, "brier")
    _refused(cal.table.assign(recal_converged="yes"), CalibrationTable, "recal_converged")
    _refused(cal.reliability.assign(binning="quantile"), ReliabilityTable, "binning")
    _refused(cal.reliability.drop(columns="count"), ReliabilityTable, "count")


# ---------------------------------------------------------------- drift


def _drift(**config) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    ref = pd.DataFrame({"x": rng.normal(size=150), "view": rng.choice(["AP", "PA"], 150)})
    data = pd.DataFrame(
        {
            "x": np.r_[rng.normal(1.0, 1.0, 100), rng.normal(size=5)],
            "view": rng.choice(["AP", "PA"], 105),
            "site": ["s1"] * 100 + ["tiny"] * 5,  # tiny: insufficient data
        }
    )
    return drift_table(data, ref, groups="site", config=DriftConfig(n_perm=49, **config))


def test_drift_table_meets_its_schema_unchanged() -> None:
    table = _drift()
    assert tuple(table.columns) == schema_columns(DriftTable)
    assert set(table["status"]) == {"ok", "insufficient data"}
    _unchanged(table, DriftTable)


def test_broken_drift_tables_are_refused_naming_the_column() -> None:
    table = _drift()
    _refused(table.assign(psi_level="huge"), DriftTable, "psi_level")
    _refused(table.assign(p_adj=1.2), DriftTable, "p_adj")
    _refused(table.assign(n_missing=-1), DriftTable, "n_missing")


def test_a_producer_bug_is_caught_by_the_producer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(drift_module, "_psi_level", lambda psi, bound, config: "huge")
    with pytest.raises(SchemaErrors, match="DriftTable") as info:
        _drift()
    assert set(info.value.failure_cases["column"]) == {"psi_level"}


# ---------------------------------------------------------------- worst cells


def test_worst_cells_meet_their_schema_unchanged_also_when_empty(audit) -> None:
    _, disc, cal = audit
    table = worst_cells(
        disc, cal, config=WorstCellsConfig(include_unflagged=True, ece_tolerance=0.3)
    )
    assert tuple(table.columns) == schema_columns(WorstCellsTable)
    assert (table["criteria"] == "").any() and table["auroc_drop_fired"].any()
    _unchanged(table, WorstCellsTable)
    margins = dict(auroc_margin=0.99, sensitivity_margin=0.99, ece_tolerance=0.99)
    empty = worst_cells(disc, cal, config=WorstCellsConfig(**margins))
    assert empty.empty and tuple(empty.columns) == schema_columns(WorstCellsTable)
    _refused(empty.drop(columns="harm_score"), WorstCellsTable, "harm_score")


def test_broken_worst_cells_are_refused_naming_the_column(audit) -> None:
    table = worst_cells(audit[1], audit[2])
    _refused(table.assign(criteria="auroc_drop;bogus"), WorstCellsTable, "criteria")
    _refused(table.assign(rank=0), WorstCellsTable, "rank")
    _refused(table.assign(ece=np.nan, auroc=np.nan), WorstCellsTable, "auroc")  # ok cells only


# ---------------------------------------------------------------- recalibration


@pytest.fixture(scope="module")
def recalibration(audit) -> pd.DataFrame:
    frame = audit[0]
    config = RecalibrationConfig(n_boot=40, n_folds=3)
    kw = dict(targets=TARGETS, thresholds=0.5, intended_sensitivity={"a": 0.8, "b": np.nan})
    return recalibrate_sites(frame, groups=["weak", "thin"], config=config, **kw).table


def test_recalibration_table_meets_its_schema_and_contract_unchanged(recalibration) -> None:
    table = recalibration
    assert set(table["status"]) == {"ok", "insufficient data"}
    assert table["method"].isna().any() and table["sensitivity_site_threshold"].isna().any()
    _unchanged(table, RecalibrationTable)
    assert set(schema_columns(RecalibrationContract)) < set(table.columns)
    require_columns("recalibration", table, RecalibrationContract)


def test_broken_recalibration_tables_are_refused_naming_the_column(recalibration) -> None:
    _refused(recalibration.assign(method="magic"), RecalibrationTable, "method")
    _refused(recalibration.assign(ece_after=2.0), RecalibrationTable, "ece_after")
    _refused(recalibration.drop(columns="fold_methods"), RecalibrationTable, "fold_methods")


# ---------------------------------------------------------------- re-training guard


def test_retraining_table_meets_its_schema_and_contract_unchanged(audit) -> None:
    before = audit[0]
    after = before.assign(score_a=before["score_a"] ** 2)
    guard = regression_guard(before, after, tolerance=0.03, targeted_cells=["weak/a"], n_boot=30)
    assert tuple(guard.table.columns) == GUARD_COLUMNS
    assert set(guard.table["status"]) == {"ok", "insufficient data"}
    _unchanged(guard.table, RetrainingTable)
    require_columns("retraining", guard.table, RetrainingContract)
    _refused(guard.table.assign(split="train"), RetrainingTable, "split")
    _refused(guard.table.assign(tolerance=1.5), RetrainingTable, "tolerance")


# ---------------------------------------------------------------- fairness, burden, mitigation


@pytest.fixture(scope="module")
def stays() -> pd.DataFrame:
    """Stays with a TPR gap for race B and a tiny race group D (insufficient data)."""
    rng = np.random.default_rng(4)
    n = 1500
    race = rng.choice(["A", "B", "C", "D"], n, p=[0.5, 0.3, 0.19, 0.01])
    y = (rng.random(n) < 0.15).astype(int)
    logit = -1.2 + 2.2 * y + rng.normal(size=n) - 1.2 * ((race == "B") & (y == 1))
    return pd.DataFrame(
        {
            "y": y,
            "score": 1.0 / (1.0 + np.exp(-logit)),
            "race": race,
            "sex": rng.choice(["F", "M"], n),
            "patient": rng.integers(0, 1200, n),
        }
    )


def test_fairness_tables_meet_their_schemas_unchanged(stays: pd.DataFrame) -> None:
    groups = {"race": stays["race"], "sex": stays["sex"]}
    res = group_rates(stays["y"], stays["score"], groups=groups, threshold=0.4,
                      clusters=stays["patient"], n_boot=40)  # fmt: skip
    assert set(res.rates["status"]) == {"ok", "insufficient data"}
    assert res.rates["is_intersection"].any() and res.gaps["difference"].isna().any()
    _unchanged(res.rates, FairnessRates)
    _unchanged(res.gaps, FairnessGaps)
    _refused(res.rates.assign(tpr=1.2), FairnessRates, "tpr")
    _refused(res.gaps.assign(comparison="min_max"), FairnessGaps, "comparison")
    burden = alert_burden(stays["y"], stays["score"], 0.4, exposure_days=2.0,
                          groups={"race": stays["race"]}, n_boot=40)  # fmt: skip
    assert burden["sensitivity"].notna().all()
    _unchanged(burden, AlertBurdenTable)
    _refused(burden.assign(nne=0.5), AlertBurdenTable, "nne")
    _refused(burden.drop(columns="exposure_days"), AlertBurdenTable, "exposure_days")


@pytest.mark.parametrize("method", ["group_thresholds", "threshold_optimizer"])
def test_mitigation_tables_meet_their_schemas_unchanged(stays: pd.DataFrame, method) -> None:
    res = mitigate_largest_gap(
        stays["y"], stays["score"], groups={"race": stays["race"]}, threshold=0.4,
        clusters=stays["patient"], method=method, n_boot=30, n_folds=3, exposure_days=1.0,
    )  # fmt: skip
    assert "insufficient data" in set(res.table["status"])  # race D is too small to fit
    _unchanged(res.table, MitigationTable)
    _unchanged(res.thresholds_by_group, GroupThresholds)
    _refused(res.table.assign(quantity="happiness"), MitigationTable, "quantity")
    _refused(res.thresholds_by_group.assign(p_threshold=2.0), GroupThresholds, "p_threshold")


# ---------------------------------------------------------------- consumers


def test_require_columns_names_the_missing_columns_and_the_schema(audit) -> None:
    table = audit[1].table
    require_columns("metrics", table, DiscriminationTable)
    with pytest.raises(AuditInputError, match=r"metrics: received a table without columns "
                       r"\['auroc_ci_low'\].*ECE.*DiscriminationTable"):  # fmt: skip
        require_columns("metrics", table.drop(columns="auroc_ci_low"), DiscriminationTable,
                        ["group", "auroc_ci_low"], why="ECE")  # fmt: skip
    with pytest.raises(AuditInputError, match=r"calibration: received None; expected the "):
        require_columns("calibration", None, CalibrationTable, ["brier"])
    with pytest.raises(ValueError, match=r"\['auroc_low'\] are not columns of DiscriminationTable"):
        require_columns("metrics", table, DiscriminationTable, ["auroc_low"])
