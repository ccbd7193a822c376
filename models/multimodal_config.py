"""Configuration of the image + note arms: sizes, labels and the note tokenizer's ids.

:class:`MultimodalConfig` is the one home of every arm's sizes (the defaults are the demo-scale
ones: a 2-block ViT of width 64 on 8x8 patches of 64 px images, a 2-layer BERT of width 64); it is
written into the model package's card and rebuilds an arm without guessing.
:meth:`MultimodalConfig.for_tokenizer` takes the vocabulary size and the ``[PAD]``/``[CLS]``/
``[SEP]`` ids from the trained tokenizer and :meth:`MultimodalConfig.check_tokenizer` refuses a
tokenizer that does not fit (a text model reading its pooled embedding at the wrong position, or a
special id outside the vocabulary, fails silently otherwise).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerFast

from clinaudit.models.text_tokenizer import CLS_ID, PAD_ID, SEP_ID

ARMS: tuple[str, ...] = ("image_only", "text_only", "late_fusion", "early_fusion", "vilt")
#: Arms trained by gradient steps (late fusion combines two of them).
TRAINED_ARMS: tuple[str, ...] = ("image_only", "text_only", "early_fusion", "vilt")
#: Arms that see both modalities (modality dropout applies to them).
FUSION_ARMS: tuple[str, ...] = ("early_fusion", "vilt")
__all__ = [
    "ARMS",
    "FUSION_ARMS",
    "TRAINED_ARMS",
    "MultimodalConfig",
    "UnknownArmError",
    "normalise_pixels",
]


class UnknownArmError(KeyError, ValueError):
    """An arm name that does not exist; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class MultimodalConfig:
    """Sizes of every arm, the labels and the tokenizer ids (written into the package card).

    Parameters
    ----------
    labels : tuple of str
        Class names in output order.
    vocab_size : int
        Tokenizer vocabulary size (``len(tokenizer)``).
    pad_token_id, cls_token_id, sep_token_id : int
        The tokenizer's ids (fixed by :mod:`clinaudit.models.text_tokenizer`).
    image_size, patch_size : int
        Square input side and ViT patch side in pixels (``image_size % patch_size == 0``).
    image_arch : str
        timm Vision Transformer family name (built with ``pretrained=False``).
    image_dim, image_depth, image_heads : int
        ViT width, blocks and heads.
    max_length : int
        Tokens per note.
    text_dim, text_layers, text_heads, text_ffn : int
        BERT (and ViLT) width, layers, heads and feed-forward width.
    fusion_dim, fusion_heads : int
        Width and heads of the early-fusion cross-attention.
    dropout : float
        Dropout in every encoder and before every head.
    mean, std : tuple of float
        Per-channel normalisation of ``[0, 1]`` RGB pixels.
    """

    labels: tuple[str, ...]
    vocab_size: int
    pad_token_id: int = PAD_ID
    cls_token_id: int = CLS_ID
    sep_token_id: int = SEP_ID
    image_size: int = 64
    patch_size: int = 8
    image_arch: str = "vit_tiny_patch16_224"
    image_dim: int = 64
    image_depth: int = 2
    image_heads: int = 2
    max_length: int = 48
    text_dim: int = 64
    text_layers: int = 2
    text_heads: int = 2
    text_ffn: int = 128
    fusion_dim: int = 64
    fusion_heads: int = 2
    dropout: float = 0.1
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        for name in ("labels", "mean", "std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels={self.labels!r} must hold >= 2 distinct class names")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size={self.image_size} must be a multiple of patch_size={self.patch_size}"
            )
        ids = (self.pad_token_id, self.cls_token_id, self.sep_token_id)
        if len(set(ids)) != 3 or not all(0 <= i < self.vocab_size for i in ids):
            raise ValueError(
                f"pad/cls/sep ids {ids} must be distinct and inside the vocabulary "
                f"[0, {self.vocab_size}); build the config with MultimodalConfig.for_tokenizer"
            )
        for dim, heads in ((self.image_dim, self.image_heads), (self.text_dim, self.text_heads)):
            if dim % heads:
                raise ValueError(f"width {dim} is not divisible by {heads} attention heads")
        if self.fusion_dim % self.fusion_heads:
            raise ValueError(f"fusion_dim={self.fusion_dim} not divisible by fusion_heads")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean={self.mean} and std={self.std} need 3 values, std > 0")
        if not 0.0 <= self.dropout < 1.0 or self.max_length < 3:
            raise ValueError(f"dropout={self.dropout} in [0, 1) and max_length >= 3 required")

    @property
    def num_labels(self) -> int:
        """Number of classes."""
        return len(self.labels)

    @classmethod
    def for_tokenizer(
        cls, tokenizer: PreTrainedTokenizerFast, labels: tuple[str, ...], **sizes: Any
    ) -> MultimodalConfig:
        """A config whose vocabulary size and special ids are the tokenizer's.

        Parameters
        ----------
        tokenizer : transformers.PreTrainedTokenizerFast
            The trained note tokenizer.
        labels : tuple of str
            Class names in output order.
        **sizes
            Overrides of the other fields.

        Returns
        -------
        MultimodalConfig
        """
        return cls(
            labels=tuple(labels),
            vocab_size=len(tokenizer),
            pad_token_id=int(tokenizer.pad_token_id),
            cls_token_id=int(tokenizer.cls_token_id),
            sep_token_id=int(tokenizer.sep_token_id),
            **sizes,
        )

    def check_tokenizer(self, tokenizer: PreTrainedTokenizerFast) -> None:
        """Raise ``ValueError`` unless the tokenizer's vocabulary size and ids are this config's.

        A text model whose ``[PAD]`` or ``[CLS]`` id differs from its tokenizer's silently reads
        the wrong embedding (e.g. a tiny CLIP config's default end-of-text id outside a small
        vocabulary); this check makes that an error.
        """
        found = (
            len(tokenizer),
            tokenizer.pad_token_id,
            tokenizer.cls_token_id,
            tokenizer.sep_token_id,
        )
        expected = (self.vocab_size, self.pad_token_id, self.cls_token_id, self.sep_token_id)
        if found != expected:
            raise ValueError(
                f"tokenizer (vocab_size, pad, cls, sep) = {found} but the model was built for "
                f"{expected}; use the tokenizer saved with the model"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MultimodalConfig:
        """Rebuild from :meth:`to_dict`; unknown or missing keys raise ``ValueError``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        missing = sorted({"labels", "vocab_size"} - set(data))
        if unknown or missing:
            raise ValueError(
                f"multimodal config has unknown keys {unknown} and lacks {missing}; expected keys "
                f"are {sorted(known)}"
            )
        return cls(**dict(data))


def normalise_pixels(images: torch.Tensor, config: MultimodalConfig) -> torch.Tensor:
    """``(N, 3, S, S)`` uint8 RGB -> float ``(x / 255 - mean) / std``.

    Parameters
    ----------
    images : torch.Tensor
        uint8 images, channels first.
    config : MultimodalConfig
        Supplies ``mean`` and ``std``.

    Returns
    -------
    torch.Tensor
        float32 tensor of the same shape, on the same device.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"expected (N, 3, S, S) uint8 images, got {tuple(images.shape)} {images.dtype}"
        )
    mean = torch.tensor(config.mean, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(config.std, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std
