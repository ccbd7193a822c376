"""A tiny local checkpoint the way a downloaded vision-language model sits on disk: its own
fast tokenizer (WordPiece, Gemma's special-token order, ``<image>`` last) and a Hugging Face
config the small ``VlmConfig`` cannot express (grouped-query attention), saved with
``save_pretrained``. Stands in for a real PaliGemma / LLaVA / SmolVLM folder (nothing is
downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from clinaudit.models.vlm.adapters import VLM_REGISTRY
from clinaudit.models.vlm.config import CAPTION_PROMPT, VlmConfig, vqa_prompt
from clinaudit.studies.peds_vqa.questions import TEMPLATES

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]  # Gemma's order, unlike clinaudit's


def checkpoint_tokenizer() -> PreTrainedTokenizerFast:
    texts = [vqa_prompt(q) for fam in TEMPLATES.values() for q in fam]
    texts += [CAPTION_PROMPT, "yes", "no", "yes no"] * 3
    backend = Tokenizer(models.WordPiece(unk_token="<unk>"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.train_from_iterator(
        texts, trainers.WordPieceTrainer(vocab_size=400, special_tokens=SPECIALS)
    )
    backend.add_special_tokens(["<image>"])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
        unk_token="<unk>", padding_side="right",
    )  # fmt: skip


def save_tiny_checkpoint(path: Path, kind: str = "paligemma", *, model_type: str | None = None,
                         image_size: int = 32, seed: int = 0) -> Path:  # fmt: skip
    """Write a checkpoint of ``kind`` into ``path``; ``model_type`` re-labels its config.json
    (e.g. ``smolvlm`` for an Idefics3-shaped model, ``llava_next`` for an unsupported one)."""
    tok = checkpoint_tokenizer()
    cfg = VlmConfig(
        kind, vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, image_token_id=tok.convert_tokens_to_ids("<image>"),
        image_size=image_size, patch_size=8, vision_hidden=32, vision_heads=2,
        vision_intermediate=64, text_hidden=32, text_heads=2, text_intermediate=64,
    )  # fmt: skip
    adapter_class = VLM_REGISTRY[kind]
    hf = adapter_class._hf_config(cfg)
    hf.text_config.num_key_value_heads = 1  # grouped-query attention: not in VlmConfig
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = adapter_class.model_class._from_config(hf, attn_implementation="eager")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}), encoding="utf-8"
    )
    if model_type is not None:
        doc = json.loads((path / "config.json").read_text(encoding="utf-8"))
        doc["model_type"] = model_type
        (path / "config.json").write_text(json.dumps(doc), encoding="utf-8")
    return path
