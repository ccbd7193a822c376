"""Synthetic scored tables of study cxr_triage (no images): the certificate, throughput, decision
and memo tests share them."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from clinaudit.studies.cxr_triage.policy import SHIPPED_POLICY, TriagePolicy

POLICY = TriagePolicy.load(SHIPPED_POLICY)


def scored_table(seed: int = 0, n: int = 30000, *, pile: int = 2000) -> pd.DataFrame:
    """Logits 2.5 x the true log-odds (over-confident), ~half abnormal; 5 % laterals."""
    rng = np.random.default_rng(seed)
    total = n + pile
    true_logit = rng.normal(0.0, 3.0, total)
    abnormal = (rng.random(total) < 1.0 / (1.0 + np.exp(-true_logit))).astype(float)
    critical = np.where(abnormal == 1, (rng.random(total) < 0.2).astype(float), 0.0)
    third = n // 3
    split = ["train"] * third + ["calibration"] * third + ["test"] * (n - 2 * third)
    split = np.array(split + ["pile"] * pile)
    view = np.where(rng.random(total) < 0.05, "LL", np.where(rng.random(total) < 0.3, "AP", "PA"))
    return pd.DataFrame(
        {
            "image_id": [f"img{i:06d}.dcm" for i in range(total)],
            "patient_pseudonym": [f"{i // 2:016x}" for i in range(total)],
            "split": split,
            "logit_abnormal": 2.5 * true_logit,
            "logit_critical": np.where(critical == 1, 2.0, -2.0) + rng.normal(0, 1.5, total),
            "abnormal": np.where(split == "pile", np.nan, abnormal),
            "critical": np.where(split == "pile", np.nan, critical),
            "scope_reason": np.where(view == "LL", "view LL (not PA/AP)", ""),
            "sex": rng.choice(["F", "M"], total),
            "age_band": rng.choice(["18-64", "65+"], total),
            "view_position": view,
            "site": "main",
            # The pile's hidden truth (what a read would say): only with_reads uses it.
            "true_abnormal": abnormal,
        }
    )


def with_reads(
    scored: pd.DataFrame,
    *,
    audit: int,
    reread: int,
    planted_abnormal: float = 0.0,
    seed: int = 0,
    per_day: int = 50,
) -> pd.DataFrame:
    """``scored`` with reads of pile studies in the audit order: the first ``audit`` as
    ``audit_sample`` and the next ``reread`` as ``reread``, read as their hidden truth; a
    ``planted_abnormal`` share of the re-reads is read abnormal whatever the truth (a drift the
    monitor must catch)."""
    from clinaudit.studies.cxr_triage.backlog import audit_order

    out = scored.copy()
    out["read_reason"], out["read_date"], out["read_batch"] = "", "", ""
    out["read_abnormal"], out["read_critical"] = np.nan, np.nan
    pile = np.flatnonzero(out["split"].to_numpy() == "pile")
    rank = audit_order(out["site"].iloc[pile], out["image_id"].iloc[pile])
    order = pile[np.argsort(rank)]
    rng = np.random.default_rng(seed)
    for reason, rows in (
        ("audit_sample", order[:audit]),
        ("reread", order[audit : audit + reread]),
    ):
        idx = out.index[rows]
        truth = out.loc[idx, "true_abnormal"].to_numpy(float)
        if reason == "reread" and planted_abnormal:
            truth = np.where(rng.random(len(rows)) < planted_abnormal, 1.0, truth)
        out.loc[idx, "read_reason"] = reason
        out.loc[idx, "read_batch"] = "reads-0001"
        out.loc[idx, "read_abnormal"] = truth
        out.loc[idx, "read_critical"] = 0.0
        days = pd.Timestamp("2024-02-01") + pd.to_timedelta(np.arange(len(rows)) // per_day, "D")
        out.loc[idx, "read_date"] = days.strftime("%Y-%m-%d").to_numpy()
    return out


def small_workload(**changes) -> TriagePolicy:
    """The shipped policy with a small queue simulation (5,000 backlog, 5 days, 20 draws)."""
    w = replace(POLICY.workload, simulated_pile=5000, daily_inflow=300, inflow_days=5, n_draws=20)
    return replace(POLICY, workload=replace(w, **changes))
