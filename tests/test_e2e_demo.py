"""End-to-end: `clinaudit demo` at tiny scale, and measured evidence that the sites differ."""

import json
from pathlib import Path

import pandas as pd
import pytest

from clinaudit.orchestration.cli import main

# Sidecar feature name -> the ingest quality feature that measures it.
FEATURE = {
    "brightness": "mean_intensity",
    "contrast": "contrast",
    "sharpness": "sharpness",
    "noise": "noise_sigma",
    "pixel_spacing": "pixel_spacing_mm",
}


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("demo")
    mp = pytest.MonkeyPatch()
    mp.setenv("DAGSTER_HOME", str(home / "dagster_home"))
    mp.delenv("CLINAUDIT_PSEUDONYM_KEY", raising=False)
    try:
        assert main(["demo", "--scale", "tiny", "--home", str(home), "--workers", "1"]) == 0
        # Second run: landed data is reused (never re-simulated or modified), ingest re-runs.
        before = {p: p.stat().st_mtime_ns for p in (home / "landing").rglob("*") if p.is_file()}
        assert main(["demo", "--scale", "tiny", "--home", str(home), "--workers", "1"]) == 0
        after = {p: p.stat().st_mtime_ns for p in (home / "landing").rglob("*") if p.is_file()}
        assert before == after
    finally:
        mp.undo()
    return home


def test_demo_materializes_every_site(demo_home: Path) -> None:
    tables = demo_home / "artifacts" / "tables"
    sites = {"vendor_dev", "site_a", "site_b", "site_c", "site_d", "site_e"}
    assert {p.stem for p in (tables / "cxr_validated_images").glob("*.parquet")} == sites
    cohort = pd.read_parquet(tables / "cxr_cohort_summary" / "__all__.parquet")
    assert set(cohort["site"]) == sites and (cohort["n_images"] > 0).all()
    vendor = pd.read_parquet(tables / "cxr_validated_images" / "vendor_dev.parquet")
    assert set(vendor["split"]) == {"train", "test"}
    train = set(vendor.loc[vendor["split"] == "train", "patient_pseudonym"])
    test = set(vendor.loc[vendor["split"] == "test", "patient_pseudonym"])
    assert not train & test, "vendor train/test split must be patient-disjoint"
    assert (demo_home / "keys" / "pseudonym.key").stat().st_mode & 0o077 == 0
    assert (demo_home / "dagster_home" / "dagster.yaml").exists()


def test_sites_differ_in_the_directions_the_simulator_intended(demo_home: Path) -> None:
    """Quality features measured by ingest move, versus vendor_dev, as the sidecar declares."""
    tables = demo_home / "artifacts" / "tables" / "cxr_validated_images"
    reference = pd.read_parquet(tables / "vendor_dev.parquet")
    checked = 0
    for sidecar in sorted((demo_home / "simulator_truth" / "cxr").glob("site_*/b0001.json")):
        site = sidecar.parent.name
        pushed = json.loads(sidecar.read_text())["pushed"]
        table = pd.read_parquet(tables / f"{site}.parquet")
        for name, direction in pushed.items():
            col = FEATURE[name]
            ratio = table[col].median() / reference[col].median()
            assert (ratio > 1.05) if direction == "+" else (ratio < 0.95), (site, name, ratio)
            checked += 1
        if not pushed:  # the control site stays close on every feature
            for col in FEATURE.values():
                ratio = table[col].median() / reference[col].median()
                assert 0.8 < ratio < 1.25, (site, col, ratio)
    assert checked >= 8
