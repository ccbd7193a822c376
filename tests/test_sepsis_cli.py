"""`clinaudit audit --study sepsis_ews` on user data: CSV stays, embedded model or vendor scores."""

import json
from pathlib import Path

import pandas as pd
import pytest

from clinaudit.orchestration.cli import main
from clinaudit.reporting.verify import verify_pdf
from clinaudit.sources.sepsis_simulator import land_network


def _audit(tmp_path: Path, landing: Path, name: str, *extra: str) -> tuple[int, Path]:
    out = tmp_path / name
    mp = pytest.MonkeyPatch()
    mp.setenv("DAGSTER_HOME", str(out / "dagster_home"))
    try:
        args = ["audit", "--study", "sepsis_ews", "--landing", str(landing), "--out", str(out)]
        return main([*args, *extra]), out
    finally:
        mp.undo()


def test_sepsis_audit_on_csv_stays_with_model_then_with_vendor_scores(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    land_network(landing, tmp_path / "truth", scale="tiny", seed=3, fmt="csv")
    suffixes = {p.suffix for p in landing.rglob("stays.*")}
    assert suffixes == {".csv"}
    status, out = _audit(tmp_path, landing, "model_run")
    assert status == 0
    (package,) = sorted((out / "reports" / "sepsis_ews").iterdir())
    assert verify_pdf(package / "report.pdf", package_dir=package).ok
    manifest = json.loads((package / "manifest.json").read_text())
    assert any(k.startswith("sepsis_ews/") for k in manifest["inputs"])  # landed batch hashes

    # The vendor's scores for the same stays, as a CSV: audited without any model.
    predictions = pd.read_parquet(
        out / "artifacts" / "tables" / "sepsis_predictions" / "__all__.parquet"
    )
    scores = tmp_path / "vendor_scores.csv"
    predictions[["stay_id", "score"]].to_csv(scores, index=False)
    status, out2 = _audit(
        tmp_path, landing, "scores_run", "--predictions", str(scores), "--threshold", "0.1"
    )
    assert status == 0
    (package2,) = sorted((out2 / "reports" / "sepsis_ews").iterdir())
    assert verify_pdf(package2 / "report.pdf", package_dir=package2).ok


def test_sepsis_scores_without_threshold_is_refused(tmp_path: Path) -> None:
    scores = tmp_path / "s.csv"
    scores.write_text("stay_id,score\nx,0.5\n")
    status, _ = _audit(tmp_path, tmp_path / "landing", "run", "--predictions", str(scores))
    assert status == 2
