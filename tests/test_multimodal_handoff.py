"""Study multimodal_triage: the clinical hand-off document from a synthetic audit bundle.

The pairs and the arms' probabilities are synthetic (no photos, no training, no Dagster); the
evidence, decision and monitoring plan are computed by the study's own stages under the shipped
policy with fewer bootstrap replicates, so the document is checked against real stage outputs.
"""

from __future__ import annotations

import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from system_tools import require_tool

from clinaudit.audit.records import ModelRef, TableSet
from clinaudit.reporting.kit import SIMULATED_BAND, fmt_ci, pct_ci
from clinaudit.reporting.package import AuditStamp
from clinaudit.reporting.provenance import AuditBundle, Provenance
from clinaudit.reporting.report_figures import write_figures
from clinaudit.studies.base import AuditData
from clinaudit.studies.multimodal_triage.decisions import TONE_ATTRIBUTE, decide_handoff
from clinaudit.studies.multimodal_triage.evidence import evidence_tableset
from clinaudit.studies.multimodal_triage.handoff import (
    TITLE,
    build_handoff_view,
    handoff_document,
)
from clinaudit.studies.multimodal_triage.handoff_skin_tone import DDI_ANCHOR
from clinaudit.studies.multimodal_triage.monitoring import monitoring_plan
from clinaudit.studies.multimodal_triage.policy import SHIPPED_POLICY, MultimodalPolicy

LABELS = ("ACK", "BCC", "MEL", "NEV", "SCC", "SEK")
CLINICS = {"city_clinic": 140, "uni_derm": 140, "rural_outreach": 120, "southside_clinic": 160}
IDENTITY = "ab" * 32
STAMP = AuditStamp(
    audit_id="20261202T070000Z-test",
    now=datetime(2026, 12, 2, 7, tzinfo=UTC),
    generated_at="2026-12-02T07:00:00Z",
    code_version="clinaudit test",
    signer="CN=test",
    development_signature=True,
)


def _policy(tmp: Path) -> MultimodalPolicy:
    """The shipped policy with fewer bootstrap replicates (fast) and everything else as shipped."""
    text = SHIPPED_POLICY.read_text(encoding="utf-8")
    text = text.replace("n_boot: 1000", "n_boot: 100").replace("n_boot: 500", "n_boot: 50")
    path = tmp / "policy.yaml"
    path.write_text(text, encoding="utf-8")
    return MultimodalPolicy.load(path)


def _clinic(name: str, n: int, rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    patients = [f"{name[:3]}{k // 2:04d}" for k in range(n)]
    category = rng.choice(LABELS, size=n)
    fz = rng.integers(1, 7, size=n).astype(float)
    fz[rng.random(n) < 0.03] = np.nan
    fz_b = np.clip(fz + rng.choice([-1, 0, 0, 1], size=n), 1, 6)
    table = pd.DataFrame(
        {
            "image_id": [f"{name}-{k:05d}" for k in range(n)],
            "batch": "b-0001",
            "site": name,
            "patient": patients,
            "category": category,
            "malignant": np.isin(category, ["BCC", "MEL", "SCC"]),
            "note": np.where(rng.random(n) < 0.3, "", "itchy lesion, grew recently"),
            "fitzpatrick_a": fz,
            "fitzpatrick_b": fz_b,
            "ita": 60.0 - 15.0 * np.nan_to_num(fz, nan=3.0) + rng.normal(0, 4, size=n),
        }
    )
    truth = np.array([LABELS.index(c) for c in category])
    frames = []
    for arm, skill in (("image_only", 1.2), ("text_only", 0.9), ("late_fusion", 2.0),
                       ("early_fusion", 1.7)):  # fmt: skip
        for removed in (0.0, 0.3, 0.7):
            logits = rng.normal(0, 1, size=(n, len(LABELS)))
            logits[np.arange(n), truth] += skill * (1 - 0.3 * removed)
            p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
            frame = pd.DataFrame(p, columns=[f"p_{c}" for c in LABELS])
            frame.insert(0, "notes_removed", removed)
            frame.insert(0, "arm", arm)
            frame.insert(0, "image_id", table["image_id"].to_numpy())
            frames.append(frame)
    pred = pd.concat(frames, ignore_index=True).assign(model_sha256=IDENTITY)
    return table, pred


def _model() -> ModelRef:
    training = {
        arm: {"arm": arm, "budget": {"epochs": 4, "batch_size": 16, "steps": 40, "samples": 640},
              "best_epoch": 3, "components": [], "history": [], "train_seconds": secs,
              "n_parameters": 1000 + k, "device": "cpu"}
        for k, (arm, secs) in enumerate((("image_only", 12.5), ("text_only", 3.25),
                                         ("early_fusion", 17.75)))
    }  # fmt: skip
    training["late_fusion"] = {
        "arm": "late_fusion", "budget": {"epochs": 0, "batch_size": 0, "steps": 0, "samples": 0},
        "best_epoch": 0, "components": ["image_only", "text_only"], "history": [],
        "train_seconds": 0.04, "n_parameters": 2001, "device": "cpu",
    }  # fmt: skip
    return ModelRef(
        study="multimodal_triage", kind="image_text_multiclass", mode="embedded",
        identity=IDENTITY, source="synthetic", targets=(), thresholds={},
        threshold_source="none", card={"model": "synthetic arms", "source": "synthetic arms"},
        facts={
            "arms": {a: {"sha256": f"{k:02d}" * 32, "path": "/nowhere"}
                     for k, a in enumerate(training)},
            "deployed_arm": "late_fusion", "training": training,
            "settings": {"epochs": 4, "batch_size": 16, "lr": 0.002, "image_size": 64},
            "lineage": {"clinics": ["city_clinic", "rural_outreach", "uni_derm"],
                        "n_train": 240, "n_validation": 50, "trained_on": "development clinics"},
            "note_removal": [0.0, 0.3, 0.7], "reused": False, "train_seconds_total": 33.5,
            "seed": 0,
        },
    )  # fmt: skip


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> AuditBundle:
    policy = _policy(tmp_path_factory.mktemp("policy"))
    rng = np.random.default_rng(7)
    parts = {c: _clinic(c, n, rng) for c, n in CLINICS.items()}
    batches = {c: pd.DataFrame({"status": ["ingested"], "simulated": [True]}) for c in CLINICS}
    model = _model()
    data = AuditData(
        validated={c: p[0] for c, p in parts.items()},
        predictions={c: p[1] for c, p in parts.items()},
        model=model,
        batches=batches,
    )
    evidence = evidence_tableset(data, policy)
    decided, criteria = decide_handoff(evidence, policy)
    decisions = TableSet({"decisions": decided, "criteria": criteria})
    plan = monitoring_plan(evidence, decisions, policy)
    return AuditBundle(
        study="multimodal_triage", title=TITLE, evidence=evidence, mitigations={},
        decisions=decisions, monitoring=TableSet({"plan": plan}), cohort=pd.DataFrame(),
        quarantine={}, policy=policy, model=model,
        provenance=Provenance({f"multimodal_triage/{c}/b-0001": "cd" * 32 for c in CLINICS},
                              True, tuple(CLINICS)),
    )  # fmt: skip


def _flat(html: str) -> str:
    return re.sub(r"\s+", " ", html)


def test_page_one_numbers_are_the_evidence_numbers(bundle: AuditBundle) -> None:
    view = build_handoff_view(bundle, STAMP)
    decided = bundle.decisions["decisions"].iloc[0]
    assert view.decision == decided["decision"] and view.mode == decided["mode"]
    head = bundle.evidence["headline"].set_index(["scope", "metric"])
    kpis = {row[0].text: row for row in view.kpis.rows}
    f1 = head.loc[("held_out", "macro_f1")]
    assert kpis["Macro F1"][1].text == (
        f"{fmt_ci(f1['estimate'], f1['ci_low'], f1['ci_high'])}, n={int(f1['n'])}"
    )
    sens = head.loc[("test", "malignant_sensitivity")]
    assert kpis["Malignant sensitivity"][2].text.startswith(
        pct_ci(sens["estimate"], sens["ci_low"], sens["ci_high"])
    )
    cov = head.loc[("held_out", "coverage")]
    assert kpis["Coverage"][1].text.startswith(pct_ci(cov["estimate"], cov["ci_low"],
                                                      cov["ci_high"]))  # fmt: skip
    assert any(b.startswith("Not for autonomous diagnosis") for b in view.must_not)
    assert any("outside the six categories (ACK, BCC, MEL, NEV, SCC, SEK)" in b
               for b in view.must_not)  # fmt: skip
    assert any(b.startswith("Not for children") for b in view.must_not)


def test_each_condition_is_one_whole_item(bundle: AuditBundle) -> None:
    view = build_handoff_view(bundle, STAMP)
    decided = bundle.decisions["decisions"].iloc[0]
    assert decided["decision"] == "CONDITIONAL GO" and view.conditions
    # One bullet per condition: a tone group's condition is not cut in two at a "; ".
    tone = bundle.evidence["tone_audit"]
    lacking = tone[(tone["attribute"] == TONE_ATTRIBUTE) & (tone["verdict"] != "gap")
                   & ~tone["verdict"].str.startswith("no gap")]  # fmt: skip
    for r in lacking.itertuples():
        item = next(c for c in view.conditions if c.startswith(f"Fitzpatrick {r.group}:"))
        assert item.endswith("until enough cases are audited"), item
    assert view.conditions[-1].startswith("clinicians review")


def test_insufficient_evidence_is_never_rendered_as_pass(bundle: AuditBundle) -> None:
    view = build_handoff_view(bundle, STAMP)
    tone = next(s for s in view.sections if s.anchor == "skin-tone")
    verdicts = [row[-1] for t in tone.tables[:2] for row in t.rows]
    audit = bundle.evidence["tone_audit"]
    assert len(verdicts) == len(audit)  # every group of every attribute is shown
    insufficient = [c for c in verdicts if c.text.startswith("insufficient evidence")]
    assert insufficient, "the small synthetic groups must include insufficient evidence"
    assert all(c.css == "warn" for c in insufficient)
    assert all(c.css == "pass" for c in verdicts if c.text.startswith("no gap"))
    assert all(c.css == "fail" for c in verdicts if c.text.startswith("gap"))
    # Groups the decision reads that lack evidence are named in the must-not list.
    a = audit[(audit["attribute"] == TONE_ATTRIBUTE) & (audit["group"] != "not recorded")]
    lacking = a[a["verdict"].str.startswith("insufficient")]
    bullet = next(b for b in view.must_not if "Fitzpatrick groups" in b)
    for r in lacking.itertuples():
        assert f"{r.group} (insufficient evidence, n={r.n})" in bullet


def test_the_ddi_anchor_says_not_comparable_and_agreement_is_quoted(bundle) -> None:
    text = _flat(handoff_document(bundle, STAMP).html)
    hi, lo = DDI_ANCHOR
    assert f"AUC {hi:.2f} on Fitzpatrick I-II vs {lo:.2f} on V-VI" in text
    assert "from simulated data and are not comparable to that published number" in text
    assert "agreed exactly on only 47.9% of images" in text
    exact = bundle.evidence["annotators"].set_index("scope").loc["held-out clinic", "exact"]
    assert f"held-out clinic: exact {100 * exact:.1f}%" in text


def test_deferral_page_states_the_rule_and_whether_the_guarantee_held(bundle) -> None:
    rule = bundle.evidence["deferral_rule"].iloc[0]
    out = bundle.evidence["deferral_outcomes"].set_index("scope").loc["held_out"]
    text = _flat(handoff_document(bundle, STAMP).html)
    if bool(rule["certified"]):
        assert f"The threshold {rule['threshold']:.4f} was certified on" in text
        assert "At the held-out clinic the guarantee " in text
        err = pct_ci(out["accepted_error"], out["accepted_error_ci_low"],
                     out["accepted_error_ci_high"])  # fmt: skip
        assert f"error of accepted outputs {err}" in text
    else:
        assert "No threshold could be certified" in text
    sel = bundle.evidence["selective"].set_index(["scope", "score"])
    assert f"({sel.loc[('held_out', 'review score'), 'aurc']:.3f} vs" in text


def test_fusion_comparison_and_the_settings_the_run_used(bundle: AuditBundle) -> None:
    text = _flat(handoff_document(bundle, STAMP).html)
    fvs = bundle.evidence["fusion_vs_single"]
    best = fvs[(fvs["scope"] == "held_out") & fvs["best_single"] & (fvs["metric"] == "macro_f1")
               & (fvs["fusion_arm"] == "late_fusion")].iloc[0]  # fmt: skip
    assert f"The best single modality, chosen on the validation split before any test set was " \
           f"read, is {best['single_arm']}." in text  # fmt: skip
    assert fmt_ci(best["difference"], best["ci_low"], best["ci_high"], 3) in text
    # Appendix A: the budget and per-arm seconds from the model facts, not defaults.
    assert "epochs 4, batch_size 16, lr 0.002, image_size 64" in text
    assert "4 epochs x 16 (40 steps, 640 samples)" in text
    assert "12.50 s" in text and "17.75 s" in text and "33.5 s" in text
    assert "combines image_only + text_only (no own training)" in text


def test_attachments_and_metadata(bundle: AuditBundle) -> None:
    content = handoff_document(bundle, STAMP)
    for name in ("tone_audit.csv", "deferral_rule.csv", "deferral_outcomes.csv",
                 "fusion_vs_single.csv", "discrimination.csv", "decision.csv",
                 "monitoring_plan.csv"):  # fmt: skip
        assert name in content.attachments
    criteria = pd.read_csv(pd.io.common.BytesIO(content.attachments["decision.csv"]))
    assert list(criteria["criterion"]) == list(bundle.decisions["criteria"]["criterion"])
    decided = bundle.decisions["decisions"].iloc[0]
    assert content.metadata == {"decision": decided["decision"], "mode": decided["mode"]}
    assert set(content.figures) == {"figures/risk_coverage.svg"}
    assert 'src="figures/risk_coverage.svg"' in content.html
    assert content.html == handoff_document(bundle, STAMP).html  # deterministic


def test_pdf_is_five_pages_then_appendix_each_banded(bundle, tmp_path: Path) -> None:
    from weasyprint import HTML

    pdftotext = require_tool("pdftotext", "poppler-utils")
    content = handoff_document(bundle, STAMP)
    write_figures(build_handoff_view(bundle, STAMP).figures, tmp_path)
    pdf = tmp_path / "handoff.pdf"
    HTML(string=content.html, base_url=str(tmp_path)).render().write_pdf(pdf)
    out = subprocess.run(
        [pdftotext, "-layout", str(pdf), "-"], check=True, capture_output=True, text=True
    ).stdout
    pages = [p for p in out.split("\f") if p.strip()]
    starts = [k for k, p in enumerate(pages) if re.search(r"^\s*A Model and training", p, re.M)]
    assert starts == [5], [p[:300] for p in pages]  # pages 1-5 are the hand-off
    titles = ("1 Decision", "2 When the model is reliable", "3 Where deferral fires",
              "4 Known biases by skin tone", "5 The data and the monitoring plan")  # fmt: skip
    for page, title in zip(pages, titles, strict=False):
        assert title in page
    assert "What the model must not be used for" in pages[0]
    assert len(pages) <= 12
    for k, text in enumerate(pages, start=1):
        assert SIMULATED_BAND in text and f"Page {k} of {len(pages)}" in text
