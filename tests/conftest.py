"""Session fixtures shared by the end-to-end and report-contract tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from clinaudit.orchestration.cli import main


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``tiny_demo(study)``: the run directory of ``clinaudit demo --study <study> --scale tiny``,
    run twice (once per session and study). The second run must leave every landed file as it
    was (landed data is never re-simulated or modified) and writes a second package."""
    homes: dict[str, Path] = {}

    def run(study: str) -> Path:
        if study in homes:
            return homes[study]
        home = tmp_path_factory.mktemp(f"demo_{study}")
        mp = pytest.MonkeyPatch()
        mp.setenv("DAGSTER_HOME", str(home / "dagster_home"))
        mp.delenv("CLINAUDIT_PSEUDONYM_KEY", raising=False)
        try:
            args = ["demo", "--study", study, "--scale", "tiny", "--home", str(home)]
            assert main([*args, "--workers", "1"]) == 0
            landed = home / "landing"
            before = {p: p.stat().st_mtime_ns for p in landed.rglob("*") if p.is_file()}
            assert main([*args, "--workers", "1"]) == 0
            after = {p: p.stat().st_mtime_ns for p in landed.rglob("*") if p.is_file()}
            assert before == after
        finally:
            mp.undo()
        homes[study] = home
        return home

    return run
