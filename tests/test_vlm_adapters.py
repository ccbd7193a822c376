"""Tiny PaliGemma / LLaVA / Idefics3 models through the adapter interface (real HF classes)."""

from __future__ import annotations

import doctest
import importlib
import json
import re

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model

from clinaudit.models.vlm.adapters import VLM_REGISTRY, create_vlm, load_local_vlm
from clinaudit.models.vlm.answer import (
    answer_token_ids,
    generate_answers_naive,
    p_yes,
    score_questions,
    yes_no_logit,
)
from clinaudit.models.vlm.config import VLM_KINDS, VlmConfig, vqa_prompt
from clinaudit.models.vlm.tokenizer import (
    IMAGE_ID,
    load_vqa_tokenizer,
    save_vqa_tokenizer,
    train_vqa_tokenizer,
)
from clinaudit.models.vlm.train import LoraPlacementError, check_lora_placement

KINDS = list(VLM_KINDS)
TEXTS = ["is the heart enlarged?", "is there a pleural effusion?", "yes", "no", "caption"]
QUESTIONS = ["is the heart enlarged?", "is there a pleural effusion?", "is the heart big?"]


def tiny(kind: str, tok, seed: int = 0):
    cfg = VlmConfig(
        kind, vocab_size=len(tok), image_size=32, patch_size=8, vision_hidden=32,
        vision_heads=2, vision_intermediate=64, text_hidden=32, text_heads=2,
        text_intermediate=64,
    )  # fmt: skip
    return create_vlm(kind, cfg, tok, seed=seed)


@pytest.fixture(scope="module")
def tok():
    return train_vqa_tokenizer(TEXTS, vocab_size=64)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)


def test_tokenizer_answers_are_single_tokens_and_bytes_are_deterministic(tmp_path, tok):
    assert [len(tok(w, add_special_tokens=False)["input_ids"]) for w in ("yes", "No")] == [1, 1]
    assert tok.convert_tokens_to_ids(["<pad>", "<bos>", "<eos>", "<unk>", "<image>"]) == [
        0, 1, 2, 3, 4,
    ]  # fmt: skip
    a = save_vqa_tokenizer(tok, tmp_path / "a").read_bytes()
    b = save_vqa_tokenizer(train_vqa_tokenizer(TEXTS, vocab_size=64), tmp_path / "b").read_bytes()
    assert a == b
    back = load_vqa_tokenizer(tmp_path / "a")
    assert back("Is the HEART enlarged?")["input_ids"] == tok("is the heart enlarged?")["input_ids"]
    with pytest.raises(ValueError, match="vocab_size=3"):
        train_vqa_tokenizer(TEXTS, vocab_size=3)


def test_unknown_kind_lists_known_ones(tok):
    with pytest.raises(KeyError, match="known kinds: \\['idefics3', 'llava', 'paligemma'\\]"):
        create_vlm("blip", VlmConfig("llava", vocab_size=len(tok)), tok)
    assert sorted(VLM_REGISTRY) == sorted(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_forward_backward_gives_finite_grads_on_the_language_model(kind, tok, images):
    adapter, model = tiny(kind, tok)
    assert type(model).__name__ == adapter.model_class.__name__
    model.train()
    batch = adapter.training_batch(images, [vqa_prompt(q) for q in QUESTIONS], ["yes", "no", "yes"])
    loss = adapter.batch_loss(model, batch)
    loss.backward()
    assert torch.isfinite(loss)
    lm = list(adapter.language_model(model).named_parameters())
    assert lm and all(p.grad is not None and torch.isfinite(p.grad).all() for _, p in lm)
    assert any(float(p.grad.abs().sum()) > 0 for n, p in lm if "q_proj" in n)
    vision = [p for p in adapter.vision_tower(model).parameters() if p.grad is not None]
    assert vision and any(float(p.grad.abs().sum()) > 0 for p in vision)
    # The image-grouped loss equals the class's own forward with one pixel_values row per sequence.
    model.eval()
    with torch.no_grad():
        ours = adapter.batch_loss(model, batch)
        theirs = model(**adapter.model_inputs(batch)).loss
    assert float(ours) == pytest.approx(float(theirs), abs=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_pixel_values_layout(kind, tok, images):
    adapter, _ = tiny(kind, tok)
    pv = adapter.pixel_values(images)
    assert pv.shape == (3, 3, 32, 32)
    assert torch.equal(pv[:, 0], pv[:, 2])
    assert torch.allclose(pv[:, 0], (torch.from_numpy(images) - 0.5) / 0.5)
    inputs = adapter.generate_inputs(pv[:1], vqa_prompt("is the heart enlarged?"))
    assert inputs["pixel_values"].ndim == (5 if kind == "idefics3" else 4)
    assert int((inputs["input_ids"] == IMAGE_ID).sum()) == adapter.config.n_image_tokens
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        adapter.pixel_values(images + 1)


def test_paligemma_training_batch_marks_prefix_and_suffix(tok, images):
    adapter, _ = tiny("paligemma", tok)
    prompts = [vqa_prompt("is the heart enlarged?"), vqa_prompt("is the heart big?")]
    batch = adapter.training_batch(images[:1], prompts, ["yes", "no"], image_index=[0, 0])
    n_img = adapter.config.n_image_tokens
    yes, no = answer_token_ids(tok)
    for row, answer in enumerate((yes, no)):
        prefix = len(adapter.prompt_ids(prompts[row]))
        ids, types = batch.input_ids[row], batch.token_type_ids[row]
        labels, mask = batch.labels[row], batch.attention_mask[row]
        assert ids[:n_img].eq(IMAGE_ID).all() and int(ids[n_img]) == tok.bos_token_id
        assert types[:prefix].eq(0).all() and types[prefix : prefix + 2].eq(1).all()
        assert labels[:prefix].eq(-100).all()
        assert labels[prefix : prefix + 2].tolist() == [answer, tok.eos_token_id]
        assert labels[mask == 0].eq(-100).all()
    assert batch.image_index.tolist() == [0, 0]
    llava, _ = tiny("llava", tok)
    assert llava.training_batch(images[:1], prompts[:1], ["yes"]).token_type_ids is None


@pytest.mark.parametrize("kind", KINDS)
def test_cached_prefill_equals_full_forward_and_naive_generate(kind, tok, images):
    adapter, model = tiny(kind, tok, seed=3)
    prompts = [vqa_prompt(q) for q in QUESTIONS]
    pv = adapter.pixel_values(images)
    with torch.no_grad():
        cached = adapter.prefill(model, adapter.encode_images(model, pv), prompts)
        full = adapter.full_logits(model, pv, prompts)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=0)
    keyed = {"a": images[0], "b": images[1]}
    items = [("a", QUESTIONS[0]), ("b", QUESTIONS[1]), ("a", QUESTIONS[2]), ("b", QUESTIONS[0])]
    fast = score_questions(adapter, model, keyed, items, batch_size=3)
    naive = generate_answers_naive(adapter, model, keyed, items)
    np.testing.assert_allclose(fast, naive, atol=1e-5)
    # Reference: one full forward per question, unbatched.
    for (key, q), z in zip(items, fast, strict=True):
        with torch.no_grad():
            ref = adapter.full_logits(
                model, adapter.pixel_values(keyed[key][None]), [vqa_prompt(q)]
            )
        assert z == pytest.approx(float(yes_no_logit(ref, tok)[0]), abs=1e-5)
    assert np.ptp(fast) > 0


def test_p_yes_is_the_two_way_softmax(tok, images):
    adapter, model = tiny("paligemma", tok, seed=1)
    with torch.no_grad():
        logits = adapter.full_logits(
            model, adapter.pixel_values(images), [vqa_prompt(q) for q in QUESTIONS]
        )
    yes, no = answer_token_ids(tok)
    two_way = torch.softmax(logits[:, [yes, no]].double(), dim=-1)[:, 0].numpy()
    np.testing.assert_allclose(p_yes(yes_no_logit(logits, tok)), two_way, rtol=1e-6)
    assert p_yes(np.array([0.0, 50.0, -50.0])) == pytest.approx([0.5, 1.0, 0.0])


@pytest.mark.parametrize("kind", KINDS)
def test_lora_pattern_hits_the_language_model_only(kind, tok):
    adapter, model = tiny(kind, tok)
    names = [n for n, _ in model.named_modules()]
    naive_hits = [n for n in names if n.split(".")[-1] in ("q_proj", "k_proj", "v_proj", "o_proj")]
    vision_prefix = adapter.vision_tower_path + "."
    # A plain list of names would put LoRA in the vision tower too: the guard matters.
    assert any(n.startswith(vision_prefix) for n in naive_hits)
    ours = [n for n in names if re.fullmatch(adapter.lm_lora_pattern, n)]
    assert ours and all(n.startswith(adapter.language_model_path + ".") for n in ours)
    assert len(ours) == 4 * adapter.config.text_layers
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=adapter.lm_lora_pattern))
    counts = check_lora_placement(peft_model)
    assert counts["vision"] == 0 and counts["language"] == 4 * adapter.config.text_layers
    _, fresh = tiny(kind, tok)
    naive = get_peft_model(
        fresh, LoraConfig(r=2, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    )
    with pytest.raises(LoraPlacementError, match="vision") as info:
        check_lora_placement(naive)
    assert info.value.counts["vision"] > 0


@pytest.mark.parametrize("kind", KINDS)
def test_from_local_round_trip(kind, tok, images, tmp_path):
    adapter, model = tiny(kind, tok, seed=2)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    )
    back, loaded = load_local_vlm(kind, tmp_path)
    assert type(loaded) is type(model) and back.config == adapter.config
    assert loaded.config.vision_config._attn_implementation == "eager"
    prompts = [vqa_prompt(q) for q in QUESTIONS]
    with torch.no_grad():
        a = adapter.prefill(
            model, adapter.encode_images(model, adapter.pixel_values(images)), prompts
        )
        b = back.prefill(loaded, back.encode_images(loaded, back.pixel_values(images)), prompts)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    with pytest.raises(FileNotFoundError):
        load_local_vlm(kind, tmp_path / "missing")


def test_the_registry_examples_run() -> None:
    result = doctest.testmod(importlib.import_module("clinaudit.models.vlm.registry"))
    assert result.attempted >= 1 and result.failed == 0
