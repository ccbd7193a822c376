"""Worst cells: the injected harm is ranked first with its evidence; null cells are not flagged."""

from __future__ import annotations

import numpy as np
import pytest

from clinaudit.audit.bootstrap import percentile_ci
from clinaudit.audit.calibration import audit_calibration
from clinaudit.audit.discrimination import audit_discrimination
from clinaudit.audit.types import AuditInputError
from clinaudit.audit.worst_cells import WorstCellsConfig, worst_cells


def _cohort(seed: int = 0):
    """Reference + 3 sites, 2 findings; site_bad/a: weak signal; site_miscal: shifted probs."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(["reference", "site_ok", "site_bad", "site_miscal"], 400)
    y = (rng.random((1600, 2)) < 0.3).astype(float)
    signal = np.full((1600, 2), 2.5)
    signal[groups == "site_bad", 0] = 0.5
    logits = -1.5 + signal * y + rng.normal(size=(1600, 2))
    logits[groups == "site_miscal"] += 1.5  # same ranking, probabilities too high
    prob = 1 / (1 + np.exp(-logits))
    patients = np.arange(1600) // 2
    return y, prob, groups, patients


def test_injected_harm_ranks_first_with_evidence() -> None:
    y, prob, groups, patients = _cohort()
    d = audit_discrimination(
        y,
        prob,
        groups=groups,
        clusters=patients,
        targets=["a", "b"],
        reference_group="reference",
        n_boot=300,
        thresholds=0.5,
        seed=1,
    )
    c = audit_calibration(
        y, prob, groups=groups, clusters=patients, targets=["a", "b"], n_boot=300, seed=1
    )
    top = worst_cells(d, c, config=WorstCellsConfig(top_k=3))
    first = top.iloc[0]
    assert (first["group"], first["target"]) == ("site_bad", "a")
    assert first["auroc_drop_fired"] and "auroc_drop" in first["criteria"]
    lo, hi = percentile_ci(
        d.replicates[("reference", "a")]["auroc"] - d.replicates[("site_bad", "a")]["auroc"]
    )
    assert (first["auroc_drop_ci_low"], first["auroc_drop_ci_high"]) == (lo, hi) and lo > 0
    assert first["harm_score"] > 0 and first["rank"] == 1
    flagged = set(zip(top["group"], top["target"], strict=True))
    assert ("site_miscal", "a") in flagged or ("site_miscal", "b") in flagged
    miscal = top[top["group"] == "site_miscal"]
    assert miscal["calibration_fired"].all() and (miscal["ece_ci_low"] > 0.05).all()
    assert "site_ok" not in set(top["group"]) and "reference" not in set(top["group"])
    assert top["rank"].tolist() == list(range(1, len(top) + 1))


def test_delong_drop_interval_and_unflagged_listing() -> None:
    y, prob, groups, patients = _cohort(1)
    d = audit_discrimination(y, prob, groups=groups, reference_group="reference", n_boot=100)
    cfg = WorstCellsConfig(drop_ci="delong", include_unflagged=True, top_k=20)
    table = worst_cells(d, config=cfg)
    assert len(table) == 6  # 3 sites x 2 targets, reference excluded
    bad = table[(table["group"] == "site_bad") & (table["target"] == "target_0")].iloc[0]
    src = d.table[(d.table["group"] == "site_bad") & (d.table["target"] == "target_0")].iloc[0]
    assert bad["auroc_drop_ci_low"] == -src["delong_diff_ci_high"]
    assert table["calibration_fired"].sum() == 0 and table["ece"].isna().all()
    assert (table["n_criteria"].diff().dropna() <= 0).all()


def test_requires_reference_and_valid_config() -> None:
    y, prob, groups, _ = _cohort(2)
    d = audit_discrimination(y, prob, groups=groups, n_boot=10)
    with pytest.raises(AuditInputError, match=r"reference_group"):
        worst_cells(d)
    with pytest.raises(AuditInputError, match=r"drop_ci: received 'wald'"):
        WorstCellsConfig(drop_ci="wald")
    with pytest.raises(AuditInputError, match=r"top_k: received 0"):
        WorstCellsConfig(top_k=0)
