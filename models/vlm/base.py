"""The adapter interface of the small vision-language models.

:class:`VlmAdapter` is the interface (see :mod:`clinaudit.models.vlm.adapters` for the three
Hugging Face classes behind it and the traps each one sets); :mod:`clinaudit.models.vlm.registry`
builds and loads them by kind.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from clinaudit.models.vlm.config import VlmConfig

_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP = ("gate_proj", "up_proj", "down_proj")
__all__ = ["VlmAdapter", "VlmBatch", "checkpoint_model_type", "unwrap_model"]


@dataclass(frozen=True)
class VlmBatch:
    """Inputs of the language-model loss for a batch of (image, prompt, answer) sequences.

    Attributes
    ----------
    pixel_values : torch.Tensor
        The DISTINCT images of the batch in the class's layout (each encoded once per step).
    image_index : torch.Tensor
        ``(S,)`` int64: row of ``pixel_values`` for each sequence.
    input_ids, attention_mask, labels : torch.Tensor
        ``(S, L)``, right-padded; labels are -100 on the prefix and on padding.
    token_type_ids : torch.Tensor or None
        PaliGemma only: 0 on the prefix, 1 on the suffix (and padding).
    """

    pixel_values: torch.Tensor
    image_index: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    token_type_ids: torch.Tensor | None


def unwrap_model(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside a peft wrapper (the model itself otherwise)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


class VlmAdapter(ABC):
    """A vision-language class behind one interface, bound to a config and a tokenizer.

    Subclasses set the class attributes and implement :meth:`_hf_config`,
    :meth:`_config_from_hf` and :meth:`_image_features`.
    """

    kind: ClassVar[str]
    model_class: ClassVar[type[PreTrainedModel]]
    #: Checkpoint ``model_type`` values (config.json) this adapter loads, and the class for each.
    local_classes: ClassVar[dict[str, type[PreTrainedModel]]]
    vision_tower_path: ClassVar[str]
    language_model_path: ClassVar[str]
    #: Leading non-patch tokens of the vision encoder (CLIP's class token).
    vision_prefix_tokens: ClassVar[int] = 0
    uses_token_type_ids: ClassVar[bool] = False
    #: The full Hugging Face config (``config.to_json_string``) of a model read from a local
    #: checkpoint; ``None`` for a model built from :class:`VlmConfig`. A package of such a model
    #: keeps it (and the checkpoint's tokenizer), since ``VlmConfig`` holds only the sizes.
    hf_config: dict[str, Any] | None = None

    def __init__(self, config: VlmConfig, tokenizer: PreTrainedTokenizerBase) -> None:
        if config.kind != self.kind:
            raise ValueError(f"{type(self).__name__} needs kind={self.kind!r}, got {config.kind!r}")
        ids = {
            "vocab_size": len(tokenizer),
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        }
        wrong = {k: (v, getattr(config, k)) for k, v in ids.items() if v != getattr(config, k)}
        if config.vocab_size > len(tokenizer) and "vocab_size" in wrong:
            wrong.pop("vocab_size")  # a checkpoint's embedding may be padded beyond the tokenizer
        if wrong:
            raise ValueError(
                f"the tokenizer does not fit the config: {{name: (tokenizer, config)}} = {wrong}; "
                "build the config from this tokenizer (VlmConfig(kind, vocab_size=len(tok), ...))"
            )
        self.config = config
        self.tokenizer = tokenizer

    # ----------------------------------------------------------------------------- construction
    @classmethod
    def build(
        cls, config: VlmConfig, tokenizer: PreTrainedTokenizerBase, *, seed: int = 0
    ) -> tuple[VlmAdapter, PreTrainedModel]:
        """Build an untrained model from ``config`` (weights drawn under ``seed``, eager attention).

        Parameters
        ----------
        config : VlmConfig
            Sizes; its token ids must be the tokenizer's.
        tokenizer : transformers.PreTrainedTokenizerBase
            From :func:`~clinaudit.models.vlm.tokenizer.train_vqa_tokenizer`.
        seed : int
            Seed of the weight initialisation (the global torch RNG state is restored after).

        Returns
        -------
        (VlmAdapter, transformers.PreTrainedModel)
            The bound adapter and the model (CPU, eval mode).
        """
        adapter = cls(config, tokenizer)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls.model_class._from_config(
                cls._hf_config(config), attn_implementation="eager"
            )
        gen = model.generation_config
        gen.pad_token_id, gen.bos_token_id = config.pad_token_id, config.bos_token_id
        gen.eos_token_id = config.eos_token_id
        return adapter, model.eval()

    @classmethod
    def from_local(cls, path: str | Path) -> tuple[VlmAdapter, PreTrainedModel]:
        """Load a saved checkpoint (``save_pretrained``) and its tokenizer from a local folder.

        Nothing is downloaded (``local_files_only=True``). The pixel normalisation is read from
        ``preprocessor_config.json`` when the folder has one (a real checkpoint's processor),
        else the config default (0.5 / 0.5) applies.

        Raises
        ------
        FileNotFoundError
            If ``path`` is not a directory.
        ValueError
            If the checkpoint's ``model_type`` is not one this adapter loads
            (:attr:`local_classes`), or its tokenizer lacks a pad / bos / eos token.
        """
        from clinaudit.models.vlm.registry import kind_hint  # the registry imports this module

        path = Path(path)
        model_type = checkpoint_model_type(path)
        if model_type not in cls.local_classes:
            raise ValueError(
                f"{path / 'config.json'}: model_type {model_type!r} is not a {cls.kind} checkpoint "
                f"(this adapter loads {sorted(cls.local_classes)}); "
                f"{kind_hint(model_type)}"
            )
        model = cls.local_classes[model_type].from_pretrained(
            path, local_files_only=True, attn_implementation="eager"
        )
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(
                f"the tokenizer at {path} is a slow (Python) tokenizer; save the checkpoint with "
                "its fast tokenizer (tokenizer.json), e.g. AutoTokenizer.from_pretrained(..., "
                "use_fast=True).save_pretrained(path)"
            )
        config = cls._config_from_hf(model.config)
        missing = [t for t in ("pad", "bos", "eos") if getattr(tokenizer, f"{t}_token_id") is None]
        if missing:
            raise ValueError(
                f"the tokenizer at {path} has no {' / '.join(missing)} token; set "
                f"{', '.join(t + '_token' for t in missing)} and re-save it"
            )
        config = replace(
            config,
            pad_token_id=int(tokenizer.pad_token_id),
            bos_token_id=int(tokenizer.bos_token_id),
            eos_token_id=int(tokenizer.eos_token_id),
        )
        pre = path / "preprocessor_config.json"
        if pre.is_file():
            doc = json.loads(pre.read_text(encoding="utf-8"))
            mean, std = doc.get("image_mean", [0.5]), doc.get("image_std", [0.5])
            config = replace(config, image_mean=float(np.mean(mean)), image_std=float(np.mean(std)))
        adapter = cls(config, tokenizer)
        adapter.hf_config = json.loads(model.config.to_json_string(use_diff=False))
        return adapter, model.float().eval()  # trained, packaged and scored in float32

    @classmethod
    def from_hf_config(
        cls, config: VlmConfig, tokenizer: PreTrainedTokenizerBase, hf_config: dict[str, Any]
    ) -> tuple[VlmAdapter, PreTrainedModel]:
        """An untrained model of a checkpoint's exact class and configuration (eager
        attention), for loading a package of a model read by :meth:`from_local`.

        Raises
        ------
        ValueError
            If ``hf_config`` names a ``model_type`` this adapter does not load.
        """
        from transformers import AutoConfig

        model_type = hf_config.get("model_type")
        if model_type not in cls.local_classes:
            raise ValueError(
                f"hf_config model_type {model_type!r} is not loaded by the {cls.kind} adapter "
                f"({sorted(cls.local_classes)})"
            )
        settings = {k: v for k, v in hf_config.items() if k != "model_type"}
        model = cls.local_classes[model_type]._from_config(
            AutoConfig.for_model(model_type, **settings), attn_implementation="eager"
        )
        adapter = cls(config, tokenizer)
        adapter.hf_config = dict(hf_config)
        return adapter, model.float().eval()

    @staticmethod
    @abstractmethod
    def _hf_config(config: VlmConfig) -> Any: ...

    @staticmethod
    @abstractmethod
    def _config_from_hf(hf: Any) -> VlmConfig: ...

    @abstractmethod
    def _image_features(self, model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor: ...

    # ----------------------------------------------------------------------------------- images
    def pixel_values(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Grey images ``(B, H, W)`` in [0, 1] as the class's normalised 3-channel input.

        Images of another size are resized (bilinear, antialiased) to ``config.image_size``.

        Raises
        ------
        ValueError
            If ``images`` is not 3-D or holds values outside [0, 1] or non-finite values.
        """
        x = torch.as_tensor(np.asarray(images, dtype=np.float32))
        if x.ndim != 3:
            raise ValueError(f"images must be (B, H, W) grey levels, got shape {tuple(x.shape)}")
        if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise ValueError("images must be finite grey levels in [0, 1]")
        size = self.config.image_size
        if x.shape[1:] != (size, size):
            x = F.interpolate(x[:, None], size=(size, size), mode="bilinear", antialias=True)[:, 0]
        x = ((x - self.config.image_mean) / self.config.image_std)[:, None].repeat(1, 3, 1, 1)
        return x

    def encode_images(self, model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        """Vision tower + projector: ``(B, n_image_tokens, text_hidden)`` features (cacheable).

        Raises
        ------
        ValueError
            If the number of features is not ``n_image_tokens`` per image.
        """
        hf = unwrap_model(model)
        feats = self._image_features(hf, pixel_values.to(hf.device))
        n = self.config.n_image_tokens
        if feats.ndim != 3 or feats.shape[0] != pixel_values.shape[0] or feats.shape[1] != n:
            raise ValueError(
                f"{self.kind}: expected features (B={pixel_values.shape[0]}, {n}, D), got "
                f"{tuple(feats.shape)} (Idefics3 drops all-zero images as padding)"
            )
        return feats

    # ----------------------------------------------------------------------------------- prompts
    def prompt_ids(self, prompt: str) -> list[int]:
        """Token ids of a prefix: ``<image>`` * n, ``<bos>``, the prompt text."""
        text = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return [self.config.image_token_id] * self.config.n_image_tokens + [
            self.config.bos_token_id,
            *text,
        ]

    def answer_ids(self, answer: str) -> list[int]:
        """Token ids of a suffix: the answer text then ``<eos>``."""
        return [
            *self.tokenizer(answer, add_special_tokens=False)["input_ids"],
            self.config.eos_token_id,
        ]

    def _pad(self, rows: Sequence[list[int]], fill: int) -> torch.Tensor:
        width = max(len(r) for r in rows)
        return torch.tensor([r + [fill] * (width - len(r)) for r in rows], dtype=torch.long)

    def _prefix_inputs(
        self, prompts: Sequence[str]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        rows = [self.prompt_ids(p) for p in prompts]
        ids = self._pad(rows, self.config.pad_token_id)
        mask = self._pad([[1] * len(r) for r in rows], 0)
        inputs = {"input_ids": ids, "attention_mask": mask}
        if self.uses_token_type_ids:
            inputs["token_type_ids"] = torch.zeros_like(ids)
        last = torch.tensor([len(r) - 1 for r in rows], dtype=torch.long)
        return inputs, last

    def _embed(
        self, model: nn.Module, input_ids: torch.Tensor, feats: torch.Tensor
    ) -> torch.Tensor:
        embeds = unwrap_model(model).get_input_embeddings()(input_ids)
        where = (input_ids == self.config.image_token_id)[..., None]
        if int(where.sum()) * embeds.shape[-1] != feats.numel():
            raise ValueError(
                f"{int(where.sum())} <image> tokens but {feats.shape[0] * feats.shape[1]} features"
            )
        return embeds.masked_scatter(where, feats.to(embeds.dtype))

    def _lm_forward(self, model: nn.Module, inputs: dict[str, torch.Tensor], feats: torch.Tensor,
                    labels: torch.Tensor | None = None) -> Any:  # fmt: skip
        device = unwrap_model(model).device
        inputs = {k: v.to(device) for k, v in inputs.items()}
        embeds = self._embed(model, inputs.pop("input_ids"), feats.to(device))
        if labels is not None:
            labels = labels.to(device)
        return model(inputs_embeds=embeds, labels=labels, use_cache=False, **inputs)

    def prefill(
        self, model: nn.Module, image_features: torch.Tensor, prompts: Sequence[str]
    ) -> torch.Tensor:
        """First-answer-token logits ``(B, vocab)`` from cached image features (no re-encoding).

        Parameters
        ----------
        model : transformers.PreTrainedModel
            The model (or its peft wrapper).
        image_features : torch.Tensor
            ``(B, n_image_tokens, D)`` from :meth:`encode_images`, one row per prompt.
        prompts : sequence of str
            Prefix texts (:func:`~clinaudit.models.vlm.config.vqa_prompt`).
        """
        inputs, last = self._prefix_inputs(prompts)
        logits = self._lm_forward(model, inputs, image_features).logits
        return logits[torch.arange(len(prompts)), last.to(logits.device)]

    def full_logits(
        self, model: nn.Module, pixel_values: torch.Tensor, prompts: Sequence[str]
    ) -> torch.Tensor:
        """Like :meth:`prefill` but through the class's own forward with ``pixel_values``."""
        inputs, last = self._prefix_inputs(prompts)
        device = unwrap_model(model).device
        inputs = {k: v.to(device) for k, v in inputs.items()}
        logits = model(pixel_values=self._model_pixels(pixel_values).to(device), **inputs).logits
        return logits[torch.arange(len(prompts)), last.to(logits.device)]

    def generate_inputs(self, pixel_values: torch.Tensor, prompt: str) -> dict[str, torch.Tensor]:
        """Keyword inputs of ``model.generate`` for ONE image (``(1, ...)``) and one prompt."""
        inputs, _ = self._prefix_inputs([prompt])
        return {"pixel_values": self._model_pixels(pixel_values), **inputs}

    def _model_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return pixel_values

    # ---------------------------------------------------------------------------------- training
    def training_batch(
        self,
        images: np.ndarray | torch.Tensor,
        prompts: Sequence[str],
        answers: Sequence[str],
        *,
        image_index: Sequence[int] | None = None,
    ) -> VlmBatch:
        """Inputs of the LM loss: prefix (``<image>``s, ``<bos>``, prompt) + answer + ``<eos>``.

        Parameters
        ----------
        images : array (N, H, W)
            Distinct grey images in [0, 1].
        prompts, answers : sequence of str
            One per sequence (prefix text, answer text).
        image_index : sequence of int, optional
            Image row of each sequence; default ``range(N)`` (one sequence per image).

        Returns
        -------
        VlmBatch
            Labels are -100 on the prefix and on padding, the answer ids + eos elsewhere;
            PaliGemma's ``token_type_ids`` are 0 on the prefix and 1 on the suffix.
        """
        if len(prompts) != len(answers):
            raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
        index = list(range(len(images))) if image_index is None else [int(i) for i in image_index]
        if len(index) != len(prompts) or (
            index and not 0 <= min(index) <= max(index) < len(images)
        ):
            raise ValueError(
                f"image_index must give one row in [0, {len(images)}) per prompt "
                f"({len(prompts)} prompts, {len(index)} indices)"
            )
        pre = [self.prompt_ids(p) for p in prompts]
        suf = [self.answer_ids(a) for a in answers]
        ids = self._pad([p + s for p, s in zip(pre, suf, strict=True)], self.config.pad_token_id)
        mask = self._pad([[1] * (len(p) + len(s)) for p, s in zip(pre, suf, strict=True)], 0)
        labels = self._pad([[-100] * len(p) + s for p, s in zip(pre, suf, strict=True)], -100)
        types = self._pad([[0] * len(p) + [1] * len(s) for p, s in zip(pre, suf, strict=True)], 1)
        return VlmBatch(
            pixel_values=self.pixel_values(images),
            image_index=torch.tensor(index, dtype=torch.long),
            input_ids=ids,
            attention_mask=mask,
            labels=labels,
            token_type_ids=types if self.uses_token_type_ids else None,
        )

    def model_inputs(self, batch: VlmBatch) -> dict[str, torch.Tensor]:
        """Keyword inputs of the class's own forward (``pixel_values`` repeated per sequence)."""
        inputs = {
            "pixel_values": self._model_pixels(batch.pixel_values[batch.image_index]),
            "input_ids": batch.input_ids,
            "attention_mask": batch.attention_mask,
            "labels": batch.labels,
        }
        if batch.token_type_ids is not None:
            inputs["token_type_ids"] = batch.token_type_ids
        return inputs

    def batch_loss(self, model: nn.Module, batch: VlmBatch) -> torch.Tensor:
        """Mean LM loss on the answer tokens, each distinct image encoded once."""
        feats = self.encode_images(model, batch.pixel_values)[batch.image_index.to(model.device)]
        inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if batch.token_type_ids is not None:
            inputs["token_type_ids"] = batch.token_type_ids
        return self._lm_forward(model, inputs, feats, labels=batch.labels).loss

    # ----------------------------------------------------------------------------------- modules
    def vision_tower(self, model: nn.Module) -> nn.Module:
        """The vision encoder module (SigLIP / CLIP / Idefics3 vision transformer)."""
        return unwrap_model(model).get_submodule(self.vision_tower_path)

    def vision_layers(self, model: nn.Module) -> nn.ModuleList:
        """The vision encoder's transformer layers, first to last."""
        tower = self.vision_tower(model)
        inner = getattr(tower, "vision_model", tower)
        return inner.encoder.layers

    def language_model(self, model: nn.Module) -> nn.Module:
        """The language model (decoder stack without the LM head)."""
        return unwrap_model(model).get_submodule(self.language_model_path)

    def lora_target_pattern(self, *, mlp: bool = False) -> str:
        """Regex (peft full match) of the language model's attention (and MLP) projections."""
        attn = f"self_attn\\.(?:{'|'.join(_ATTN)})"
        body = f"(?:{attn}|mlp\\.(?:{'|'.join(_MLP)}))" if mlp else attn
        return f"{re.escape(self.language_model_path)}\\.layers\\.\\d+\\.{body}"

    @property
    def lm_lora_pattern(self) -> str:
        """:meth:`lora_target_pattern` without MLP: q/k/v/o of the language model only."""
        return self.lora_target_pattern()


def checkpoint_model_type(path: str | Path) -> str:
    """The ``model_type`` of the checkpoint in folder ``path`` (its ``config.json``).

    Raises
    ------
    FileNotFoundError
        If ``path`` is not a directory or has no ``config.json``.
    ValueError
        If ``config.json`` is not a JSON object with a ``model_type``.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint directory at {path}")
    config = path / "config.json"
    if not config.is_file():
        raise FileNotFoundError(
            f"{path} has no config.json: give the folder a model was saved to with "
            "save_pretrained (config.json, the weights and the tokenizer files)"
        )
    try:
        doc = json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{config} is not valid JSON ({exc}); re-save the checkpoint") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("model_type"), str):
        raise ValueError(f"{config} names no model_type; re-save the checkpoint with transformers")
    return doc["model_type"]
