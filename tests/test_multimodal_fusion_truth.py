"""Fusion beats each single modality where the simulator made the *other* modality informative.

The truth sidecar says which categories the simulator made separable mainly by the photo
(``image``) and which mainly by the note (``text``). The study's arms, trained by its model stage
on the development clinics (the demo-scale clinics, the arms at 32 px), are scored at the
held-out clinic: on the note-informed categories the fusion arms must recall more than the
image-only arm, and on the photo-informed categories more than the note-only arm.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clinaudit.sources.derm_pairs import ingest_derm_batch
from clinaudit.sources.derm_simulator import simulate_derm_clinic
from clinaudit.sources.derm_sites import DEVELOPMENT_CLINICS, HELD_OUT_CLINIC, SCALES
from clinaudit.sources.derm_truth import read_derm_truth
from clinaudit.studies.base import ModelSpec, RunDirs
from clinaudit.studies.multimodal_triage.model import PROB_PREFIX, predict_clinic, resolve_model
from clinaudit.studies.multimodal_triage.policy import SHIPPED_POLICY, MultimodalPolicy

STUDY = "multimodal_triage"
#: The demo scale's clinics (2,140 development pairs, 360 held out), the arms at 32 px.
IMAGE_SIZE = 32
KEY = b"k" * 32


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("fusion_truth")
    dirs = RunDirs(*(home / d for d in ("landing", "artifacts", "quarantine", "reports", "keys")))
    tables = {}
    for clinic in (*DEVELOPMENT_CLINICS, HELD_OUT_CLINIC):
        summary = simulate_derm_clinic(
            dirs.landing, truth_root=home / "truth", clinic=clinic, scale=SCALES["demo"],
            seed=0, workers=2,
        )  # fmt: skip
        tables[clinic] = ingest_derm_batch(summary.batch_dir, pseudonym_key=KEY).table
    policy = MultimodalPolicy.load(SHIPPED_POLICY)
    spec = ModelSpec(device="cpu", training={"image_size": IMAGE_SIZE, "num_threads": 1})
    reference = pd.concat([tables[c] for c in DEVELOPMENT_CLINICS], ignore_index=True)
    model = resolve_model(spec, reference=reference, dirs=dirs, log=lambda m: None, policy=policy)
    held = tables[HELD_OUT_CLINIC]
    pred, _ = predict_clinic(model, held, clinic=HELD_OUT_CLINIC, spec=spec, dirs=dirs,
                             log=lambda m: None)  # fmt: skip
    truth = read_derm_truth(home / "truth", STUDY, HELD_OUT_CLINIC, "b-0001")
    return held, pred[pred["notes_removed"] == 0.0], truth, policy


def _recall(held: pd.DataFrame, pred: pd.DataFrame, arm: str, cats: list[str], labels) -> float:
    p = pred[pred["arm"] == arm].set_index("image_id").loc[held["image_id"]]
    predicted = np.asarray(labels)[p[[f"{PROB_PREFIX}{c}" for c in labels]].to_numpy().argmax(1)]
    y = held["category"].to_numpy()
    return float(np.mean([(predicted[y == c] == c).mean() for c in cats]))


def test_fusion_beats_each_modality_on_the_categories_the_other_one_informs(scored) -> None:
    held, pred, truth, policy = scored
    by_text, by_image = truth.informative("text"), truth.informative("image")
    assert by_text and by_image and not set(by_text) & set(by_image)
    # The sidecar describes the photos audited here (same ids, same categories).
    assert {Path(i).stem for i in truth.table["img_id"]} == set(held["image_id"])
    labels = list(policy.labels)
    recall = {
        (arm, group): _recall(held, pred, arm, cats, labels)
        for arm in policy.model.arms
        for group, cats in (("text", by_text), ("image", by_image))
    }
    print(recall)
    for fused in policy.model.fusion_arms:
        assert recall[(fused, "text")] > recall[("image_only", "text")] + 0.05, recall
        assert recall[(fused, "image")] > recall[("text_only", "image")] + 0.05, recall
