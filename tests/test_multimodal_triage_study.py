"""Study multimodal_triage: policy, patient splits, the multiple-reference model stage and the
audit's tables on the tiny demo (photos + notes landed, arms trained here, held-out clinic)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clinaudit.audit.policy_yaml import PolicyError
from clinaudit.sources.derm_sites import DEVELOPMENT_CLINICS, HELD_OUT_CLINIC
from clinaudit.studies import get_study
from clinaudit.studies.multimodal_triage.policy import SHIPPED_POLICY, MultimodalPolicy
from clinaudit.studies.multimodal_triage.splits import SPLITS, assign_splits
from clinaudit.studies.multimodal_triage.study import DEVELOPMENT_ENV
from clinaudit.studies.multimodal_triage.tone import annotator_agreement

STUDY = "multimodal_triage"


def test_shipped_policy_loads_and_states_its_rules() -> None:
    policy = MultimodalPolicy.load(SHIPPED_POLICY)
    assert policy.held_out_clinic == HELD_OUT_CLINIC
    assert policy.model.arms == ("image_only", "text_only", "late_fusion", "early_fusion")
    assert policy.splits.test == pytest.approx(0.14)
    text = policy.describe()
    assert "P(error of accepted <= 0.3 and malignant miss rate <= 0.1) >= 0.95" in text
    assert "insufficient evidence" in text


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("deployed_arm: late_fusion", "deployed_arm: image_only", "model.deployed_arm"),
        ("  train: 0.60", "  train: 0.80", "splits"),
        ("malignant: [BCC, MEL, SCC]", "malignant: [BCC, MELANOMA]", "categories.malignant"),
        ("    moderate: 0.3", "    moderate: 0.8", "model.note_removal"),
        ("    limit: 0.30", "    limit: 0.05", "criteria.held_out_accepted_error.limit"),
    ],
)
def test_policy_refuses_broken_rules_naming_the_key(
    tmp_path: Path, old: str, new: str, key: str
) -> None:
    text = SHIPPED_POLICY.read_text()
    assert old in text
    path = tmp_path / "policy.yaml"
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(PolicyError) as err:
        MultimodalPolicy.load(path)
    assert key in str(err.value)


def test_splits_keep_every_patient_in_one_split_and_follow_the_shares() -> None:
    rng = np.random.default_rng(0)
    table = pd.DataFrame(
        {
            "site": rng.choice(["a", "b", "held"], 20000),
            "patient": [f"p{i}" for i in rng.integers(0, 6000, 20000)],
            "batch": rng.choice(["b-0001", "b-0002"], 20000),
            "image_id": [f"img{i:05d}" for i in range(20000)],
        }
    )
    split = assign_splits(table, held_out="held", shares=(0.6, 0.12, 0.14))
    assert (split[table["site"] == "held"] == "held_out").all()
    dev = table.assign(split=split)[table["site"] != "held"]
    assert (dev.groupby(["site", "patient"])["split"].nunique() == 1).all()
    per_patient = dev.drop_duplicates(["site", "patient"])["split"].value_counts(normalize=True)
    for name, share in zip(SPLITS, (0.6, 0.12, 0.14, 0.14), strict=True):
        assert per_patient[name] == pytest.approx(share, abs=0.02)
    # Independent of row order and identical on a second call (a keyed hash, no RNG).
    shuffled = table.sample(frac=1.0, random_state=1)
    again = assign_splits(shuffled, held_out="held", shares=(0.6, 0.12, 0.14))
    assert again.sort_index().equals(split)
    # Another home's pseudonymisation key renames every patient: the split stays the same.
    renamed = table.assign(patient="q" + table["patient"].str[1:] + "x")
    assert assign_splits(renamed, held_out="held", shares=(0.6, 0.12, 0.14)).equals(split)
    # A later batch of the same patients leaves the earlier photos where they were.
    later = table.head(500).assign(batch="b-0003", image_id=lambda t: "late" + t["image_id"])
    grown = assign_splits(pd.concat([table, later], ignore_index=True), held_out="held",
                          shares=(0.6, 0.12, 0.14))  # fmt: skip
    assert grown.iloc[: len(table)].equals(split)


def test_annotator_agreement_counts_exact_and_within_one() -> None:
    a = pd.Series([1.0, 2.0, 3.0, 5.0, np.nan])
    b = pd.Series([1.0, 3.0, 5.0, 5.0, 2.0])
    out = annotator_agreement(a, b)
    assert out["n"] == 4 and out["exact"] == 0.5 and out["within_one"] == 0.75


def test_model_stage_trains_on_every_development_clinic(monkeypatch: pytest.MonkeyPatch) -> None:
    study = get_study(STUDY)
    assert study.training_partitions() == DEVELOPMENT_CLINICS
    monkeypatch.setenv(DEVELOPMENT_ENV, "north, south")
    assert study.training_partitions() == ("north", "south")
    monkeypatch.setenv(DEVELOPMENT_ENV, "../etc")
    with pytest.raises(ValueError, match="clinic"):
        study.training_partitions()
    monkeypatch.delenv(DEVELOPMENT_ENV)
    assert HELD_OUT_CLINIC not in study.training_partitions()
    assert (
        get_study("cxr_triage").training_partitions() == ("triage_hospital",)
        or len(get_study("cxr_triage").training_partitions()) == 1
    )


def _tables(home: Path, stage: str) -> dict[str, pd.DataFrame]:
    root = home / "artifacts" / "tables" / STUDY / stage / "__all__"
    return {p.stem: pd.read_parquet(p) for p in root.glob("*.parquet")}


def test_tiny_demo_audits_the_held_out_clinic_with_arms_trained_on_the_others(
    tiny_demo: Callable[[str], Path],
) -> None:
    home = tiny_demo(STUDY)
    ev = _tables(home, "evidence")
    facts = json.loads(
        (home / "artifacts/tables" / STUDY / "evidence/__all__/facts.json").read_text()
    )
    settings = facts["settings"]
    assert settings["held_out_clinic"] == HELD_OUT_CLINIC
    assert settings["best_single_on_validation"] in ("image_only", "text_only")
    lineage = settings["model_facts"]["lineage"]
    assert HELD_OUT_CLINIC not in lineage["clinics"]
    assert sorted(lineage["clinics"]) == sorted(DEVELOPMENT_CLINICS)
    # Every arm gets the same budget (steps and pairs seen); late fusion takes no step.
    budgets = {a: t["budget"] for a, t in settings["model_facts"]["training"].items()}
    trained = {json.dumps(b, sort_keys=True) for a, b in budgets.items() if a != "late_fusion"}
    assert len(trained) == 1 and budgets["late_fusion"]["steps"] == 0
    comp = ev["composition"]
    assert set(comp.loc[comp["clinic"] == HELD_OUT_CLINIC, "split"]) == {"held_out"}
    assert "held_out" not in set(comp.loc[comp["clinic"] != HELD_OUT_CLINIC, "split"])
    disc = ev["discrimination"]
    assert set(disc["notes_removed"]) == {0.0, 0.3, 0.7}
    assert set(disc["scope"]) == {"test", "held_out"}
    ok = disc.dropna(subset=["ci_low"])
    assert (
        (ok["ci_low"] <= ok["estimate"] + 1e-12) & (ok["estimate"] <= ok["ci_high"] + 1e-12)
    ).all()
    # The tone audit never passes a group by default: every verdict is one of the three.
    tone = ev["tone_audit"]
    verdicts = tone["verdict"].str.replace(r" \(CI width .*\)", "", regex=True)
    assert set(verdicts) <= {"gap", "no gap >= 0.1", "insufficient evidence"}, set(verdicts)
    assert not tone["group"].isin(["", "not recorded", "not measured"]).any()
    assert set(tone["attribute"]) == {
        "Fitzpatrick type (annotator A)", "Fitzpatrick group (annotator A)",
        "Fitzpatrick group (annotator B)", "ITA band (pixels)",
    }  # fmt: skip
    sel = ev["selective"]
    assert set(sel["score"]) == {"review score", "max-softmax baseline"}
    crit = _tables(home, "decisions")["criteria"]
    assert list(crit["criterion"]) == [
        "macro_f1", "malignant_sensitivity", "deferral_certified", "held_out_accepted_error",
        "fusion_vs_best_single", "tone_groups",
    ]  # fmt: skip
    decision = _tables(home, "decisions")["decisions"].iloc[0]
    assert decision["clinic"] == HELD_OUT_CLINIC
    failed_safety = crit[(crit["kind"] == "safety") & crit["enabled"] & ~crit["passed"]]
    assert (decision["decision"] == "NO-GO") == (len(failed_safety) > 0)


def test_predictions_hold_every_arm_and_note_share_for_every_pair(
    tiny_demo: Callable[[str], Path],
) -> None:
    home = tiny_demo(STUDY)
    root = home / "artifacts" / "tables" / STUDY
    validated = pd.read_parquet(root / "validated" / f"{HELD_OUT_CLINIC}.parquet")
    pred = pd.read_parquet(root / "predictions" / f"{HELD_OUT_CLINIC}.parquet")
    per = pred.groupby(["arm", "notes_removed"])["image_id"].agg(["size", "nunique"])
    assert (per["size"] == len(validated)).all() and (per["nunique"] == len(validated)).all()
    probs = pred.filter(like="p_")
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert pred["model_sha256"].nunique() == 1


def test_arm_packages_from_a_local_folder_are_audited_and_a_missing_arm_is_named(
    tiny_demo: Callable[[str], Path], tmp_path: Path
) -> None:
    import shutil

    from clinaudit.studies.base import ModelSpec, RunDirs
    from clinaudit.studies.multimodal_triage.model import model_fingerprint, resolve_model

    home = tiny_demo(STUDY)
    trained = next((home / "artifacts" / "models" / STUDY).iterdir())
    vendor = tmp_path / "vendor_arms"
    shutil.copytree(trained, vendor)
    dirs = RunDirs(*(tmp_path / d for d in ("landing", "artifacts", "q", "reports", "keys")))
    policy = MultimodalPolicy.load(SHIPPED_POLICY)
    spec = ModelSpec(package_dir=str(vendor))
    ref = resolve_model(spec, reference=None, dirs=dirs, log=lambda m: None, policy=policy)
    assert ref.mode == "package" and set(ref.facts["arms"]) == set(policy.model.arms)
    embedded = json.loads((home / "artifacts/tables" / STUDY / "model/__all__.json").read_text())
    assert ref.identity == embedded["fields"]["identity"]  # the same packages, the same identity
    assert model_fingerprint(spec)[0] == ref.identity
    shutil.rmtree(vendor / "text_only")
    with pytest.raises(FileNotFoundError, match=r"\['text_only'\] are missing"):
        resolve_model(spec, reference=None, dirs=dirs, log=lambda m: None, policy=policy)
    with pytest.raises(Exception, match="scores"):
        resolve_model(ModelSpec(scores=str(tmp_path)), reference=None, dirs=dirs,
                      log=lambda m: None, policy=policy)  # fmt: skip
