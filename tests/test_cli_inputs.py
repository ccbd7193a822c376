"""`clinaudit audit|ingest`: wrong inputs are refused before anything runs, and the screen says
what happened (waiting batches, refused directories, BLOCKED vs FAILED, one-line errors)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from clinaudit.orchestration.cli import _print_runs, main
from clinaudit.orchestration.runner import StepRun


def _audit(tmp_path: Path, *extra: str) -> list[str]:
    landing = tmp_path / "landing"
    return ["audit", "--study", "multisite_cxr", "--landing", str(landing),
            "--out", str(tmp_path / "out"), *extra]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--threshold", "50"), "--threshold 50 is outside (0, 1) (a percentage? use 0.5)"),
        (("--threshold", "0"), "--threshold 0 is outside (0, 1)"),
        (("--predictions", "nowhere"), "--predictions nowhere: no such file or directory"),
        (("--thresholds", "t.json"), "--thresholds t.json: no such file or directory"),
    ],
)
def test_wrong_arguments_are_refused_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: tuple[str, ...], message: str
) -> None:
    (tmp_path / "landing").mkdir()
    assert main(_audit(tmp_path, *extra)) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not (tmp_path / "out").exists()  # nothing ran, nothing was written


def test_a_mistyped_landing_folder_is_named_and_never_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_audit(tmp_path)) == 2
    err = capsys.readouterr().err
    assert f"--landing {tmp_path / 'landing'}: no such directory" in err, err
    assert not (tmp_path / "landing").exists() and not (tmp_path / "out").exists()


def test_a_thresholds_file_needs_vendor_scores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "landing").mkdir()
    thresholds = tmp_path / "t.json"
    thresholds.write_text(json.dumps({"Effusion": 0.3}))
    assert main(_audit(tmp_path, "--thresholds", str(thresholds))) == 2
    assert "--thresholds goes with --predictions" in capsys.readouterr().err


def test_waiting_batches_and_refused_directories_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cxr = tmp_path / "landing" / "cxr"
    (cxr / "site_a" / "b1").mkdir(parents=True)  # no manifest.json yet
    (cxr / "bad site" / "b1").mkdir(parents=True)  # unsafe name: refused, never opened
    assert main(["ingest", "--study", "multisite_cxr", "--home", str(tmp_path / "home"),
                 "--landing", str(tmp_path / "landing")]) == 2  # fmt: skip
    out = capsys.readouterr().out
    assert "waiting for manifest: site_a/b1" in out
    assert "refused landing directory" in out and "bad site" in out


def test_a_failed_blocking_check_prints_blocked_and_errors_print_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    blocked = StepRun("validated", "site_a", "r1", False, ("batch_structure (ERROR)",))
    failed = StepRun(
        "predictions", "site_b", "r2", False,
        error="scores/site_b.csv: 1 problem(s) in the scores CSV: line 3, column 'Mass': "
        "probability 87 is outside [0, 1] (fix: looks like a percentage: write 0.87)\nTraceback",
    )  # fmt: skip
    warned = StepRun("validated", "site_c", "r3", True, ("quarantine_rate (WARN)",))
    assert _print_runs([blocked, failed, warned]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert "BLOCKED" in lines[0] and "batch_structure (ERROR)" in lines[0]
    assert "FAILED" in lines[1]
    assert lines[2].strip().startswith("error: scores/site_b.csv") and "line 3" in lines[2]
    assert "fix: looks like a percentage" in lines[2] and "Traceback" not in "\n".join(lines)
    assert "ok, warnings" in lines[3]


def test_importing_the_command_imports_nothing_heavy() -> None:
    # The image ingest's "spawn" worker pool re-imports the `clinaudit` script's module in every
    # worker: a heavy import there cost ~9 CPU-s per worker, per batch.
    code = (
        "import sys, clinaudit.orchestration.cli; "
        "print(sorted(m for m in ('dagster', 'torch', 'pandas', 'clinaudit.studies') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]", out
