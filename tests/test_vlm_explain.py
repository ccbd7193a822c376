"""Grad-CAM, attention rollout and the randomised copy for the three VLM classes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clinaudit.models.vlm.adapters import create_vlm
from clinaudit.models.vlm.config import VLM_KINDS, VlmConfig
from clinaudit.models.vlm.explain import (
    attention_rollout_map,
    gradcam_map,
    randomized_copy,
    upsample_map,
)
from clinaudit.models.vlm.tokenizer import train_vqa_tokenizer

Q = "is the heart enlarged?"


@pytest.fixture(scope="module")
def tok():
    return train_vqa_tokenizer([Q, "yes", "no"], vocab_size=32)


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(2).random((32, 32)).astype(np.float32)


def tiny(kind, tok):
    cfg = VlmConfig(
        kind, vocab_size=len(tok), image_size=32, patch_size=8, vision_hidden=32,
        vision_heads=2, vision_intermediate=64, text_hidden=32, text_heads=2,
        text_intermediate=64,
    )  # fmt: skip
    return create_vlm(kind, cfg, tok, seed=4)


@pytest.mark.parametrize("kind", list(VLM_KINDS))
def test_gradcam_and_rollout_maps(kind, tok, image):
    adapter, model = tiny(kind, tok)
    for p in model.parameters():  # frozen weights (as under LoRA) must still give a map
        p.requires_grad_(False)
    cam = gradcam_map(adapter, model, image, Q)
    assert cam.shape == (4, 4) and np.isfinite(cam).all()
    assert cam.max() == pytest.approx(1.0) and cam.min() >= 0 and (cam > 0).sum() >= 1
    rollout = attention_rollout_map(adapter, model, image)
    assert rollout.shape == (4, 4)
    assert rollout.min() == pytest.approx(0.0) and rollout.max() == pytest.approx(1.0)
    assert np.ptp(rollout) > 0
    other = gradcam_map(adapter, randomized_copy(model, seed=9), image, Q)
    assert other.shape == cam.shape and not np.allclose(other, cam)
    assert upsample_map(cam, 32).shape == (32, 32)


def test_randomized_copy_leaves_the_model_alone(tok):
    adapter, model = tiny("paligemma", tok)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copy = randomized_copy(model, seed=0)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    changed = [k for k, v in copy.state_dict().items() if not torch.equal(v, before[k])]
    assert any("vision_tower" in k for k in changed) and any("language_model" in k for k in changed)
    lm_head = copy.get_output_embeddings().weight
    assert torch.equal(lm_head, copy.get_input_embeddings().weight)  # still tied


def test_upsample_map_validates():
    up = upsample_map(np.array([[0.0, 1.0], [1.0, 0.0]]), 8)
    assert up.shape == (8, 8) and 0 <= up.min() and up.max() <= 1
    with pytest.raises(ValueError, match="2-D"):
        upsample_map(np.zeros(4), 8)
