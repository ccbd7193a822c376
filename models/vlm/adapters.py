"""One interface over three Hugging Face vision-language classes, and a registry of them.

:class:`VlmAdapter` wraps the REAL ``PaliGemmaForConditionalGeneration``,
``LlavaForConditionalGeneration`` and ``Idefics3ForConditionalGeneration`` (the SmolVLM class):
:meth:`~VlmAdapter.build` makes one from a small :class:`~.config.VlmConfig` (nothing downloaded,
``attn_implementation="eager"`` so attention weights exist for :mod:`.explain`),
:meth:`~VlmAdapter.from_local` loads a saved checkpoint and its tokenizer with
``local_files_only=True``. Registry in the timm style: :func:`register_vlm`, :func:`create_vlm`,
:func:`load_local_vlm`; an unknown kind lists the known ones.

The three classes differ in ways that silently break a naive pipeline:

* Pixel layout: PaliGemma / LLaVA take ``(B, 3, H, W)``; Idefics3 takes ``(B, n_images, 3, H, W)``
  and DROPS every image whose normalised pixels are all 0 as "padding" (a uniform grey film at
  the normalisation mean would vanish; :meth:`~VlmAdapter.encode_images` then raises).
* Image tokens: PaliGemma / LLaVA put one LM token per patch (LLaVA's CLIP adds a class token,
  which ``vision_feature_select_strategy="default"`` drops; ``vision_feature_layer=-1`` here
  so the tower's last layer is used and trained); Idefics3 pixel-shuffles ``scale_factor**2``
  patches into one token.
* PaliGemma's mask: ``token_type_ids`` 0 marks the prefix (image + question, attended
  bidirectionally), 1 the suffix (answer, causal). Training needs 0/1 and labels -100 on the
  prefix; scoring passes 0 on the whole prefix. Without ``token_type_ids`` the prefix is causal
  and training no longer matches the model's published use.
* Module names: the language model is ``model.language_model`` (PaliGemma, LLaVA) but
  ``model.text_model`` (Idefics3); SigLIP and CLIP vision towers ALSO have ``q_proj``/``k_proj``/
  ``v_proj`` modules, so peft's ``target_modules=["q_proj", ...]`` would put LoRA in the vision
  tower too. :attr:`VlmAdapter.lm_lora_pattern` is a regex (peft full-matches a string
  ``target_modules`` against module names) restricted to the language model.

Cached features (:meth:`~VlmAdapter.prefill`, :meth:`~VlmAdapter.batch_loss`) go in through
``inputs_embeds``: the token embeddings with the image features scattered at the ``<image>``
positions, exactly what each class's forward does with ``pixel_values`` (tested to 1e-5).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    SmolVLMForConditionalGeneration,
)

from clinaudit.models.vlm.base import VlmAdapter, VlmBatch, unwrap_model
from clinaudit.models.vlm.config import VlmConfig
from clinaudit.models.vlm.registry import (
    VLM_REGISTRY,
    create_vlm,
    load_local_vlm,
    local_vlm_kind,
    register_vlm,
)

__all__ = [
    "VLM_REGISTRY",
    "Idefics3Adapter",
    "LlavaAdapter",
    "PaliGemmaAdapter",
    "VlmAdapter",
    "VlmBatch",
    "create_vlm",
    "load_local_vlm",
    "local_vlm_kind",
    "register_vlm",
    "unwrap_model",
]


def _vision(c: VlmConfig, model_type: str | None) -> dict[str, Any]:
    d = {
        "hidden_size": c.vision_hidden,
        "intermediate_size": c.vision_intermediate,
        "num_hidden_layers": c.vision_layers,
        "num_attention_heads": c.vision_heads,
        "image_size": c.image_size,
        "patch_size": c.patch_size,
    }
    return d if model_type is None else {"model_type": model_type, **d}


def _text(c: VlmConfig, model_type: str) -> dict[str, Any]:
    return {
        "model_type": model_type,
        "hidden_size": c.text_hidden,
        "intermediate_size": c.text_intermediate,
        "num_hidden_layers": c.text_layers,
        "num_attention_heads": c.text_heads,
        "num_key_value_heads": c.text_heads,
        "head_dim": c.text_hidden // c.text_heads,
        "vocab_size": c.vocab_size,
        "max_position_embeddings": 512,
        "pad_token_id": c.pad_token_id,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
    }


def _common(hf: Any, kind: str, image_token_id: int) -> dict[str, Any]:
    v, t = hf.vision_config, hf.text_config
    return {
        "kind": kind,
        "vocab_size": int(t.vocab_size),
        "image_token_id": int(image_token_id),
        "image_size": int(v.image_size),
        "patch_size": int(v.patch_size),
        "vision_hidden": int(v.hidden_size),
        "vision_layers": int(v.num_hidden_layers),
        "vision_heads": int(v.num_attention_heads),
        "vision_intermediate": int(v.intermediate_size),
        "text_hidden": int(t.hidden_size),
        "text_layers": int(t.num_hidden_layers),
        "text_heads": int(t.num_attention_heads),
        "text_intermediate": int(t.intermediate_size),
    }


@register_vlm
class PaliGemmaAdapter(VlmAdapter):
    """PaliGemma: SigLIP vision tower, linear projector, Gemma LM, prefix-LM mask."""

    kind = "paligemma"
    model_class = PaliGemmaForConditionalGeneration
    local_classes = {"paligemma": PaliGemmaForConditionalGeneration}
    vision_tower_path = "model.vision_tower"
    language_model_path = "model.language_model"
    uses_token_type_ids = True

    @staticmethod
    def _hf_config(config: VlmConfig) -> PaliGemmaConfig:
        return PaliGemmaConfig(
            vision_config=_vision(config, "siglip_vision_model"),
            text_config=_text(config, "gemma"),
            image_token_index=config.image_token_id,
            vocab_size=config.vocab_size,
            projection_dim=config.text_hidden,
            hidden_size=config.text_hidden,
            pad_token_id=config.pad_token_id,
        )

    @staticmethod
    def _config_from_hf(hf: Any) -> VlmConfig:
        return VlmConfig(**_common(hf, "paligemma", hf.image_token_id))

    def _image_features(self, model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        return model.model.get_image_features(pixel_values).pooler_output


@register_vlm
class LlavaAdapter(VlmAdapter):
    """LLaVA: CLIP vision tower (class token dropped), 2-layer MLP projector, Llama LM."""

    kind = "llava"
    model_class = LlavaForConditionalGeneration
    local_classes = {"llava": LlavaForConditionalGeneration}
    vision_tower_path = "model.vision_tower"
    language_model_path = "model.language_model"
    vision_prefix_tokens = 1

    @staticmethod
    def _hf_config(config: VlmConfig) -> LlavaConfig:
        return LlavaConfig(
            vision_config=_vision(config, "clip_vision_model"),
            text_config=_text(config, "llama"),
            image_token_index=config.image_token_id,
            image_seq_length=config.n_image_tokens,
            vision_feature_layer=-1,
            vision_feature_select_strategy="default",
            pad_token_id=config.pad_token_id,
        )

    @staticmethod
    def _config_from_hf(hf: Any) -> VlmConfig:
        if hf.vision_feature_select_strategy != "default" or not isinstance(
            hf.vision_feature_layer, int
        ):
            raise ValueError(
                "only LLaVA checkpoints with vision_feature_select_strategy='default' and one "
                f"vision_feature_layer are supported, got {hf.vision_feature_select_strategy!r} / "
                f"{hf.vision_feature_layer!r}"
            )
        return VlmConfig(**_common(hf, "llava", hf.image_token_id))

    def _image_features(self, model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        return torch.stack(
            list(model.model.get_image_features(pixel_values=pixel_values).pooler_output)
        )


@register_vlm
class Idefics3Adapter(VlmAdapter):
    """Idefics3 (SmolVLM): SigLIP-style tower, pixel shuffle + linear connector, Llama LM."""

    kind = "idefics3"
    model_class = Idefics3ForConditionalGeneration
    #: SmolVLM (v1) checkpoints are idefics3; SmolVLM2's class has the same modules.
    local_classes = {
        "idefics3": Idefics3ForConditionalGeneration,
        "smolvlm": SmolVLMForConditionalGeneration,
    }
    vision_tower_path = "model.vision_model"
    language_model_path = "model.text_model"

    @staticmethod
    def _hf_config(config: VlmConfig) -> Idefics3Config:
        return Idefics3Config(
            vision_config=_vision(config, None),
            text_config=_text(config, "llama"),
            image_token_id=config.image_token_id,
            scale_factor=config.scale_factor,
            pad_token_id=config.pad_token_id,
        )

    @staticmethod
    def _config_from_hf(hf: Any) -> VlmConfig:
        common = _common(hf, "idefics3", hf.image_token_id)
        return VlmConfig(**common, scale_factor=int(hf.scale_factor))

    def _model_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return pixel_values[:, None]  # (B, n_images=1, 3, H, W)

    def _image_features(self, model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        out = model.model.get_image_features(pixel_values[:, None]).pooler_output
        return torch.stack(list(out))
