"""The sepsis_ews asset group materialized in-process on a tiny landed cohort (temporary home)."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import skops.io as sio

from clinaudit.assets import sepsis_ews
from clinaudit.assets.resources import ClinauditHome
from clinaudit.assets.sepsis_ews import (
    SepsisModel,
    SepsisPolicyFile,
    land_simulated_network,
)
from clinaudit.models.tabular import (
    CARD_FILE,
    MODEL_FILE,
    save_tabular_package,
    train_tabular_vendor_model,
)
from clinaudit.orchestration.definitions import build_resources
from clinaudit.reporting.verify import verify_pdf
from clinaudit.sources.landing import scan_landing, sha256_file
from clinaudit.sources.sepsis_simulator import (
    simulate_network,
    simulate_vendor_population,
    write_sepsis_batch,
)

RUN_CONFIG = {"ops": {"sepsis_audit": {"config": {"n_boot": 40, "seed": 1}}}}


def _resources(home: ClinauditHome, model: SepsisModel | None = None) -> dict[str, object]:
    return {
        **build_resources(home),
        "sepsis_model": model or SepsisModel(vendor_scale="tiny"),
        "sepsis_policy": SepsisPolicyFile(),
    }


def _table(home: ClinauditHome, asset: str) -> pd.DataFrame:
    return pd.read_parquet(home.artifacts / "tables" / asset / "__all__.parquet")


def _bad_batch(home: ClinauditHome) -> int:
    """hosp_c lands one more month as CSV with five bad rows among good ones; returns its rows."""
    frame = simulate_network("tiny", seed=7, months=(13,)).stays
    frame = frame[frame["hospital"] == "hosp_c"].head(12).reset_index(drop=True)
    frame = frame.astype({"age": object, "heart_rate": object, "race_ethnicity": object})
    frame.loc[0, "age"] = -4.0
    frame.loc[1, "heart_rate"] = 350.0
    frame.loc[2, "race_ethnicity"] = "black"
    frame.loc[4, "stay_id"] = frame.loc[3, "stay_id"]
    write_sepsis_batch(home.landing, frame, "2025-01", site="hosp_c", fmt="csv")
    return len(frame)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("sepsis")
    home = ClinauditHome(root=str(root))
    land_simulated_network(home.landing, root / "truth", scale="tiny", seed=0)
    n_bad_batch = _bad_batch(home)
    victim = home.landing / "sepsis_ews" / "hosp_d" / "2024-05" / "stays.parquet"
    victim.write_bytes(victim.read_bytes() + b"\0")  # changed after landing: refused whole
    before = {p: sha256_file(p) for p in (home.landing / "sepsis_ews").rglob("*") if p.is_file()}
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        sepsis_ews.ASSETS, instance=instance, resources=_resources(home), run_config=RUN_CONFIG
    )
    after = {p: sha256_file(p) for p in (home.landing / "sepsis_ews").rglob("*") if p.is_file()}
    assert before == after, "landed data must never be modified"
    return home, instance, result, n_bad_batch


def test_group_materializes_a_verified_signed_package(pipeline) -> None:
    home, instance, result, _ = pipeline
    assert result.success
    event = instance.get_latest_materialization_event(dg.AssetKey("sepsis_audit_package"))
    meta = event.asset_materialization.metadata
    assert meta["verified"].value is True
    package = Path(meta["package_dir"].value)
    assert package.parent == home.reports / "sepsis_ews" and package.name == meta["audit_id"].value
    pdf = Path(meta["pdf"].value)
    assert pdf.is_file() and verify_pdf(pdf, package_dir=package).ok
    manifest = json.loads((package / "manifest.json").read_text())
    assert manifest["metadata"]["simulated"] is True
    assert "sepsis_ews/hosp_a/2024-01" in manifest["inputs"]
    assert "sepsis_ews/hosp_d/2024-05" not in manifest["inputs"]  # refused batch: no rows used
    assert {"tables/fairness_gaps.csv", "tables/monitoring.csv", "audit_policy.yaml"} <= set(
        manifest["outputs"]
    )
    decision = _table(home, "sepsis_decision").iloc[0]
    assert decision["recommendation"] in ("GO", "CONDITIONAL GO", "NO-GO")
    assert meta["recommendation"].value == decision["recommendation"]
    model = _table(home, "sepsis_vendor_model").iloc[0]
    assert model["mode"] == "embedded" and Path(model["source"]).is_dir()
    preds = _table(home, "sepsis_predictions")
    assert (preds["model_sha256"] == model["package_sha256"]).all()


def test_bad_rows_are_named_and_other_hospitals_proceed(pipeline) -> None:
    home, _, _, n_bad_batch = pipeline
    q = _table(home, "sepsis_quarantine")
    bad = q[(q["site"] == "hosp_c") & (q["batch"] == "2025-01")]
    checks = set(bad["check"])
    assert {"negative_value", "impossible_value", "unknown_category", "duplicate_stay_id"} <= checks
    assert set(bad.loc[bad["check"] == "negative_value", "column"]) == {"age"}
    assert bad.loc[bad["check"] == "unknown_category", "message"].str.contains("Black").all()
    assert bad["row"].notna().all() and set(bad["file"]) == {"hosp_c/2025-01/stays.csv"}
    refused = q[(q["site"] == "hosp_d") & (q["batch"] == "2024-05")]
    assert len(refused) and (refused["check"] == "integrity").all()
    assert refused["message"].str.contains("size differs").any()
    stays = _table(home, "sepsis_stays")
    assert sorted(stays["hospital"].unique()) == ["hosp_a", "hosp_b", "hosp_c", "hosp_d"]
    new = stays[(stays["hospital"] == "hosp_c") & (stays["batch"] == "2025-01")]
    assert len(new) == n_bad_batch - 5  # five bad rows (both copies of the duplicate) refused
    assert not ((stays["hospital"] == "hosp_d") & (stays["batch"] == "2024-05")).any()
    report = home.quarantine / "sepsis_ews" / "hosp_c" / "2025-01.json"
    assert json.loads(report.read_text())["records"]


class Payload:
    """A type no vendor package may need (skops refuses it unless trusted)."""

    def __init__(self) -> None:
        self.value = 1


def _package(root: Path) -> Path:
    model = train_tabular_vendor_model(simulate_vendor_population("tiny", seed=0).stays, seed=0)
    return save_tabular_package(model, root)


@pytest.mark.parametrize("attack", ["pickle_file", "untrusted_type"])
def test_unsafe_vendor_model_is_refused(pipeline, tmp_path: Path, attack: str) -> None:
    home, instance, _, _ = pipeline
    package = _package(tmp_path / "pkg")
    if attack == "pickle_file":
        (package / "model.pkl").write_bytes(b"\x80\x04N.")
        expected = "pickle-like files ['model.pkl']"
    else:
        (package / MODEL_FILE).write_bytes(sio.dumps(Payload()))
        card = json.loads((package / CARD_FILE).read_text())
        card["model_sha256"] = sha256_file(package / MODEL_FILE)
        (package / CARD_FILE).write_text(json.dumps(card))
        expected = "types outside the trusted list"
    result = dg.materialize(
        sepsis_ews.ASSETS,
        selection=[sepsis_ews.sepsis_vendor_model],
        instance=instance,
        resources=_resources(home, SepsisModel(package_dir=str(package))),
        raise_on_error=False,
    )
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    assert "vendor model refused" in failure.message and expected in failure.message


def test_landing_again_adds_only_new_batches(pipeline, tmp_path: Path) -> None:
    home = ClinauditHome(root=str(tmp_path))
    land_simulated_network(home.landing, tmp_path / "truth", scale="tiny", seed=0, months=(1,))
    first = {(b.site, b.batch) for b in scan_landing(home.landing, "sepsis_ews").batches}
    land_simulated_network(home.landing, tmp_path / "truth", scale="tiny", seed=0, months=(1, 2))
    later = {(b.site, b.batch) for b in scan_landing(home.landing, "sepsis_ews").batches}
    assert first == {(h, "2024-01") for h in ("hosp_a", "hosp_b", "hosp_c", "hosp_d")}
    assert later - first == {(h, "2024-02") for h in ("hosp_a", "hosp_b", "hosp_c", "hosp_d")}
    truth = json.loads((tmp_path / "truth" / "sepsis_ews" / "truth.json").read_text())
    assert truth["disadvantaged"]["group"] == "Black"
    assert truth["n_stays"] == len(simulate_network("tiny", seed=0, months=(1, 2)).stays)
