"""GX label suite, de-identification scan and the key-file resource."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clinaudit.assets.resources import ClinauditHome, ensure_secret_file
from clinaudit.sources.cxr_labels import FINDINGS
from clinaudit.validation.gx_suite import LabelSuiteConfig, run_label_suite
from clinaudit.validation.privacy import phi_leaks


def _table(n: int = 60, prevalence: float = 0.1, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "image_id": [f"im{i}" for i in range(n)],
            "patient_pseudonym": [f"{i:016x}" for i in range(n)],
            "age": rng.uniform(20, 90, n),
            "sex": rng.choice(["M", "F"], n),
        }
    )
    for f in FINDINGS:
        df[f] = (rng.random(n) < prevalence).astype(float)
    return df


def test_label_suite_passes_on_plausible_table() -> None:
    outcome = run_label_suite(_table())
    assert outcome.success, outcome.to_markdown()
    assert len(outcome.results) > 30


def test_label_suite_names_failing_columns() -> None:
    df = _table()
    df.loc[:9, "age"] = 150.0
    df["Hernia"] = 1.0  # every image positive: an export error, not a population
    df.loc[:20, "Mass"] = np.nan  # 35% unlabelled
    outcome = run_label_suite(df, LabelSuiteConfig(min_rows=10))
    failed = {(r.expectation, r.column) for r in outcome.failures}
    assert ("expect_column_values_to_be_between", "age") in failed
    assert ("expect_column_mean_to_be_between", "Hernia") in failed
    assert ("expect_column_values_to_not_be_null", "Mass") in failed
    assert "**FAIL**" in outcome.to_markdown()
    small = run_label_suite(_table(n=5), LabelSuiteConfig(min_rows=20))
    assert ("expect_table_row_count_to_be_between", None) in {
        (r.expectation, r.column) for r in small.failures
    }


def test_phi_scan() -> None:
    clean = _table()
    assert phi_leaks(clean) == []
    leaky = clean.assign(patient_id="123", note="DOE^JANE")
    leaky.loc[0, "patient_pseudonym"] = "not-a-hash"
    problems = " ".join(phi_leaks(leaky))
    assert "'patient_id' is PHI" in problems
    assert "not 16-hex" in problems
    assert "'note' holds 60 values shaped like person names" in problems


def test_secret_file_created_once_with_0600(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "k.key"
    first = ensure_secret_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_secret_file(path) == first and len(first) == 32
    path.write_bytes(b"short")
    with pytest.raises(ValueError, match="holds 5 bytes"):
        ensure_secret_file(path)


def test_home_paths_and_key_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLINAUDIT_PSEUDONYM_KEY", raising=False)
    home = ClinauditHome(root=str(tmp_path), landing_dir=str(tmp_path / "elsewhere"))
    assert home.landing == tmp_path / "elsewhere"
    assert home.reports == tmp_path / "reports"
    dev_key = home.pseudonym_secret()
    assert (tmp_path / "keys" / "pseudonym.key").read_bytes() == dev_key
    monkeypatch.setenv("CLINAUDIT_PSEUDONYM_KEY", "00ff")
    assert home.pseudonym_secret() == b"\x00\xff"
    assert home.pseudonym_key_source() == "CLINAUDIT_PSEUDONYM_KEY"
    monkeypatch.setenv("CLINAUDIT_PSEUDONYM_KEY", "text-key")
    assert home.pseudonym_secret() == b"text-key"
    monkeypatch.delenv("CLINAUDIT_PSEUDONYM_KEY")
    assert home.pseudonym_key_source().startswith("development key file")


def test_label_suite_on_a_chexpert_style_table() -> None:
    """Findings a CheXpert export does not label are listed, not failed; no-finding share counts
    only images with at least one label."""
    df = _table()
    for f in ("Infiltration", "Mass", "Nodule", "Emphysema", "Fibrosis", "Pleural_Thickening"):
        df[f] = np.nan
    outcome = run_label_suite(df)
    assert outcome.success, outcome.to_markdown()
    assert set(outcome.unlabelled) == {
        "Infiltration",
        "Mass",
        "Nodule",
        "Emphysema",
        "Fibrosis",
        "Pleural_Thickening",
    }
