"""multisite_cxr label-free stage: estimates of a site without labels, the image-drift gate,
provisional decisions under the policy and the scoring of frozen estimates (no Dagster)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from clinaudit.audit.label_free_sim import simulate_shift
from clinaudit.audit.label_free_site import realised_metrics
from clinaudit.sources.cxr_labels import FINDINGS
from clinaudit.studies.multisite_cxr.label_free import (
    LABEL_FREE_COLUMNS,
    image_drift_failures,
    label_free_evidence,
    unlabelled_sites,
)
from clinaudit.studies.multisite_cxr.policy import load_policy
from clinaudit.studies.multisite_cxr.provisional import decide_unlabelled

SHA = "a" * 64


def _site(name: str, scores: np.ndarray, labels: np.ndarray | None, split: str) -> tuple:
    n = len(next(iter(scores.values())))
    ids = [f"{name}_{i:05d}.png" for i in range(n)]
    table = pd.DataFrame({
        "image_id": ids, "patient_pseudonym": [f"p{name}{i}" for i in range(n)],
        "split": split, "batch": "b0001",
    })  # fmt: skip
    for f in FINDINGS:
        table[f] = labels[f].astype(float) if labels is not None else np.nan
    pred = pd.DataFrame({"image_id": ids, **{f: scores[f] for f in FINDINGS}, "model_sha256": SHA})
    return table, pred


@pytest.fixture(scope="module")
def shifted() -> dict:
    """Per finding one covariate-shift sample: a labelled reference and an unlabelled site."""
    samples = {f: simulate_shift("covariate", n_target=400, seed=k) for k, f in enumerate(FINDINGS)}
    ref_table, ref_pred = _site(
        "vendor_dev",
        {f: s.reference_scores for f, s in samples.items()},
        {f: s.reference_labels for f, s in samples.items()},
        "test",
    )
    new_table, new_pred = _site(
        "site_u", {f: s.target_scores for f, s in samples.items()}, None, ""
    )
    truth = {f: s.target_labels for f, s in samples.items()}
    thresholds = {f: s.threshold for f, s in samples.items()}
    return {
        "validated": {"vendor_dev": ref_table, "site_u": new_table},
        "predictions": {"vendor_dev": ref_pred, "site_u": new_pred},
        "truth": truth,
        "thresholds": thresholds,
    }


def _reference(shifted: dict) -> pd.DataFrame:
    table = shifted["validated"]["vendor_dev"]
    pred = shifted["predictions"]["vendor_dev"]
    return table.assign(**{f"score_{f}": pred[f].to_numpy() for f in FINDINGS})


def _evidence(shifted: dict, drift: pd.DataFrame | None = None, **kw) -> object:
    return label_free_evidence(
        shifted["validated"],
        shifted["predictions"],
        labelled=kw.get("labelled", []),
        unlabelled=kw.get("unlabelled", ["site_u"]),
        reference=_reference(shifted),
        drift=drift if drift is not None else pd.DataFrame(),
        thresholds=shifted["thresholds"],
        identity={"vendor_dev": SHA, "site_u": SHA},
        gate={"features": ["contrast", "mean_intensity"], "psi_levels": ["major"]},
        reports=None,
        study="multisite_cxr",
        n_boot=120,
        ci_level=0.90,
        seed=0,
    )


def test_a_site_without_any_label_is_unlabelled(shifted: dict) -> None:
    sites = ["vendor_dev", "site_u"]
    assert unlabelled_sites(shifted["validated"], sites) == ["site_u"]
    one = shifted["validated"]["site_u"].copy()
    one.loc[0, "Effusion"] = 1.0  # a single labelled image makes it a labelled site
    assert unlabelled_sites({**shifted["validated"], "site_u": one}, sites) == []


def test_estimates_of_an_unlabelled_site_track_its_hidden_labels(shifted: dict) -> None:
    result = _evidence(shifted)
    est = result.estimates
    assert list(est.columns) == list(LABEL_FREE_COLUMNS)
    assert set(est["finding"]) == set(FINDINGS) and est["estimable"].all()
    assert (est["model_sha256"] == SHA).all() and (est["batches"] == "b0001").all()
    auroc = est[(est["metric"] == "auroc") & (est["method"] == "cbpe")].set_index("finding")
    scores = shifted["predictions"]["site_u"]
    errors, covered = [], 0
    for f in FINDINGS:
        real = realised_metrics(shifted["truth"][f], scores[f], shifted["thresholds"][f])["auroc"]
        errors.append(abs(auroc.loc[f, "estimate"] - real))
        covered += auroc.loc[f, "ci_low"] <= real <= auroc.loc[f, "ci_high"]
    assert np.mean(errors) < 0.03, errors  # the bench's goal is 0.02 over 30 repetitions
    assert covered >= 10, covered  # 90 % intervals over 14 findings
    assert result.facts["unlabelled_sites"] == ["site_u"]
    assert result.facts["settings"]["n_boot"] == 120 and result.scored.empty


def test_major_image_drift_withholds_every_estimate_with_its_reason(shifted: dict) -> None:
    drift = pd.DataFrame({
        "group": ["site_u"] * 3, "feature": ["contrast", "entropy", "mean_intensity"],
        "psi": [0.41, 0.90, 0.12], "psi_level": ["major", "major", "moderate"],
    })  # fmt: skip
    failed = image_drift_failures(
        drift, "site_u", features=["contrast", "mean_intensity"], psi_levels=["major"]
    )
    assert failed == {"image drift contrast": "PSI 0.41 (major)"}  # entropy: not a gate feature
    est = _evidence(shifted, drift=drift).estimates
    assert not est["estimable"].any() and est["estimate"].isna().all()
    assert est["reason"].str.contains("inputs outside the reference").all()
    assert est["reason"].str.contains("image drift contrast: PSI 0.41").all()


def test_provisional_decision_follows_the_policy(shifted: dict) -> None:
    policy = load_policy()
    est = _evidence(shifted).estimates
    table, criteria = decide_unlabelled(policy, est, ["site_u"])
    lows = est[(est["metric"] == "auroc") & est["finding"].isin(policy.critical_findings)]
    sens = est[(est["metric"] == "sensitivity") & est["finding"].isin(policy.critical_findings)]
    passes = (lows["ci_low"] >= 0.60).all() and (sens["ci_low"] >= 0.50).all()
    assert len(criteria) == 2 * len(policy.critical_findings)
    assert criteria["passed"].tolist() == [r.value >= r.limit for r in criteria.itertuples()]
    expected = "CONDITIONAL GO" if passes else "NO-GO"
    assert table["decision"].tolist() == [expected]
    assert table["reasons"].iloc[0].startswith("PROVISIONAL")
    # A policy that forbids provisional decisions: NO-GO whatever the estimates say.
    strict = dataclasses.replace(
        policy,
        unlabelled_sites=dataclasses.replace(policy.unlabelled_sites, provisional_decision=False),
    )
    table, _ = decide_unlabelled(strict, est, ["site_u"])
    assert table["decision"].tolist() == ["NO-GO"]
    assert "allows no decision" in table["reasons"].iloc[0]
    # A withheld estimate never passes: drift closes the gate, the site is NO-GO and says why.
    withheld = est.assign(
        estimable=False, estimate=np.nan, ci_low=np.nan, reason="not estimable: x"
    )
    table, criteria = decide_unlabelled(policy, withheld, ["site_u"])
    assert table["decision"].tolist() == ["NO-GO"] and not criteria["passed"].any()
    assert "Effusion: not estimable: x" in table["reasons"].iloc[0]


def test_frozen_estimates_in_a_signed_package_are_scored_when_the_labels_land(
    shifted: dict, tmp_path
) -> None:
    """The first audit freezes site_u's estimates in a signed package; its reads land (the
    hidden labels); the next evidence reads that verified package and scores every cell against
    the realised value and the carry-forward baseline, on the very images it estimated."""
    from portal_fixtures import write_package

    from clinaudit.reporting.signing import ensure_dev_signer

    first = _evidence(shifted)
    reports = tmp_path / "reports"
    signer = ensure_dev_signer(tmp_path / "keys")
    frozen = first.estimates.to_csv(index=False).encode()
    package = write_package(
        reports, "multisite_cxr", 1, signer, audit=None, attachments={"label_free.csv": frozen}
    )
    labelled = shifted["validated"]["site_u"].copy()
    for f in FINDINGS:
        labelled[f] = shifted["truth"][f].astype(float)
    validated = {**shifted["validated"], "site_u": labelled}

    def later_audit(predictions: dict, model: str) -> object:
        return label_free_evidence(
            validated,
            predictions,
            labelled=["site_u"],
            unlabelled=[],
            reference=_reference(shifted),
            drift=pd.DataFrame(),
            thresholds=shifted["thresholds"],
            identity={"vendor_dev": SHA, "site_u": model},
            gate={"features": ["contrast"], "psi_levels": ["major"]},
            reports=reports,
            study="multisite_cxr",
            n_boot=120,
            ci_level=0.90,
            seed=0,
        )

    # A newer package whose frozen file another version wrote (a column missing): named as
    # refused, never read, and the older verified package is scored instead.
    old_format = first.estimates.drop(columns=["batches"]).to_csv(index=False).encode()
    newer = write_package(
        reports, "multisite_cxr", 2, signer, audit=None, attachments={"label_free.csv": old_format}
    )
    later = later_audit(shifted["predictions"], SHA)
    assert later.facts["packages_refused"] == [
        f"{newer.dir.name}: label_free.csv lacks columns ['batches']"
    ]
    assert later.estimates.empty
    assert later.facts["scored_from"] == {"site_u": package.dir.name}
    cells = later.scored
    assert len(cells) == 5 * len(FINDINGS) and set(cells["frozen_in"]) == {package.dir.name}
    assert set(cells["realised_on"]) == {"the estimated images"}
    row = cells[(cells["finding"] == "Effusion") & (cells["metric"] == "auroc")].iloc[0]
    scores = shifted["predictions"]["site_u"]["Effusion"]
    real = realised_metrics(shifted["truth"]["Effusion"], scores, 0.5)["auroc"]
    assert row["realised"] == pytest.approx(real) and row["error"] == pytest.approx(
        row["estimate"] - real
    )
    auroc = later.summary.set_index("metric").loc["auroc"]
    # Covariate shift: the estimate beats carrying the reference AUROC forward.
    assert auroc["mae"] < auroc["baseline_mae"] and auroc["estimable"] == len(FINDINGS)
    # Another model audited now: the frozen estimates are not scored, and the reason says so.
    rescored = {s: p.assign(model_sha256="b" * 64) for s, p in shifted["predictions"].items()}
    other = later_audit(rescored, "b" * 64)
    assert (
        other.scored.empty
        and "the audited model is bbbbbbbbbbbb" in other.facts["not_scored"]["site_u"]
    )


def test_report_section_states_estimates_as_provisional_and_never_prints_a_withheld_number(
    shifted: dict,
) -> None:
    from clinaudit.studies.multisite_cxr.report_label_free import ASSUMPTIONS, label_free_section

    policy = load_policy()
    result = _evidence(shifted)
    est = result.estimates
    est.loc[est["finding"] == "Effusion", ["estimable", "estimate"]] = [False, np.nan]
    est.loc[est["finding"] == "Effusion", "reason"] = "not estimable: drift"
    provisional, criteria = decide_unlabelled(policy, est, ["site_u"])
    critical = tuple(dict.fromkeys(criteria["finding"]))
    section = label_free_section(
        est, result.scored, result.summary, provisional, result.facts,
        critical=critical, simulated=True,
    )  # fmt: skip
    assert section is not None and section.text.startswith("PROVISIONAL. 1 site(s)")
    assert "The data are simulated." in section.text and section.assumptions == ASSUMPTIONS
    assert "No concept shift" in section.assumptions[0]
    rows = {r[1].text: [c.text for c in r[2:]] for r in section.estimates.rows}
    assert set(rows) == set(critical)
    assert rows["Effusion"] == ["withheld"] * 4
    assert "site_u Effusion: not estimable: drift" in section.estimates.note
    assert section.provisional.rows[0][1].text == "NO-GO (PROVISIONAL)"
    assert section.scored is None
    nothing = {"unlabelled_sites": [], "settings": result.facts["settings"], "not_scored": {}}
    empty = pd.DataFrame()
    assert label_free_section(
        est.iloc[:0], result.scored, result.summary, empty, nothing, critical=critical,
        simulated=True,
    ) is None  # fmt: skip
