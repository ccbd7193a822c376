"""The sepsis_ews report: every section with real numbers, no missing-value words, 5-9 pages."""

from __future__ import annotations

import dataclasses
import io
import os
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from clinaudit.audit.types import AuditInputError
from clinaudit.models.tabular import predict_stays, train_tabular_vendor_model
from clinaudit.reporting.kit import SIMULATED_BAND, fmt_ci
from clinaudit.reporting.report_figures import write_figures
from clinaudit.sources.sepsis_simulator import (
    SepsisScale,
    simulate_network,
    simulate_vendor_population,
)
from clinaudit.studies import get_study
from clinaudit.studies.sepsis_ews.report import (
    SepsisProvenance,
    build_sepsis_view,
    render_sepsis_html,
)
from clinaudit.studies.sepsis_ews.result import run_sepsis_audit
from clinaudit.studies.sepsis_ews.schema import ERROR_COLUMNS, validate_stays

SECTIONS = ("summary", "cohort", "discrimination", "calibration", "fairness", "mitigation",
            "monitoring", "appendix")  # fmt: skip
PROVENANCE = SepsisProvenance(
    audit_id="20260101T000000Z-0123abcd",
    generated_at="2026-01-01T00:00:00Z",
    input_batches={f"sepsis_ews/hosp_a/2024-{m:02d}": f"{m:02d}" * 32 for m in range(1, 13)},
    model_identity="ab" * 32,
    code_version="clinaudit test",
    signer="CN=test signer",
    development_signature=True,
)


def load_sepsis_policy():
    return get_study("sepsis_ews").load_policy()


@pytest.fixture(scope="module")
def inputs():
    model = train_tabular_vendor_model(simulate_vendor_population("tiny", seed=0).stays, seed=0)
    stays, _ = validate_stays(simulate_network(SepsisScale("small", 2_000, 1_000), seed=0).stays)
    preds = predict_stays(model, stays)
    policy = load_sepsis_policy()
    audited = run_sepsis_audit(stays, preds, card=model.card, policy=policy, n_boot=60)
    # Through Parquet and back, as the pipeline stores the tables (dtypes can change on the way).
    result = replace(
        audited,
        **{
            f.name: _roundtrip(getattr(audited, f.name))
            for f in dataclasses.fields(audited)
            if isinstance(getattr(audited, f.name), pd.DataFrame)
        },
    )
    facts = {**model.card, "mode": "embedded", "model_sha256": model.model_sha256,
             "package_sha256": model.package_sha256}  # fmt: skip
    quarantine = pd.DataFrame(
        [["hosp_b", "2024-02", "hosp_b/2024-02/stays.csv", 7, "age", "negative_value",
          "age -3 is negative", "correct the value", "error", "-3", ""]],
        columns=list(ERROR_COLUMNS),
    )  # fmt: skip
    kept = (
        stays.assign(batch=stays["admit_month"])
        .groupby("hospital")
        .agg(n_batches=("batch", "nunique"), n_stays=("stay_id", "size"))
        .reset_index()
    )
    return result, kept, quarantine, facts, policy


def _roundtrip(frame: pd.DataFrame) -> pd.DataFrame:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return pd.read_parquet(io.BytesIO(buffer.getvalue()))


def _view(inputs, left_out=None, **changes):
    result, kept, quarantine, facts, policy = inputs
    result = replace(result, **changes) if changes else result
    return build_sepsis_view(
        result, kept=kept, quarantine=quarantine, model=facts, policy=policy,
        provenance=PROVENANCE, left_out=left_out,
    )  # fmt: skip


@pytest.fixture(scope="module")
def html(inputs) -> str:
    return render_sepsis_html(_view(inputs))


def _section(html: str, anchor: str) -> str:
    start = html.index(f'<section id="{anchor}"')
    return html[start : html.index("</section>", start)]


def _text(html: str) -> str:
    return re.sub(r"<[^>]+>", " ", html)


def test_every_section_shows_real_numbers(inputs, html) -> None:
    result = inputs[0]
    for anchor in SECTIONS:
        assert f'<section id="{anchor}"' in html, anchor
    summary = _section(html, "summary")
    assert result.recommendation in summary and "Conditions" in summary
    d = result.discrimination.query("attribute == 'overall'").iloc[0]
    auroc = fmt_ci(d["auroc"], d["auroc_ci_low"], d["auroc_ci_high"], 3)
    assert auroc in summary and auroc in _section(html, "discrimination")
    low = result.disadvantaged.set_index("attribute").loc["race_ethnicity"]
    assert f"{low['group']} patients have the lowest sensitivity" in summary
    cal = result.calibration.query("attribute == 'overall'").iloc[0]
    assert f"{cal['ece_width']:.3f}" in _section(html, "calibration")
    assert "figures/reliability.svg" in _section(html, "calibration")
    fairness = _section(html, "fairness")
    assert "Table 5.1" in fairness and "figures/group_rates.svg" in fairness
    mitigation = _section(html, "mitigation")
    attr = result.summary["mitigation_attribute"]
    assert f"across {attr}" in mitigation and "Disparate treatment" in mitigation
    gap = result.mitigation.query("quantity == 'tpr_gap' and method == 'group_thresholds'")
    assert f"{gap['before'].iloc[0]:.2f}" in mitigation
    monitoring = _section(html, "monitoring")
    assert "suspends" in monitoring and "switch the alerts off" in monitoring
    for item in result.monitoring["item"]:
        assert item in monitoring, item
    appendix = _section(html, "appendix")
    assert "TRIPOD+AI" in appendix and PROVENANCE.audit_id in appendix
    assert "sepsis_ews/hosp_a/2024-01"[len("sepsis_ews/") :] in appendix
    assert load_sepsis_policy().sha256 in appendix and "negative value" in _section(html, "cohort")


def test_no_missing_value_words(html) -> None:
    text = _text(html)
    for word in ("nan", "NaN", "N/A", "None", "inf"):
        assert not re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text), word
    assert not re.search(r"\d\.0 septic stays", text)  # counts print as integers


def test_simulated_band_only_for_simulated_data(inputs, html) -> None:
    assert SIMULATED_BAND in html
    result = inputs[0]
    real = render_sepsis_html(_view(inputs, summary={**result.summary, "simulated": False}))
    assert SIMULATED_BAND not in real and "All data are simulated" not in real


def test_same_inputs_same_html_and_figures(inputs, html) -> None:
    view = _view(inputs)
    assert render_sepsis_html(view) == html
    again = _view(inputs)
    assert [f.data for f in view.figures] == [f.data for f in again.figures]
    assert all(b"SIMULATED DATA" in f.data for f in view.figures)


def test_policy_of_another_text_is_refused(inputs) -> None:
    result, kept, quarantine, facts, policy = inputs
    other = replace(policy, sha256="0" * 64)
    with pytest.raises(AuditInputError, match="policy"):
        build_sepsis_view(result, kept=kept, quarantine=quarantine, model=facts, policy=other,
                          provenance=PROVENANCE)  # fmt: skip


def test_settings_printed_are_those_the_run_used(inputs, html) -> None:
    methods = _section(html, "appendix")
    assert "from 60 bootstrap resamples of stays" in methods  # the run's n_boot, not the policy's
    assert "1,000 bootstrap resamples" in methods  # the policy's, stated as the policy
    result = inputs[0]
    fewer = replace(result, settings={**result.settings, "min_pos": 7})
    assert "fewer than 7 septic" in render_sepsis_html(_view(inputs, settings=fewer.settings))
    # The drift flagging rule: the noise bound's draws and alpha the run used.
    assert "the 1 - 0.05/m quantile of a parametric bootstrap with B = 2,000 draws" in methods
    extra = {**result.settings["extra"], "psi_noise_draws": 500, "psi_noise_alpha": 0.01}
    other = render_sepsis_html(_view(inputs, settings={**result.settings, "extra": extra}))
    assert "1 - 0.01/m quantile of a parametric bootstrap with B = 500 draws" in other
    assert "flagged with probability at most 1%" in other
    assert "within the PSI that sampling noise alone reaches" in _section(html, "monitoring")


def test_hospitals_left_out_are_named(inputs, html) -> None:
    assert "left out of this audit" not in html
    why = "predictions are stale: 12 validated stays without a score (re-run the predictions)"
    named = render_sepsis_html(_view(inputs, left_out={"hosp_e": why}))
    appendix = _section(named, "appendix")
    assert "Hospitals left out of this audit" in appendix and why in appendix
    assert "hosp_e: " + why in _section(named, "cohort")


def _pdftotext() -> str:
    found = shutil.which("pdftotext")
    if found is None:
        message = "pdftotext is missing: install poppler-utils (make system-deps)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def test_pdf_has_five_to_nine_pages_each_banded(inputs, tmp_path: Path) -> None:
    from weasyprint import HTML

    pdftotext = _pdftotext()
    view = _view(inputs)
    write_figures(view.figures, tmp_path)
    document = HTML(string=render_sepsis_html(view), base_url=str(tmp_path)).render()
    pdf = tmp_path / "report.pdf"
    document.write_pdf(pdf)
    out = subprocess.run([pdftotext, "-layout", str(pdf), "-"], check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    pages = [p for p in out.split("\f") if p.strip()]
    assert 5 <= len(pages) <= 9 and len(pages) == len(document.pages)
    for k, text in enumerate(pages, start=1):
        assert "SIMULATED DATA" in text and f"Page {k} of {len(pages)}" in text
