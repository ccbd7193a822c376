"""Demo scale (6,000 stays): the audit finds the group the simulator disadvantaged (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
from sepsis_fixtures import STUDY

from clinaudit.assets.resources import ClinauditHome, read_stored
from clinaudit.orchestration.runner import PipelineRunner, register_partitions

pytestmark = pytest.mark.slow
P = STUDY.name


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("sepsis_demo")
    home = ClinauditHome(root=str(root / "home"))
    STUDY.simulate(home.landing, root / "truth", scale="demo", seed=0, workers=1)
    instance = dg.DagsterInstance.ephemeral()
    runner = PipelineRunner(instance, home, STUDY, console_level="CRITICAL")
    runs = runner.run_all(register_partitions(instance, home, STUDY))
    assert all(r.success and not r.blocking_failure for r in runs), runs
    truth = json.loads((root / "truth" / P / "truth.json").read_text())
    return home, instance, truth


def test_audit_names_the_simulated_disadvantaged_group(demo) -> None:
    home, _, truth = demo
    target = truth["disadvantaged"]
    assert (target["metric"], target["direction"]) == ("tpr", "lower")
    evidence = read_stored(home, f"{P}/evidence")
    row = evidence["disadvantaged"].set_index("attribute").loc[target["attribute"]]
    assert row["status"] == "ok" and row["group"] == target["group"]
    rates = evidence["fairness_rates"]
    ok = rates[(rates["attribute"] == target["attribute"]) & (rates["status"] == "ok")]
    assert ok.loc[ok["tpr"].idxmin(), "group"] == target["group"]
    assert row["diff_vs_reference"] < 0  # below the reference group (CI may include 0)
    assert evidence.facts["cohort"]["n_stays"] == truth["n_stays"]
    assert evidence.facts["cohort"]["simulated"] is True and evidence.facts["left_out"] == {}


def test_demo_package_is_verified_and_fits_the_page_budget(demo) -> None:
    home, instance, _ = demo
    event = instance.get_latest_materialization_event(dg.AssetKey([P, "package"]))
    meta = event.asset_materialization.metadata
    assert meta["verified"].value is True and meta["simulated"].value is True
    low, high = STUDY.page_budget
    assert low <= meta["pages"].value <= high
    assert Path(meta["pdf"].value).is_file()
    evidence = read_stored(home, f"{P}/evidence")
    drift = evidence["drift"]
    spo2 = drift.query("feature == 'spo2' and scope == 'race_ethnicity' and group == 'Black'")
    assert spo2["psi_level"].iloc[0] == "major"  # the pulse-oximetry mechanism shows as drift
    plan = read_stored(home, f"{P}/monitoring")["monitoring"]
    assert "input drift: spo2" in set(plan["item"])
    discrimination = evidence["discrimination"]
    card_auroc = discrimination.query("attribute == 'vendor_card'")
    network = discrimination.query("attribute == 'overall'")
    assert network["auroc"].iloc[0] < card_auroc["auroc"].iloc[0]  # transports poorly
