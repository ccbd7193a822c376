"""Study peds_vqa: the question sets, the splits, the policy and the evidence's statistics on
answers whose truth is known (no model needed)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clinaudit.audit.policy_yaml import PolicyError
from clinaudit.audit.types import AuditInputError
from clinaudit.studies import get_study
from clinaudit.studies.peds_vqa.policy import SHIPPED_POLICY, PedsVqaPolicy
from clinaudit.studies.peds_vqa.questions import (
    TEMPLATES,
    assign_splits,
    evaluation_set,
    scored_questions,
    shuffled_controls,
)

CATS = ("consolidation", "interstitial_opacity", "cardiomegaly", "effusion")


def _images(n: int = 1200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    patients = [f"{rng.integers(0, 2**63):016x}"[:16] for _ in range(n // 2)]
    table = pd.DataFrame(
        {
            "batch": "b-0001",
            "image_id": [f"img{i:05d}" for i in range(n)],
            "file": [f"images/img{i:05d}.png" for i in range(n)],
            "patient": [patients[i // 2] for i in range(n)],
        }
    )
    for c in CATS:
        table[c] = (rng.random(n) < 0.3).astype(int)
    return table


def _split(table: pd.DataFrame) -> pd.DataFrame:
    policy = PedsVqaPolicy.load(SHIPPED_POLICY)
    return table.assign(split=assign_splits(table, policy.splits.shares(), policy.splits.salt))


def test_the_200_question_set_is_deterministic_balanced_and_patient_disjoint() -> None:
    table = _split(_images())
    first, complete = evaluation_set(table, CATS, per_category=50, yes_share=0.5, seed=17)
    again, _ = evaluation_set(table.sample(frac=1.0, random_state=3), CATS, per_category=50,
                              yes_share=0.5, seed=17)  # fmt: skip
    pd.testing.assert_frame_equal(first, again)  # row order of the table does not matter
    assert len(first) == 200 and (complete["taken"] == complete["wanted"]).all()
    counts = first.groupby(["category", "answer"]).size()
    assert (counts == 25).all() and len(counts) == 8
    assert first["question_id"].is_unique
    assert not first.duplicated(["image_id", "category"]).any()
    test_patients = set(table.loc[table["split"] == "test", "patient"])
    used = table.set_index("image_id").loc[first["image_id"], "patient"]
    assert set(used) <= test_patients
    assert not set(used) & set(table.loc[table["split"] == "train", "patient"])
    other, _ = evaluation_set(table, CATS, per_category=50, yes_share=0.5, seed=18)
    assert not other.equals(first)


def test_a_short_test_split_is_recorded_never_filled_from_other_splits() -> None:
    table = _split(_images(n=120))
    questions, complete = evaluation_set(table, CATS, per_category=50, yes_share=0.5, seed=17)
    assert (complete["taken"] < complete["wanted"]).any()
    assert (complete["taken"] == complete[["wanted", "available"]].min(axis=1)).all()
    assert set(questions["image_id"]) <= set(table.loc[table["split"] == "test", "image_id"])


def test_splits_keep_each_patient_in_one_split_with_the_policy_shares() -> None:
    table = _split(_images(n=4000))
    assert table.groupby("patient")["split"].nunique().max() == 1
    shares = table.drop_duplicates("patient")["split"].value_counts(normalize=True)
    policy = PedsVqaPolicy.load(SHIPPED_POLICY)
    for name, share in policy.splits.shares().items():
        assert abs(shares[name] - share) < 0.04, name


def test_splits_do_not_depend_on_the_pseudonym_key_and_survive_a_later_batch() -> None:
    """Pseudonyms are keyed hashes and a fresh home makes its own key: the same landed images
    must split the same way whatever the pseudonyms are (a fresh home once put 1 of 15 test
    images in a category and the whole evidence stage failed)."""
    table = _images(n=600)
    split = _split(table)["split"]
    renamed = table.assign(patient=table["patient"].map(lambda p: f"{p[::-1]}z"))
    assert _split(renamed)["split"].equals(split)
    later = table.head(100).assign(batch="b-0002", image_id=lambda t: "late" + t["image_id"])
    grown = _split(pd.concat([table, later], ignore_index=True))["split"]
    assert grown.iloc[: len(table)].equals(split)
    with pytest.raises(AuditInputError, match="image_id"):
        _split(table.drop(columns=["image_id"]))


def test_scored_questions_cover_every_non_training_image_wording_and_blank() -> None:
    table = _split(_images(n=200))
    q = scored_questions(table, CATS, paraphrases=3, blanks=5)
    real = q[q["control"] == "none"]
    assert set(real["split"]) == {"calibration", "validation", "test"}
    n_images = int((table["split"] != "train").sum())
    assert len(real) == n_images * len(CATS) * 3
    assert (q.loc[q["control"] == "blank", "answer"] == 0).all()
    assert q.loc[q["control"] == "blank"].shape[0] == 5 * len(CATS)
    for cat in CATS:
        assert set(real.loc[real["category"] == cat, "question"]) == set(TEMPLATES[cat][:3])


def test_shuffled_controls_flip_the_answer_and_keep_the_words() -> None:
    table = _split(_images())
    questions, _ = evaluation_set(table, CATS, per_category=50, yes_share=0.5, seed=17)
    shuffled = shuffled_controls(questions, table, n=40, seed=17)
    assert len(shuffled) == 40
    original = questions.set_index("question_id")
    for r in shuffled.itertuples():
        q = original.loc[r.question_id[:-1]]
        assert r.question == q["question"] and r.answer == 1 - q["answer"]
        assert r.image_id != q["image_id"]


def test_policy_relations_are_checked(tmp_path) -> None:
    text = SHIPPED_POLICY.read_text().replace("test: 0.20", "test: 0.30")
    bad = tmp_path / "policy.yaml"
    bad.write_text(text)
    with pytest.raises(PolicyError, match="splits"):
        PedsVqaPolicy.load(bad)
    text = SHIPPED_POLICY.read_text().replace("yes_share: 0.5", "yes_share: 0.33")
    bad.write_text(text)
    with pytest.raises(PolicyError, match="yes_share"):
        PedsVqaPolicy.load(bad)


def test_the_study_is_registered_and_refuses_vendor_scores() -> None:
    from clinaudit.studies.base import ModelSpec

    study = get_study("peds_vqa")
    assert study.targets == CATS and study.model_kind == "vlm_yesno"
    with pytest.raises(ValueError, match="scores"):
        study.model_fingerprint(ModelSpec(scores="/tmp/scores.csv"))
    with pytest.raises(ValueError, match="not known to peds_vqa"):
        study.model_fingerprint(ModelSpec(training={"epochs": 3}))


def test_categories_without_positives_are_named_no_go_not_a_failed_stage() -> None:
    """decide_brief when ``effusion`` has no yes image in the pooled test set and
    ``cardiomegaly`` none in validation (so no threshold, no operating row): both are NO-GO with
    the reason spelled out; the other categories are judged as usual."""
    from clinaudit.audit.operating_point import per_group_operating_table
    from clinaudit.audit.records import TableSet
    from clinaudit.studies.peds_vqa.decisions import decide_brief, monitoring_plan

    policy = PedsVqaPolicy.load(SHIPPED_POLICY)
    rng = np.random.default_rng(3)
    rows = []
    for cat in policy.categories:
        y = np.zeros(40, int) if cat == "effusion" else np.repeat([1, 0], 20)
        p = np.clip(0.1 + 0.8 * y + rng.normal(0, 0.05, y.size), 0, 1)
        rows.append(pd.DataFrame({"category": cat, "answer": y, "p": p}))
    ans = pd.concat(rows, ignore_index=True)
    ans = ans[ans["category"] != "cardiomegaly"]
    thr = {c: 0.5 for c in policy.categories if c != "cardiomegaly"}
    ops = pd.concat(
        [
            per_group_operating_table(
                ans, group_col="category", y_col="answer", p_col="p", thresholds=thr
            ).assign(model=m, set="pooled_test")
            for m in ("base", "tuned")
        ]
    )
    thresholds = pd.DataFrame(
        [{"model": m, "category": c, "status": "insufficient data" if c == "cardiomegaly"
          else "ok", "threshold": np.nan if c == "cardiomegaly" else 0.5, "met": c !=
          "cardiomegaly", "n": 12, "n_pos": 0 if c == "cardiomegaly" else 6,
          "n_neg": 12 if c == "cardiomegaly" else 6}
         for m in ("base", "tuned") for c in policy.categories]
    )  # fmt: skip
    cal = pd.DataFrame([{"set": "pooled_test", "model": "tuned", "scale": "recalibrated",
                         "debiased_ece": 0.01, "debiased_ci_low": 0.0, "debiased_ci_high": 0.02,
                         "n": 160, "perfect_debiased_median": 0.005}])  # fmt: skip
    evidence = TableSet({"operating": ops, "calibration": cal, "thresholds": thresholds})
    decisions, criteria = decide_brief(evidence, policy)
    dec = decisions.set_index("category")
    assert dec.loc["effusion", "decision"] == "NO-GO"
    assert "sensitivity not met" in dec.loc["effusion", "reasons"]
    crit = criteria.set_index(["category", "criterion"])
    sens = crit.loc[("effusion", "sensitivity")]
    assert not sens["passed"] and "not estimable (no yes image" in sens["detail"]
    assert dec.loc["cardiomegaly", "decision"] == "NO-GO"
    assert "no operating threshold" in crit.loc[("cardiomegaly", "specificity"), "detail"]
    assert set(dec.index[dec["decision"] == "GO"]) == {"consolidation", "interstitial_opacity"}
    assert dec.loc["overall", "decision"] == "NO-GO"
    plan = monitoring_plan(evidence, TableSet({"decisions": decisions}), policy)
    assert plan["item"].str.contains("cardiomegaly: no threshold yet").any()
