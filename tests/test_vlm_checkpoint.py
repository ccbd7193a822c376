"""A local checkpoint (``--base-model``) read through the adapters, packaged and read back with
its own class configuration and tokenizer; the peds_vqa study reads its kind from config.json."""

from __future__ import annotations

import time

import pytest
import torch
from vlm_checkpoint import save_tiny_checkpoint

from clinaudit.audit.types import AuditInputError
from clinaudit.models.vlm.answer import answer_token_ids
from clinaudit.models.vlm.config import vqa_prompt
from clinaudit.models.vlm.package import VlmCard, load_vlm_package, save_vlm_package
from clinaudit.models.vlm.registry import load_local_vlm, local_vlm_kind
from clinaudit.studies import get_study
from clinaudit.studies.base import ModelSpec

QUESTIONS = ["is the heart enlarged?", "is there a pleural effusion?"]


@pytest.mark.parametrize(
    ("kind", "model_type", "expected_class"),
    [
        ("paligemma", None, "PaliGemmaForConditionalGeneration"),
        ("llava", None, "LlavaForConditionalGeneration"),
        ("idefics3", None, "Idefics3ForConditionalGeneration"),
        ("idefics3", "smolvlm", "SmolVLMForConditionalGeneration"),
    ],
)
def test_the_kind_is_read_from_config_json(tmp_path, kind, model_type, expected_class) -> None:
    path = save_tiny_checkpoint(tmp_path / "ckpt", kind, model_type=model_type)
    assert local_vlm_kind(path) == kind
    adapter, model = load_local_vlm(None, path)
    assert type(model).__name__ == expected_class and adapter.kind == kind
    assert adapter.hf_config["model_type"] == (model_type or kind)
    assert next(model.parameters()).dtype == torch.float32


def test_an_unsupported_or_missing_checkpoint_is_named(tmp_path) -> None:
    path = save_tiny_checkpoint(tmp_path / "next", "llava", model_type="llava_next")
    with pytest.raises(ValueError, match=r"llava_next.*supported: idefics3 \(idefics3\)"):
        local_vlm_kind(path)
    with pytest.raises(ValueError, match="not a paligemma checkpoint"):
        load_local_vlm("paligemma", save_tiny_checkpoint(tmp_path / "llava", "llava"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        local_vlm_kind(tmp_path / "empty")


def test_a_package_of_a_checkpoint_model_keeps_its_class_config_and_tokenizer(tmp_path) -> None:
    path = save_tiny_checkpoint(tmp_path / "ckpt", "paligemma", seed=3)
    adapter, model = load_local_vlm(None, path)
    tok = adapter.tokenizer
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) == (0, 1, 2)  # Gemma order
    save_vlm_package(tmp_path / "pkg", adapter, model,
                     VlmCard(vendor="test", intended_use="test"))  # fmt: skip
    back = load_vlm_package(tmp_path / "pkg")
    # grouped-query attention survives: the class is rebuilt from the checkpoint's config
    assert back.model.config.text_config.num_key_value_heads == 1
    assert type(back.model) is type(model)
    assert back.tokenizer.get_vocab() == tok.get_vocab()
    assert answer_token_ids(back.tokenizer) == answer_token_ids(tok)
    prompts = [vqa_prompt(q) for q in QUESTIONS]
    images = torch.rand(2, 32, 32).numpy()
    with torch.no_grad():
        a = adapter.prefill(model, adapter.encode_images(model, adapter.pixel_values(images)),
                            prompts)  # fmt: skip
        b = back.adapter.prefill(
            back.model, back.adapter.encode_images(back.model, back.adapter.pixel_values(images)),
            prompts,
        )  # fmt: skip
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_peds_vqa_reads_the_kind_and_fingerprints_the_checkpoint_files(tmp_path) -> None:
    study = get_study("peds_vqa")
    path = save_tiny_checkpoint(tmp_path / "smol", "idefics3", model_type="smolvlm")
    spec = ModelSpec(training={"base_model": str(path)})
    first, meta = study.model_fingerprint(spec)
    settings = meta["training"]["training"]
    assert settings["kind"] == "idefics3"
    # pretraining settings are not used with a checkpoint, so they are not reported as used
    assert "adult_images" not in settings and "image_size" not in settings
    with pytest.raises(AuditInputError, match="config.json says 'idefics3'"):
        study.model_fingerprint(ModelSpec(training={"base_model": str(path), "kind": "llava"}))
    with pytest.raises(AuditInputError, match="no config.json"):
        study.model_fingerprint(ModelSpec(training={"base_model": str(tmp_path)}))
    time.sleep(0.01)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # replaced in place: same name, new file
    assert study.model_fingerprint(spec)[0] != first
