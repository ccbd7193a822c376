"""`clinaudit audit --study sepsis_ews` on user data: CSV stays, embedded model or vendor scores."""

import json
from pathlib import Path

import pandas as pd
import pytest

from clinaudit.assets.resources import ClinauditHome, read_stored, stored_partitions
from clinaudit.orchestration.cli import main
from clinaudit.reporting.verify import verify_pdf
from clinaudit.sources.sepsis_simulator import land_network


def _audit(tmp_path: Path, landing: Path, name: str, *extra: str) -> tuple[int, Path]:
    out = tmp_path / name
    mp = pytest.MonkeyPatch()
    mp.setenv("DAGSTER_HOME", str(out / "dagster_home"))
    try:
        args = ["audit", "--study", "sepsis_ews", "--landing", str(landing), "--out", str(out)]
        return main([*args, *extra, "--workers", "1"]), out
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def landing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sepsis_cli")
    land_network(root / "landing", root / "truth", scale="tiny", seed=3, fmt="csv")
    assert {p.suffix for p in (root / "landing").rglob("stays.*")} == {".csv"}
    return root / "landing"


def test_audit_on_csv_stays_with_the_embedded_model_then_with_vendor_scores(
    landing: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out = _audit(tmp_path, landing, "model_run")
    assert status == 0
    printed = capsys.readouterr().out
    assert "decisions under policy" in printed and "signed audit PDF" in printed
    (package,) = sorted((out / "reports" / "sepsis_ews").iterdir())
    assert verify_pdf(package / "report.pdf", package_dir=package).ok
    manifest = json.loads((package / "manifest.json").read_text())
    assert any(k.startswith("sepsis_ews/") for k in manifest["inputs"])  # landed batch hashes

    # The vendor's scores for the same stays, as one CSV: audited without any model.
    home = ClinauditHome(root=str(out))
    key = "sepsis_ews/predictions"
    predictions = pd.concat([read_stored(home, key, h) for h in stored_partitions(home, key)])
    scores = tmp_path / "vendor_scores.csv"
    predictions[["stay_id", "score"]].to_csv(scores, index=False)
    status, out2 = _audit(
        tmp_path, landing, "scores_run", "--predictions", str(scores), "--threshold", "0.1"
    )
    assert status == 0
    (package2,) = sorted((out2 / "reports" / "sepsis_ews").iterdir())
    assert verify_pdf(package2 / "report.pdf", package_dir=package2).ok
    model = read_stored(ClinauditHome(root=str(out2)), "sepsis_ews/model")
    assert (model.mode, model.thresholds, model.threshold_source) == (
        "scores",
        {"sepsis": 0.1},
        "configured",
    )


def test_scores_without_a_threshold_are_refused_with_the_fix(
    landing: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scores = tmp_path / "s.csv"
    scores.write_text("stay_id,score\nx,0.5\n")
    assert any(landing.rglob("manifest.json"))  # a ready landing: the refusal is the threshold's
    status, out = _audit(tmp_path, landing, "run", "--predictions", str(scores))
    assert status == 1
    printed = capsys.readouterr().out
    assert "model" in printed and "FAILED" in printed
    assert "CLINAUDIT_SEPSIS_EWS_THRESHOLD" in printed and "--threshold" in printed
    assert not (out / "reports" / "sepsis_ews").exists()  # nothing was decided or signed
