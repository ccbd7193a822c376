"""Ingest assets materialized in-process on a tiny simulated cohort, with a temporary instance."""

import csv
from dataclasses import replace
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from pipeline_helpers import checks, materialize

from clinaudit.assets.factory import partitions_name
from clinaudit.assets.resources import ClinauditHome, read_stored
from clinaudit.orchestration.definitions import build_defs, defs
from clinaudit.sources.cxr_simulator import simulate_site_batch
from clinaudit.sources.cxr_sites import DEFAULT_SITES, SiteProfile
from clinaudit.studies import get_study

STUDY = "multisite_cxr"
SITES = partitions_name(get_study(STUDY))


def test_definitions_load_with_study_prefixed_keys() -> None:
    dg.Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert {f"{STUDY}/{s}" for s in ("validated", "quarantine", "batches", "cohort")} <= keys
    assert all("/" in k for k in keys)  # every asset sits under its study's prefix
    job = defs.resolve_job_def(f"{STUDY}_partition_job")
    assert job.partitions_def.name == SITES == "multisite_cxr_sites"


@pytest.fixture(scope="module")
def landed(tmp_path_factory: pytest.TempPathFactory) -> ClinauditHome:
    """site_a (clean), site_d (shifted) and site_x (one image corrupted after landing)."""
    root = tmp_path_factory.mktemp("home")
    home = ClinauditHome(root=str(root))
    for site in ("site_a", "site_d", "site_x"):
        profile = "site_a" if site == "site_x" else site
        summary = simulate_site_batch(
            home.landing,
            truth_root=root / "truth",
            site=profile if site != "site_x" else _renamed("site_a", "site_x"),
            n_images=30,
            scale="tiny",
            seed=3,
            workers=1,
        )
        assert summary.n_images == 30
    victim = sorted((home.landing / "cxr" / "site_x" / "b0001" / "images").iterdir())[0]
    data = bytearray(victim.read_bytes())
    data[-10:] = b"\xff" * 10  # transfer corruption: same size, different bytes
    victim.write_bytes(bytes(data))
    return home


def _renamed(base: str, name: str) -> SiteProfile:
    return replace(DEFAULT_SITES[base], name=name)


def _materialize(
    home: ClinauditHome, instance: dg.DagsterInstance, site: str
) -> dg.ExecuteInProcessResult:
    config = {"ops": {f"{STUDY}__ingest": {"config": {"workers": 1, "min_rows": 10}}}}
    return materialize(home, instance, STUDY, "validated", partition=site, run_config=config)


def test_ingest_partitions_checks_and_isolation(landed: ClinauditHome) -> None:
    home = landed
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(SITES, ["site_a", "site_d", "site_x"])
        results = {s: _materialize(home, instance, s) for s in ("site_a", "site_d", "site_x")}
        for site in ("site_a", "site_d"):
            assert results[site].success
            evaluated = checks(results[site])
            assert set(evaluated) == {
                "batch_structure",
                "manifest_integrity",
                "deidentified",
                "label_expectations",
                "quarantine_rate",
                "image_ids_opaque",
            }
            # The simulator names images like ChestX-ray14 (<patient id>_<follow-up>): the
            # non-blocking warning says so; every other check passes.
            opaque = evaluated.pop("image_ids_opaque")
            assert not opaque.passed and opaque.severity == dg.AssetCheckSeverity.WARN
            assert all(c.passed for c in evaluated.values()), {
                k: c.metadata for k, c in evaluated.items() if not c.passed
            }
        # The corrupted site: the image is quarantined, the rest ingested, the blocking
        # integrity check fails with ERROR severity; other sites are untouched.
        bad = checks(results["site_x"])
        assert not bad["manifest_integrity"].passed
        assert bad["manifest_integrity"].severity == dg.AssetCheckSeverity.ERROR
        assert bad["batch_structure"].passed

        site_x = read_stored(home, f"{STUDY}/validated", "site_x")
        assert len(site_x) == 29
        quarantine = read_stored(home, f"{STUDY}/quarantine", "site_x")
        rec = quarantine[quarantine["check"] == "hash_mismatch"].iloc[0]
        assert rec["file"].startswith("images/") and "re-" in rec["fix"]
        assert (home.quarantine / "cxr" / "site_x" / "b0001.json").exists()

        batches = read_stored(home, f"{STUDY}/batches", "site_x")
        assert batches[["batch", "status"]].to_dict("records") == [
            {"batch": "b0001", "status": "ingested"}
        ]
        summary = materialize(home, instance, STUDY, "cohort")
        assert summary.success
        cohort = read_stored(home, f"{STUDY}/cohort")
        assert cohort.set_index("site")["n_images"].to_dict() == {
            "site_a": 30,
            "site_d": 30,
            "site_x": 29,
        }


def test_outputs_are_deidentified(landed: ClinauditHome) -> None:
    home = landed
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(SITES, ["site_a"])
        assert _materialize(home, instance, "site_a").success
    with open(home.landing / "cxr" / "site_a" / "b0001" / "labels.csv", newline="") as fh:
        raw_ids = {row["Patient ID"] for row in csv.DictReader(fh)}
    assert raw_ids
    for path in (home.artifacts / "tables").rglob("*.parquet"):
        frame = pd.read_parquet(path)
        text = frame.astype(str).to_numpy().ravel().tolist()
        assert not raw_ids & set(text), f"raw patient id leaked into {path}"
        assert not any("SIM^" in v for v in text), f"PatientName leaked into {path}"
        assert "patient_id" not in frame.columns


def test_build_defs_with_explicit_home(tmp_path: Path) -> None:
    custom = build_defs(ClinauditHome(root=str(tmp_path)), studies=[get_study(STUDY)])
    assert custom.resolve_job_def(f"{STUDY}_partition_job").name == f"{STUDY}_partition_job"
    assert custom.resources["home"].root_dir == tmp_path
