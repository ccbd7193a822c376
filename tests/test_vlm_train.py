"""Adult pretraining, LoRA tune, merge and the VLM package (tiny scale)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from peft import PeftModel

from clinaudit.models.package import ModelPackageError
from clinaudit.models.vlm.adapters import create_vlm
from clinaudit.models.vlm.adult_data import CATEGORIES, adult_pretraining_pairs, caption
from clinaudit.models.vlm.config import CAPTION_PROMPT, VlmConfig, vqa_prompt
from clinaudit.models.vlm.package import (
    VlmCard,
    load_vlm_package,
    save_vlm_package,
    vlm_package_sha256,
)
from clinaudit.models.vlm.tokenizer import train_vqa_tokenizer
from clinaudit.models.vlm.train import (
    TrainSettings,
    lora_finetune,
    lora_modules_by_tower,
    merge_lora,
    pretrain_base,
)


@pytest.fixture(scope="module")
def data():
    images, questions, answers, captions = adult_pretraining_pairs(24, size=32, seed=5)
    texts = [vqa_prompt(q) for qs in questions for q in qs] + [CAPTION_PROMPT, *captions]
    tok = train_vqa_tokenizer(texts, vocab_size=96)
    return images, questions, answers, captions, tok


def tiny(tok, kind="paligemma"):
    cfg = VlmConfig(
        kind, vocab_size=len(tok), image_size=32, patch_size=8, vision_hidden=32,
        vision_heads=2, vision_intermediate=64, text_hidden=32, text_heads=2,
        text_intermediate=64,
    )  # fmt: skip
    return create_vlm(kind, cfg, tok, seed=0)


def test_adult_pairs_are_per_image_and_balanced():
    images, questions, answers, captions = adult_pretraining_pairs(200, size=16, seed=1)
    assert images.shape == (200, 16, 16) and images.dtype == np.float32
    assert 0 <= images.min() and images.max() <= 1
    assert all(len(q) == len(a) == len(CATEGORIES) for q, a in zip(questions, answers, strict=True))
    share = np.mean([a == "yes" for row in answers for a in row])
    assert 0.4 < share < 0.6
    for row, cap in zip(answers, captions, strict=True):
        present = [c for c, a in zip(CATEGORIES, row, strict=True) if a == "yes"]
        assert cap == caption(present)
    again = adult_pretraining_pairs(3, size=16, seed=1)
    np.testing.assert_array_equal(again[0], images[:3])


def test_pretraining_lowers_the_loss_deterministically(data):
    images, questions, answers, captions, tok = data
    settings = TrainSettings(epochs=4, batch_images=8, lr=1e-2, warmup_frac=0.0)
    runs = []
    for _ in range(2):
        adapter, model = tiny(tok)
        lines: list[str] = []
        runs.append(
            pretrain_base(
                adapter,
                model,
                tok,
                images,
                questions,
                answers,
                captions=captions,
                settings=settings,
                seed=0,
                log=lines.append,
            )  # fmt: skip
        )
    result = runs[0]
    assert result.epoch_losses[-1] < 0.8 * result.epoch_losses[0]
    assert runs[1].epoch_losses == result.epoch_losses
    assert result.n_trainable == result.n_parameters
    assert result.n_sequences == 24 * (len(CATEGORIES) + 1) and result.steps == 12
    assert len(lines) == 4 and "loss" in lines[0]
    summary = result.summary()
    assert json.loads(json.dumps(summary))["settings"]["lr"] == 1e-2


def test_lora_trains_only_adapters_then_merges(data, tmp_path):
    images, questions, answers, _, tok = data
    adapter, model = tiny(tok, kind="idefics3")
    vision_before = {k: v.clone() for k, v in adapter.vision_tower(model).state_dict().items()}
    settings = TrainSettings(epochs=2, batch_images=8, lr=5e-3)
    peft_model, result = lora_finetune(
        adapter, model, tok, images, questions, answers, rank=4, alpha=8, dropout=0.0,
        settings=settings, seed=1,
    )  # fmt: skip
    assert isinstance(peft_model, PeftModel)
    assert lora_modules_by_tower(peft_model) == {"vision": 0, "language": 8, "other": 0}
    assert 0 < result.n_trainable < result.n_parameters / 10
    assert result.lora["modules_by_tower"]["vision"] == 0
    trained = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    for k, v in adapter.vision_tower(peft_model).state_dict().items():
        assert torch.equal(v, vision_before[k]), k
    pv = adapter.pixel_values(images[:4])
    prompts = [vqa_prompt(q[0]) for q in questions[:4]]
    with torch.no_grad():
        before = adapter.full_logits(peft_model, pv, prompts)
        merged = merge_lora(peft_model)
        after = adapter.full_logits(merged, pv, prompts)
    assert not isinstance(merged, PeftModel)
    torch.testing.assert_close(before, after, atol=1e-5, rtol=0)

    card = VlmCard(
        vendor="clinaudit test", intended_use="unit test", pretraining=None,
        lora=result.summary(),
    )  # fmt: skip
    path = save_vlm_package(tmp_path / "pkg", adapter, merged, card)
    loaded = load_vlm_package(path)
    assert loaded.config == adapter.config and loaded.card.lora["lora"]["rank"] == 4
    assert loaded.sha256 == vlm_package_sha256(path)
    with torch.no_grad():
        again = loaded.adapter.full_logits(loaded.model, pv, prompts)
    torch.testing.assert_close(after, again, atol=1e-6, rtol=0)
    with pytest.raises(ModelPackageError, match="already holds"):
        save_vlm_package(path, adapter, merged, card)


def test_package_round_trip_and_tamper_detection(data, tmp_path):
    *_, tok = data
    adapter, model = tiny(tok)  # PaliGemma: tied LM head and embedding
    path = save_vlm_package(tmp_path / "pg", adapter, model, VlmCard("v", "test"))
    card = json.loads((path / "model_card.json").read_text())
    assert card["kind"] == "paligemma" and "answer yes or no" in card["prompt_format"]
    loaded = load_vlm_package(path)
    for (k, a), (_, b) in zip(
        model.state_dict().items(), loaded.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), k
    weights = path / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(ModelPackageError, match="sha256 of model.safetensors differs"):
        load_vlm_package(path)
    (tmp_path / "pg2").mkdir()
    (tmp_path / "pg2" / "model.bin").write_bytes(b"x")
    with pytest.raises(ModelPackageError, match="pickle"):
        save_vlm_package(tmp_path / "pg2", adapter, model, VlmCard("v", "test"))
