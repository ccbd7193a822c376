"""Demo scale (6,000 stays): the audit finds the group the simulator disadvantaged (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from clinaudit.assets import sepsis_ews
from clinaudit.assets.resources import ClinauditHome
from clinaudit.assets.sepsis_ews import SepsisModel, SepsisPolicyFile, land_simulated_network
from clinaudit.orchestration.definitions import build_resources

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("sepsis_demo")
    home = ClinauditHome(root=str(root))
    land_simulated_network(home.landing, root / "truth", scale="demo", seed=0)
    resources = {
        **build_resources(home),
        "sepsis_model": SepsisModel(vendor_scale="demo", seed=0),
        "sepsis_policy": SepsisPolicyFile(),
    }
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(sepsis_ews.ASSETS, instance=instance, resources=resources)
    assert result.success
    truth = json.loads((root / "truth" / "sepsis_ews" / "truth.json").read_text())
    return home, instance, truth


def _table(home: ClinauditHome, name: str) -> pd.DataFrame:
    return pd.read_parquet(home.artifacts / "tables" / name / "__all__.parquet")


def test_audit_names_the_simulated_disadvantaged_group(demo) -> None:
    home, _, truth = demo
    target = truth["disadvantaged"]
    assert (target["metric"], target["direction"]) == ("tpr", "lower")
    dis = _table(home, "sepsis_disadvantaged").set_index("attribute")
    row = dis.loc[target["attribute"]]
    assert row["status"] == "ok" and row["group"] == target["group"]
    rates = _table(home, "sepsis_fairness_rates")
    ok = rates[(rates["attribute"] == target["attribute"]) & (rates["status"] == "ok")]
    assert ok.loc[ok["tpr"].idxmin(), "group"] == target["group"]
    assert row["diff_vs_reference"] < 0  # below the reference group (CI may include 0)
    stays = _table(home, "sepsis_stays")
    assert len(stays) == truth["n_stays"] and stays["simulated"].all()


def test_demo_package_is_verified_and_fits_the_page_budget(demo) -> None:
    home, instance, truth = demo
    event = instance.get_latest_materialization_event(dg.AssetKey("sepsis_audit_package"))
    meta = event.asset_materialization.metadata
    assert meta["verified"].value is True and meta["simulated"].value is True
    assert 5 <= meta["pages"].value <= 9
    assert Path(meta["pdf"].value).is_file()
    drift = _table(home, "sepsis_drift")
    spo2 = drift.query("feature == 'spo2' and scope == 'race_ethnicity' and group == 'Black'")
    assert spo2["psi_level"].iloc[0] == "major"  # the pulse-oximetry mechanism shows as drift
    plan = _table(home, "sepsis_monitoring")
    assert "input drift: spo2" in set(plan["item"])
    card_auroc = _table(home, "sepsis_discrimination").query("attribute == 'vendor_card'")
    network = _table(home, "sepsis_discrimination").query("attribute == 'overall'")
    assert network["auroc"].iloc[0] < card_auroc["auroc"].iloc[0]  # transports poorly
