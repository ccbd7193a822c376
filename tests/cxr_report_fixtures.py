"""Inputs of the multisite_cxr report for the tests: base audit tables and contract A/B/C tables.

Base audit tables come from the real audit core on a small simulated scored frame; the
recalibration, re-training, decision, criteria and monitoring tables (contracts A/B/C of the study)
are synthetic, with exactly the contract columns and the conventions of the study's
``decisions`` / ``monitoring`` modules. No test reads the repository's ``var/``.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
from cxr_contract_fixtures import (
    REF_GROUP,
    SITES,
    criteria_table,
    decisions_table,
    monitoring_table,
    recalibration_table,
    retraining_table,
)

from clinaudit.audit.drift import DriftConfig, drift_table
from clinaudit.audit.reference_audit import SiteAuditConfig, run_site_audit
from clinaudit.sources.cxr_labels import FINDINGS
from clinaudit.studies.multisite_cxr.policy import describe_policy, load_policy
from clinaudit.studies.multisite_cxr.report import (
    CxrProvenance,
    CxrReportInputs,
    PolicyInfo,
    render_cxr_html,
    report_environment,
    write_figures,
)
from clinaudit.validation.cohort import cohort_summary
from clinaudit.validation.errors import QuarantineRecord, records_to_frame
from clinaudit.validation.quality import QUALITY_FEATURES

REPO = Path(__file__).resolve().parents[1]
POLICY_FILE = REPO / "studies" / "multisite_cxr" / "policy.yaml"
REF = "vendor_dev"
FAKE_MRN = "MRN-778899"
MISSING_WORDS = re.compile(r"\bN/A\b|\bn/a\b|\bnan\b|\bNaN\b|\bNone\b|\bnull\b")


# ---------------------------------------------------------------- base tables (real audit core)
def _site_rows(rng: np.random.Generator, group: str, n: int, skill: float, bias: float) -> dict:
    prev = np.linspace(0.2, 0.03, len(FINDINGS))
    cols: dict[str, np.ndarray] = {}
    for k, f in enumerate(FINDINGS):
        y = (rng.random(n) < prev[k]).astype(float)
        if group == "site_b" and f == "Hernia":  # one cell with exactly 3 positives
            y[:] = 0.0
            y[:3] = 1.0
        logit = -2.0 + skill * y + rng.normal(0.0, 1.0, n) + bias
        cols[f] = y
        cols[f"score_{f}"] = 1.0 / (1.0 + np.exp(-logit))
    return cols


def _scored_frame(seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    spec = {
        REF_GROUP: (360, 3.5, 0.0),
        "site_a": (240, 3.4, 0.0),
        "site_b": (240, 1.0, 1.2),
        "site_c": (240, 3.0, 0.8),
        "site_d": (240, 2.4, 0.0),
        "site_e": (240, 3.2, -0.3),
    }
    frames = []
    for k, (group, (n, skill, bias)) in enumerate(spec.items()):
        cols = _site_rows(rng, group, n, skill, bias)
        frames.append(
            pd.DataFrame(
                {
                    "group": group,
                    "site": group.split(":")[0],
                    "image_id": [f"img{k}_{i}" for i in range(n)],
                    "cluster": k * 1000 + np.arange(n) // 2,
                    **cols,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _drift(frame: pd.DataFrame, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    shift = {
        REF_GROUP: 0.0,
        "site_a": 0.0,
        "site_b": 1.5,
        "site_c": 0.4,
        "site_d": 0.0,
        "site_e": 0.8,
    }
    data = frame[["group", *[f"score_{f}" for f in FINDINGS]]].copy()
    for q in QUALITY_FEATURES:
        data[q] = rng.normal(0.0, 1.0, len(data)) + data["group"].map(shift)
    data["view_position"] = np.where(rng.random(len(data)) < 0.3, "AP", "PA")
    ref = data[data["group"] == REF_GROUP].drop(columns="group")
    return drift_table(
        data[data["group"] != REF_GROUP],
        ref,
        groups="group",
        numeric=[*QUALITY_FEATURES, *[f"score_{f}" for f in FINDINGS]],
        categorical=["view_position"],
        config=DriftConfig(n_perm=49, seed=0),
    )


def _cohort_and_quarantine(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(5)
    tables = {}
    for site, part in frame.groupby("site"):
        tables[site] = part.assign(
            patient_pseudonym=part["cluster"].astype(str),
            age=rng.integers(20, 90, len(part)),
            sex=np.where(rng.random(len(part)) < 0.45, "F", "M"),
            view_position=np.where(rng.random(len(part)) < 0.3, "AP", "PA"),
        )
    records = [
        QuarantineRecord(
            "site_b",
            "b0001",
            "labels.csv",
            12,
            "Patient Age",
            "age_range",
            f"age 130 of {FAKE_MRN} is outside [0, 120]",
            "correct the age",
        ),
        QuarantineRecord(
            "site_b",
            "b0001",
            "labels.csv",
            40,
            "Patient Age",
            "age_range",
            "age -1 is outside [0, 120]",
            "correct the age",
        ),
        QuarantineRecord(
            "site_d",
            "b0002",
            "images/x.dcm",
            None,
            None,
            "hash_mismatch",
            "sha256 differs from the manifest",
            "re-export the batch",
        ),
        QuarantineRecord(
            "site_e",
            "b0001",
            "labels.csv",
            None,
            "image_id",
            "identifier_in_image_id",
            f"ids contain {FAKE_MRN}",
            "rename",
            "warning",
        ),
    ]
    quarantine = records_to_frame(records)
    qmap = {s: quarantine[quarantine["site"] == s] for s in tables}
    return cohort_summary(tables, qmap), quarantine


def report_inputs(base: dict[str, pd.DataFrame], *, simulated: bool = True) -> CxrReportInputs:
    """Report inputs from base audit tables plus synthetic contract A/B/C tables."""
    text = POLICY_FILE.read_text(encoding="utf-8")
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    recal = recalibration_table(base["metrics"], base["calibration"])
    worst = base["worst_cells"]
    site = str(worst["group"].iloc[0])
    targeted = list(dict.fromkeys(worst.loc[worst["group"] == site, "target"]))[:2]
    retrain, summary = retraining_table(base["metrics"], site, targeted)
    criteria = criteria_table(base["metrics"], base["calibration"], recal, base["drift"])
    decisions = decisions_table(criteria, sha)
    batches = {f"{s}/b0001": hashlib.sha256(s.encode()).hexdigest() for s in (*SITES, REF)}
    return CxrReportInputs(
        study_title="Multi-site chest X-ray triage audit",
        simulated=simulated,
        **base,
        decisions=decisions,
        criteria=criteria,
        monitoring=monitoring_table(decisions, base["calibration"], base["drift"]),
        recalibration=recal,
        retraining=retrain,
        retraining_summary=summary,
        policy=PolicyInfo(
            "clinaudit.multisite_cxr.site_deployment",
            "1.0.0",
            sha,
            text,
            describe_policy(load_policy(POLICY_FILE)),
        ),
        provenance=CxrProvenance(
            audit_id="20260101T000000Z-3f2a",
            generated_at="2026-01-01 00:00 UTC",
            input_batches=batches,
            model_sha256="9f" * 32,
            model_card={
                "vendor": "Vendor Inc.",
                "intended_use": "adult CXR triage",
                "validation_auroc": {"Effusion": 0.97, "Hernia": float("nan")},
            },
            code_version="0.1.0+gabc1234",
            policy_sha256=sha,
            signer="CN=clinaudit dev",
            development_signature=True,
        ),
        psi_moderate=0.1,
        psi_major=0.25,
        p_adjust="holm",
        drift_p_adjust="holm",
        alpha=0.05,
        psi_noise_draws=2000,
    )


def render_pdf(view, out_dir: Path) -> tuple[Path, int, float]:
    """Write the figures, render the HTML with WeasyPrint: the PDF, its pages and seconds taken."""
    from weasyprint import HTML

    start = time.perf_counter()
    html = render_cxr_html(view, report_environment())
    write_figures(view.figures, out_dir)
    pdf = out_dir / "report.pdf"
    document = HTML(string=html, base_url=str(out_dir)).render()
    document.write_pdf(pdf)
    return pdf, len(document.pages), time.perf_counter() - start


def pages_text(pdf: Path) -> list[str]:
    """Text of each PDF page (poppler pdftotext)."""
    out = subprocess.run(
        ["pdftotext", "-layout", str(pdf), "-"], check=True, capture_output=True, text=True
    ).stdout
    return [p for p in out.split("\f") if p.strip()]


def synthetic_base_tables() -> dict[str, pd.DataFrame]:
    """Audit tables of the real core on a small simulated scored frame (5 sites + reference)."""
    frame = _scored_frame()
    audit = run_site_audit(
        frame,
        targets=FINDINGS,
        thresholds={f: 0.35 for f in FINDINGS},
        reference_group=REF_GROUP,
        config=SiteAuditConfig(n_boot=40),
    )
    cohort, quarantine = _cohort_and_quarantine(frame)
    return {
        "metrics": audit.discrimination.table,
        "calibration": audit.calibration.table,
        "reliability": audit.calibration.reliability,
        "worst_cells": audit.worst,
        "drift": _drift(frame),
        "cohort": cohort,
        "quarantine": quarantine,
    }
