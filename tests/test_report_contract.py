"""The report contract every registered study's package must keep (parametrized over the registry).

On each study's tiny demo run (``conftest.tiny_demo``): the latest package verifies (signature and
manifest hashes); the SIMULATED band and "Page k of n" are on every page; the page count is in the
study's budget; the HTML is deterministic for the same audit; a package is refused when a stage ran
under another policy; no identifier of the landed data reaches the report text; and the manifest
carries the audit summary the committee portal lists and compares.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from system_tools import require_tool

from clinaudit.assets.audit_stages import stored_bundle
from clinaudit.assets.resources import ClinauditHome
from clinaudit.reporting.audit_summary import SUMMARY_KEY, AuditSummary
from clinaudit.reporting.kit import SIMULATED_BAND
from clinaudit.reporting.package import stamp_audit
from clinaudit.reporting.provenance import PolicyMismatchError
from clinaudit.reporting.signing import ensure_dev_signer
from clinaudit.reporting.study_package import package_inputs, write_study_package
from clinaudit.reporting.verify import verify_pdf
from clinaudit.sources.landing import read_manifest, scan_landing
from clinaudit.studies import Study, get_study, registered_studies

STUDIES = [s.name for s in registered_studies()]
NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture(scope="module", params=STUDIES)
def run(request: pytest.FixtureRequest, tiny_demo) -> tuple[Study, ClinauditHome, Path]:
    """A study, its tiny demo run directory and its latest signed package."""
    study = get_study(request.param)
    home = ClinauditHome(root=str(tiny_demo(study.name)))
    packages = sorted(p for p in (home.reports / study.name).iterdir() if p.is_dir())
    # Two demo runs: two packages, plus one when the first run landed a follow-up batch (a
    # study overriding land_demo_followup audits again after it); none is replaced.
    later = type(study).land_demo_followup is not Study.land_demo_followup
    assert len(packages) == 2 + later, "every demo audit writes a package; earlier ones are kept"
    return study, home, packages[-1]


def _pages(pdf: Path) -> list[str]:
    pdftotext = require_tool("pdftotext", "poppler-utils")
    text = subprocess.run(
        [pdftotext, "-layout", str(pdf), "-"], capture_output=True, text=True, check=True
    ).stdout
    return [p for p in text.split("\f") if p.strip()]


def test_package_verifies(run) -> None:
    _, _, package = run
    verdict = verify_pdf(package / "report.pdf", package_dir=package)
    assert verdict.ok, [c for c in verdict.checks if not c.ok]
    assert verdict.is_development  # the demo signs with the development key, and says so


def test_simulated_band_and_page_numbers_on_every_page_within_budget(run) -> None:
    study, _, package = run
    pages = _pages(package / "report.pdf")
    low, high = study.page_budget
    assert low <= len(pages) <= high, f"{study.name}: {len(pages)} pages, budget {low}-{high}"
    for k, text in enumerate(pages, start=1):
        assert SIMULATED_BAND in text, f"page {k} lacks the SIMULATED band"
        assert f"Page {k} of {len(pages)}" in text
        assert package.name in text  # the audit id heads every page


def test_html_is_deterministic_for_the_same_audit(run) -> None:
    study, home, _ = run
    bundle = stored_bundle(home, study)
    signer = ensure_dev_signer(home.key_dir)
    stamp = stamp_audit(study.name, package_inputs(bundle, study.policy_attachment), signer, NOW)
    first, second = study.report(bundle, stamp), study.report(bundle, stamp)
    assert first.html == second.html
    assert first.figures == second.figures and first.attachments == second.attachments
    assert stamp.audit_id in first.html and SIMULATED_BAND in first.html
    for path in first.figures:  # every figure the HTML refers to is in the package
        assert f'src="{path}"' in first.html


def test_a_stage_under_another_policy_is_refused(run, tmp_path: Path) -> None:
    study, home, _ = run
    edited = tmp_path / "policy.yaml"
    edited.write_text(study.shipped_policy().read_text() + "# edited\n", encoding="utf-8")
    bundle = stored_bundle(home, study, policy=study.load_policy(edited))
    before = sorted((home.reports / study.name).iterdir())
    with pytest.raises(PolicyMismatchError, match=f"re-materialize {study.name}/evidence"):
        write_study_package(
            bundle,
            lambda stamp: study.report(bundle, stamp),
            policy_name=study.policy_attachment,
            signer=ensure_dev_signer(home.key_dir),
            reports_root=home.reports,
        )
    assert sorted((home.reports / study.name).iterdir()) == before  # nothing written


def _identifiers(study: Study, home: ClinauditHome) -> set[str]:
    """Values of the study's identifier columns in every landed label table."""
    values: set[str] = set()
    for ref in scan_landing(home.landing, study.landing_dir).ready():
        table_file = ref.path / read_manifest(ref.path).label_file
        read = pd.read_parquet if table_file.suffix == ".parquet" else pd.read_csv
        table = read(table_file)
        for column in set(study.identifiers) & set(table.columns):
            values |= {str(v) for v in table[column].dropna()}
    return {v for v in values if len(v) >= 4}


def test_no_identifier_of_the_landed_data_reaches_the_report(run) -> None:
    study, home, package = run
    identifiers = _identifiers(study, home)
    assert identifiers, f"{study.name}: no identifier column {study.identifiers} was landed"
    text = "\n".join(_pages(package / "report.pdf"))
    leaked = sorted(i for i in identifiers if i in text)
    assert not leaked, leaked[:5]


def test_manifest_carries_the_audit_summary(run) -> None:
    study, home, package = run
    manifest = json.loads((package / "manifest.json").read_text(encoding="utf-8"))
    summary = AuditSummary.from_json(manifest["metadata"][SUMMARY_KEY])
    bundle = stored_bundle(home, study)
    assert summary.decisions == study.decision_summary(bundle.decisions)
    assert summary.criteria, f"{study.name} declares no criterion behind its decisions"
    assert {c.where for c in summary.criteria} <= set(summary.decisions)
    assert summary.policy == bundle.policy.identity()
    assert summary.model["identity"] == bundle.model.identity
    assert set(summary.partitions) == set(bundle.provenance.partitions)
    assert manifest["metadata"]["run_id"]  # the Dagster run the portal links to


def test_every_study_declares_what_the_contract_needs() -> None:
    for study in registered_studies():
        assert study.identifiers, study.name
        low, high = study.page_budget
        assert 1 <= low <= high, study.name
        assert dataclasses.is_dataclass(study.ingest_options), study.name
