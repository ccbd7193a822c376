"""Acceptance on the embedded demo cohort (slow: simulates, trains and audits; `make test-slow`).

Set CLINAUDIT_DEMO_HOME to the run-time directory of a finished `make demo` to check that run
instead of running a new one here.
"""

import json
import os
from pathlib import Path

import dagster as dg
import pytest

from clinaudit.assets.resources import ClinauditHome, read_stored
from clinaudit.orchestration.cli import main

pytestmark = pytest.mark.slow
P = "multisite_cxr"


def _read(home: Path, stage: str):
    return read_stored(ClinauditHome(root=str(home)), f"{P}/{stage}")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    existing = os.environ.get("CLINAUDIT_DEMO_HOME")
    if existing:
        return Path(existing)
    root = tmp_path_factory.mktemp("demo_scale")
    mp = pytest.MonkeyPatch()
    mp.setenv("DAGSTER_HOME", str(root / "dagster_home"))
    try:
        assert main(["demo", "--study", P, "--scale", "demo", "--home", str(root)]) == 0
    finally:
        mp.undo()
    return root


def _shifted_sites(home: Path) -> dict[str, dict[str, str]]:
    out = {}
    for sidecar in sorted((home / "simulator_truth" / "cxr").glob("site_*/b0001.json")):
        out[sidecar.parent.name] = json.loads(sidecar.read_text())["pushed"]
    return out


def test_vendor_model_reaches_published_range_and_degrades_at_shifted_sites(home: Path) -> None:
    metrics = _read(home, "evidence")["metrics"]
    ok = metrics[metrics["status"] == "ok"]
    mean_auroc = ok.groupby("group")["auroc"].mean()
    assert mean_auroc["vendor_dev:test"] >= 0.80, mean_auroc
    shifted = [s for s, pushed in _shifted_sites(home).items() if pushed]
    drops = {s: mean_auroc["vendor_dev:test"] - mean_auroc[s] for s in shifted}
    assert sum(d > 0.03 for d in drops.values()) >= 2, drops


def test_worst_cells_are_at_sites_the_simulator_shifted(home: Path) -> None:
    worst = _read(home, "evidence")["worst_cells"]
    shifted = {s for s, pushed in _shifted_sites(home).items() if pushed}
    assert len(worst) > 0
    assert set(worst["group"]) <= shifted, worst[["group", "target", "criteria"]]


def test_drifted_sites_match_the_injected_effects(home: Path) -> None:
    """Shifted sites: multivariate drift and a major PSI on every pushed feature. The control
    site: no quality feature reaches a major PSI."""
    drift = _read(home, "evidence")["drift"]
    mmd = drift[drift["feature"] == "__mmd__"].set_index("group")
    numeric = drift[drift["kind"] == "numeric"].set_index(["group", "feature"])
    feature = {
        "brightness": "mean_intensity",
        "contrast": "contrast",
        "sharpness": "sharpness",
        "noise": "noise_sigma",
        "pixel_spacing": "pixel_spacing_mm",
    }
    for site, pushed in _shifted_sites(home).items():
        if pushed:
            assert bool(mmd.loc[site, "significant"]), site
            for name in pushed:
                assert numeric.loc[(site, feature[name]), "psi_level"] == "major", (site, name)
        else:
            levels = {numeric.loc[(site, f), "psi_level"] for f in feature.values()}
            assert "major" not in levels, (site, levels)


def test_vendor_model_metadata_reports_heldout_auroc(home: Path) -> None:
    dagster_home = home / "dagster_home"
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey([P, "model"]))
    meta = event.asset_materialization.metadata
    assert meta["heldout_mean_auroc"].value >= 0.80


def test_decisions_spread_follows_the_injected_site_effects(home: Path) -> None:
    """GO at the control site, CONDITIONAL GO and NO-GO at shifted sites, criteria named."""
    decisions = _read(home, "decisions")["decisions"].set_index("site")
    shifted = {s for s, pushed in _shifted_sites(home).items() if pushed}
    assert {"GO", "CONDITIONAL GO", "NO-GO"} <= set(decisions["decision"]), decisions["decision"]
    # Only sites without injected acquisition effects may be GO.
    assert set(decisions.index[decisions["decision"] == "GO"]).isdisjoint(shifted)
    for site, row in decisions.iterrows():
        if row["decision"] == "NO-GO":
            assert "AUROC lower CI" in row["reasons"] or "insufficient" in row["reasons"], site
        if row["decision"] == "CONDITIONAL GO":
            assert "after site recalibration" in row["reasons"] or "drift" in row["reasons"]


def test_demo_package_is_signed_verified_and_within_page_budget(home: Path) -> None:
    import shutil
    import subprocess

    from clinaudit.reporting.verify import verify_pdf

    packages = sorted((home / "reports" / "multisite_cxr").iterdir())
    pdf = packages[-1] / "report.pdf"
    assert verify_pdf(pdf, package_dir=packages[-1]).ok
    if shutil.which("pdfinfo"):
        info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True).stdout
        pages = int(
            next(line.split()[-1] for line in info.splitlines() if line.startswith("Pages"))
        )
        assert 5 <= pages <= 10, pages
