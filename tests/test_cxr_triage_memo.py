"""Study cxr_triage: the operations memo from a synthetic audit bundle (no images, no Dagster)."""

from __future__ import annotations

import dataclasses
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cxr_triage_fixtures import scored_table, small_workload
from system_tools import require_tool

from clinaudit.audit.records import ModelRef, TableSet
from clinaudit.reporting.package import AuditStamp
from clinaudit.reporting.provenance import AuditBundle, Provenance
from clinaudit.reporting.report_figures import write_figures
from clinaudit.studies.cxr_triage.certify import certify_triage
from clinaudit.studies.cxr_triage.decisions import decide_triage
from clinaudit.studies.cxr_triage.evidence import evidence_tableset
from clinaudit.studies.cxr_triage.memo import build_memo_view, triage_memo
from clinaudit.studies.cxr_triage.monitoring import monitoring_plan
from clinaudit.studies.cxr_triage.throughput import simulate_throughput


def _bundle(scored, policy) -> AuditBundle:
    cert = certify_triage(scored, policy, seed=0)
    thr = simulate_throughput(cert.rows[cert.rows["split"] == "pile"], policy, seed=0)
    evidence = evidence_tableset(
        cert, thr, simulated=True, left_out={}, settings={"seed": 0}, policy=policy
    )
    decided, criteria = decide_triage(
        cert, policy, backlog=evidence["backlog_audit"], monitor=evidence["reread_monitor"]
    )
    plan = monitoring_plan(
        cert, policy, cleared_per_day=200.0, mode=str(decided["mode"].iloc[0]), n_sims=100
    )
    model = ModelRef(
        study="cxr_triage", kind="image_multilabel", mode="embedded", identity="ab" * 32,
        source="synthetic", targets=("abnormal", "critical"),
        thresholds={"abnormal": 0.5, "critical": 0.5}, threshold_source="test",
        card={"architecture": "synthetic logits"},
    )  # fmt: skip
    return AuditBundle(
        study="cxr_triage",
        title="t",
        evidence=evidence,
        mitigations={},
        decisions=TableSet({"decisions": decided, "criteria": criteria}),
        monitoring=TableSet({"plan": plan}),
        cohort=scored.head(0),
        quarantine={},
        policy=policy,
        model=model,
        provenance=Provenance({"cxr_triage/main/dev-0001": "cd" * 32}, True, ("main",)),
    )


STAMP = AuditStamp(
    audit_id="20261202T070000Z-test",
    now=datetime(2026, 12, 2, 7, tzinfo=UTC),
    generated_at="2026-12-02T07:00:00Z",
    code_version="clinaudit test",
    signer="CN=test",
    development_signature=True,
)


@pytest.fixture(scope="module")
def go_bundle() -> AuditBundle:
    return _bundle(scored_table(), small_workload())


def test_page_one_has_the_decision_the_numbers_and_the_must_not_list(go_bundle) -> None:
    view = build_memo_view(go_bundle, STAMP)
    assert view.decision == "GO" and view.mode == "priority + auto-clear"
    kpis = [row[0].text for row in view.kpis.rows]
    assert kpis[0] == "Certified sensitivity" and "Days to clear 5,000 backlog studies" in kpis
    assert "≥ 99.0% with probability ≥ 95%" in view.kpis.rows[0][1].text
    assert any("Never to de-prioritise the uncertain bucket" in b for b in view.must_not)
    assert any("under 18 years" in b for b in view.must_not)
    assert "Double effective radiologist throughput" in view.headline
    html = triage_memo(go_bundle, STAMP).html
    assert html.count("SIMULATED DATA") >= 1
    assert "resampled (with replacement) to 5,000" in html  # the settings the run used
    assert "1,080 reads a day" in html


def test_priority_only_memo_describes_the_priority_policy() -> None:
    bundle = _bundle(scored_table(1, n=1500, pile=300), small_workload())
    view = build_memo_view(bundle, STAMP)
    assert view.decision == "CONDITIONAL GO" and view.mode == "priority ordering only"
    assert "none: no threshold could be certified" in view.kpis.rows[0][1].text
    assert any("no auto-clear" in c for c in view.conditions)


def test_memo_pdf_is_three_pages_then_appendix_each_banded(go_bundle, tmp_path: Path) -> None:
    from weasyprint import HTML

    pdftotext = require_tool("pdftotext", "poppler-utils")
    content = triage_memo(go_bundle, STAMP)
    view = build_memo_view(go_bundle, STAMP)
    write_figures(view.figures, tmp_path)
    document = HTML(string=content.html, base_url=str(tmp_path)).render()
    pdf = tmp_path / "memo.pdf"
    document.write_pdf(pdf)
    out = subprocess.run(
        [pdftotext, "-layout", str(pdf), "-"], check=True, capture_output=True, text=True
    ).stdout
    pages = [p for p in out.split("\f") if p.strip()]
    starts = [k for k, p in enumerate(pages) if re.search(r"^\s*A Methods", p, re.M)]
    assert starts == [3], [p[:200] for p in pages]  # pages 1-3 are the memo, then appendices
    assert "1 Decision" in pages[0] and "What the model must not be used for" in pages[0]
    assert "2 Throughput" in pages[1] and "3 Calibration" in pages[2]
    for k, text in enumerate(pages, start=1):
        assert "SIMULATED DATA" in text and f"Page {k} of {len(pages)}" in text


def test_the_backlog_audit_sample_is_sized_by_the_labelling_plan(go_bundle) -> None:
    sample = go_bundle.evidence["audit_sample"]
    plan = go_bundle.evidence["label_plan"].iloc[0]
    pile = go_bundle.evidence["rows"].query("split == 'pile'")
    assert len(sample) == min(int(plan["studies"]), len(pile))
    assert sample["image_id"].is_unique and set(sample["image_id"]) <= set(pile["image_id"])
    html = triage_memo(go_bundle, STAMP).html
    assert f"A random sample of {len(sample):,} backlog studies" in html
    assert sample["image_id"].iloc[0] not in html  # image ids stay in the evidence tables


def test_a_monitor_alarm_puts_the_fifo_fallback_on_page_one_and_the_reads_in_table_c2() -> None:
    from cxr_triage_fixtures import with_reads

    scored = with_reads(scored_table(), audit=1200, reread=2000, planted_abnormal=0.3, seed=2)
    bundle = _bundle(scored, small_workload())
    view = build_memo_view(bundle, STAMP)
    monitor = bundle.evidence["reread_monitor"].iloc[0]
    assert view.decision == "CONDITIONAL GO" and view.mode == "FIFO fallback"
    assert any(f"alarm on {monitor['alarm_date']}" in r for r in view.reasons)
    cells = {row[0].text: row[2].text for row in view.backlog.rows}
    assert cells["Audit sample read"].endswith("read abnormal")
    assert f"alarm on {monitor['alarm_date']}" in cells["Re-read monitor"]
    html = triage_memo(bundle, STAMP).html
    assert "Table C.2" in html and "1,200 audit-sample reads have landed" in html
    # With auto-clear off, the operations numbers are FIFO's.
    assert "(FIFO, no triage)" in html


def test_the_memo_states_the_gain_and_the_settings_both_arms_were_trained_with() -> None:
    bundle = _bundle(scored_table(), small_workload())
    row = {"label": "abnormal", "delong_ci_low": 0.13, "delong_ci_high": 0.21}
    for metric, (est, lo, hi) in {
        "auroc_transfer": (0.918, 0.889, 0.945),
        "auroc_scratch": (0.744, 0.697, 0.790),
        "auroc_difference": (0.175, 0.129, 0.215),
    }.items():
        row |= {metric: est, f"{metric}_ci_low": lo, f"{metric}_ci_high": hi}
    settings = {
        "architecture": "resnet10t", "input_size": 160, "epochs": 3, "epochs_scratch": 3,
        "batch_size": 32, "trainable": "last_block", "trainable_weights": 3_674_114, "lr": 1e-3,
        "scratch_lr": 1e-3, "n_train": 833, "n_val": 160, "selected_epoch": 2,
        "selected_epoch_scratch": 2,
    }  # fmt: skip
    model = dataclasses.replace(
        bundle.model,
        facts={"transfer_vs_scratch": [row], "backbone": "the vendor", "fine_tuning": settings},
    )
    text = re.sub(r"\s+", " ", triage_memo(dataclasses.replace(bundle, model=model), STAMP).html)
    assert "fine-tuned from the vendor" in text
    assert "gain 0.175 (0.129–0.215) (paired patient bootstrap" in text
    assert (
        "both arms resnet10t at 160 px, 833 training studies (160 more chose the epoch), 3 epochs "
        "in batches of 32; fine-tuned: the last block and the head at lr 0.001; from scratch: "
        "every weight at lr 0.001." in text
    )
