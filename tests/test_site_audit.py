"""Multi-site assembly: stale or foreign predictions are refused; drift uses held-out reference."""

import numpy as np
import pandas as pd
import pytest

from clinaudit.audit.partitions import UnitWords, usable_partitions
from clinaudit.audit.reference_audit import (
    SCORE_PREFIX,
    drift_features,
    reference_label,
    run_site_audit,
    scored_frame,
)
from clinaudit.audit.types import AuditInputError


def _site(site: str, n: int, seed: int, split: str = "eval") -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    ids = [f"{site}_{i}" for i in range(n)]
    y = rng.integers(0, 2, n).astype(float)
    labels = pd.DataFrame(
        {
            "image_id": ids,
            "patient_pseudonym": [f"{i // 2:016x}" for i in range(n)],
            "split": split if split != "mixed" else np.where(np.arange(n) % 2, "train", "test"),
            "A": y,
            "quality": rng.normal(size=n),
        }
    )
    preds = pd.DataFrame(
        {"image_id": ids, "A": np.clip(0.3 * y + rng.random(n) * 0.7, 0, 1), "model_sha256": "m1"}
    )
    return labels, preds


def test_scored_frame_refuses_foreign_or_stale_predictions() -> None:
    ref_l, ref_p = _site("ref", 80, 0, "mixed")
    a_l, a_p = _site("a", 60, 1)
    frame = scored_frame(
        {"ref": ref_l, "a": a_l}, {"ref": ref_p, "a": a_p}, targets=["A"], reference_site="ref",
        model_sha256="m1",
    )  # fmt: skip
    assert set(frame["group"]) == {reference_label("ref"), "a"}
    assert (frame["group"] == reference_label("ref")).sum() == 40  # the train half is left out
    with pytest.raises(AuditInputError, match="only the audited model m2"):
        scored_frame({"a": a_l}, {"a": a_p}, targets=["A"], model_sha256="m2")
    stale = a_l.iloc[:50]  # ingest re-ran, predictions did not
    with pytest.raises(AuditInputError, match="10 predictions for images not in the validated"):
        scored_frame({"a": stale}, {"a": a_p}, targets=["A"])
    audit = run_site_audit(
        frame, targets=["A"], thresholds={"A": 0.5}, reference_group=reference_label("ref"),
    )  # fmt: skip
    assert set(audit.discrimination.table["group"]) == {reference_label("ref"), "a"}
    assert audit.worst is not None


def test_drift_reference_is_the_held_out_split() -> None:
    ref_l, ref_p = _site("ref", 80, 0, "mixed")
    a_l, a_p = _site("a", 60, 1)
    empty = a_l.iloc[:0]
    feats = drift_features(
        {"ref": ref_l, "a": a_l, "gone": empty},
        {"ref": ref_p, "a": a_p},
        features=["quality"],
        targets=["A"],
        reference_site="ref",
    )
    assert set(feats) == {"ref", "a"}  # a site without rows is left out
    assert len(feats["ref"]) == 40 and set(feats["ref"].columns) >= {"quality", SCORE_PREFIX + "A"}
    held_out = ref_l[ref_l["split"] == "test"]["image_id"].tolist()
    assert feats["ref"]["image_id"].tolist() == held_out


def test_usable_partitions_lists_stale_foreign_and_missing_sites_with_reasons() -> None:
    a_l, a_p = _site("a", 40, 1)
    b_l, b_p = _site("b", 40, 2)
    c_l, c_p = _site("c", 40, 3)
    d_l, _ = _site("d", 40, 4)
    b_l = pd.concat([b_l, _site("b2", 5, 5)[0]])  # new images landed, not yet scored
    c_p = c_p.assign(model_sha256="m2")

    def identity(site: str) -> str:
        if site == "f":
            raise AuditInputError("scores", "no file", "one per site", "add f.csv")
        return "m1"

    sites, left_out = usable_partitions(
        {"a": a_l, "b": b_l, "c": c_l, "d": d_l, "e": a_l.iloc[:0], "f": a_l},
        {"a": a_p, "b": b_p, "c": c_p, "f": a_p},
        id_column="image_id",
        identity=identity,
    )
    assert sites == ["a"]
    assert set(left_out) == {"b", "c", "d", "e", "f"}
    assert "stale" in left_out["b"] and "5 validated images without a prediction" in left_out["b"]
    assert "not the audited" in left_out["c"]
    assert left_out["d"] == "no predictions yet (re-run the site's predictions)"
    assert left_out["e"] == "no validated images"
    assert left_out["f"] == "no scores for this site: add f.csv"  # left out, not a crash
    stays = UnitWords("stay", "score", "hospital")
    _, words = usable_partitions({"b": b_l}, {"b": b_p}, id_column="image_id", words=stays)
    assert words["b"].startswith("predictions are stale: 5 validated stays without a score, 0")
    assert words["b"].endswith("(re-run the hospital's predictions)")
