"""Helpers of the sepsis_ews pipeline tests: a fast policy, the tiny embedded model, runners.

The fast policy is the shipped one with 40 bootstrap replicates (every other rule unchanged), so
a tiny network audits in seconds; the embedded vendor model is trained on the tiny vendor
population. Nothing here reads the repository's ``var/``.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from clinaudit.assets.resources import ClinauditHome, StudyModel
from clinaudit.studies import get_study

STUDY = get_study("sepsis_ews")
N_BOOT = 40


def fast_policy(folder: Path) -> Path:
    """The shipped policy with ``N_BOOT`` bootstrap replicates, written to ``folder``."""
    text = STUDY.shipped_policy().read_text(encoding="utf-8")
    assert "  n_boot: 1000\n" in text, "the shipped policy's n_boot line moved"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "fast_policy.yaml"
    path.write_text(text.replace("  n_boot: 1000\n", f"  n_boot: {N_BOOT}\n"), encoding="utf-8")
    return path


def tiny_model(**settings: object) -> StudyModel:
    """The embedded vendor model trained on the tiny vendor population (or ``settings``)."""
    return StudyModel(study=STUDY.name, training={"scale": "tiny"}, **settings)


def step_failure(instance: dg.DagsterInstance, run_id: str | None) -> str:
    """The error messages of the failed step of a run (the error and its causes)."""
    assert run_id is not None
    for event in instance.all_logs(run_id):
        if event.dagster_event and event.dagster_event.event_type_value == "STEP_FAILURE":
            error, messages = event.dagster_event.event_specific_data.error, []
            while error is not None:
                messages.append(str(error.message))
                error = error.cause
            return "\n".join(messages)
    raise AssertionError(f"run {run_id} has no step failure")


def landed_files(home: ClinauditHome) -> dict[Path, bytes]:
    """Every landed file of the study and its bytes (landing must never change)."""
    root = home.landing / STUDY.landing_dir
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
