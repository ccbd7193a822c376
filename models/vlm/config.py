"""The frozen config of a small vision-language model and the prompt format it is trained with.

:class:`VlmConfig` holds everything needed to rebuild one of the three Hugging Face classes
(:mod:`.adapters`) from nothing: geometry of the image and its patches, sizes of the vision tower
and the language model, the tokenizer's size and special ids, the pixel normalisation. It is
written into the model package's card (:mod:`.package`).

Prompt format (identical in training and scoring)::

    <image> * n_image_tokens  <bos>  "answer yes or no: " + question + "\\n"   | "yes" <eos>
    \\___________________________ prefix ___________________________________/   \\_ suffix _/

The caption task uses the prefix text ``"caption: describe the film\\n"`` and the caption as
suffix. The first answer token is predicted at the last prefix position; only the suffix is
supervised (labels -100 on the prefix). PaliGemma attends bidirectionally within the prefix
(``token_type_ids`` 0) and causally on the suffix (1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

VlmKind = Literal["paligemma", "llava", "idefics3"]
VLM_KINDS: tuple[str, ...] = get_args(VlmKind)
VQA_INSTRUCTION = "answer yes or no: "
CAPTION_PROMPT = "caption: describe the film\n"
PROMPT_FORMAT = (
    '"<image>" * n_image_tokens + "<bos>" + "answer yes or no: " + question + "\\n"; '
    'answer "yes" | "no" + "<eos>"; caption task: prefix text "caption: describe the film\\n", '
    'answer caption + "<eos>"'
)
__all__ = ["CAPTION_PROMPT", "PROMPT_FORMAT", "VLM_KINDS", "VlmConfig", "VlmKind", "vqa_prompt"]


def vqa_prompt(question: str) -> str:
    """The prefix text of a yes/no question (see the module docstring).

    Examples
    --------
    >>> vqa_prompt("is the heart enlarged?")
    'answer yes or no: is the heart enlarged?\\n'
    """
    return f"{VQA_INSTRUCTION}{question}\n"


@dataclass(frozen=True)
class VlmConfig:
    """Sizes of a small vision-language model (one of :data:`VLM_KINDS`).

    Attributes
    ----------
    kind : {"paligemma", "llava", "idefics3"}
        Which Hugging Face class.
    vocab_size, pad_token_id, bos_token_id, eos_token_id, image_token_id : int
        From the tokenizer (:func:`~clinaudit.models.vlm.tokenizer.train_vqa_tokenizer`).
    image_size, patch_size : int
        Square input in pixels and ViT patch side: ``(image_size // patch_size) ** 2`` patches.
    vision_hidden, vision_layers, vision_heads, vision_intermediate : int
        Vision tower (SigLIP for PaliGemma / Idefics3, CLIP for LLaVA).
    text_hidden, text_layers, text_heads, text_intermediate : int
        Language model (Gemma for PaliGemma, Llama for LLaVA / Idefics3).
    scale_factor : int
        Idefics3 pixel-shuffle factor (image tokens = patches / scale_factor**2); unused otherwise.
    image_mean, image_std : float
        Grey level normalisation ``(x - mean) / std`` of images in [0, 1].
    """

    kind: str
    vocab_size: int
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2
    image_token_id: int = 4
    image_size: int = 64
    patch_size: int = 8
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 2
    vision_intermediate: int = 128
    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4
    text_intermediate: int = 256
    scale_factor: int = 2
    image_mean: float = 0.5
    image_std: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in VLM_KINDS:
            raise ValueError(f"kind={self.kind!r} is not one of {list(VLM_KINDS)}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size={self.image_size} must be a multiple of patch_size={self.patch_size}"
            )
        if self.kind == "idefics3" and self.grid % self.scale_factor:
            raise ValueError(
                f"idefics3: the patch grid {self.grid} must be a multiple of "
                f"scale_factor={self.scale_factor} (pixel shuffle)"
            )
        for name in ("vision_hidden", "text_hidden"):
            heads = getattr(self, name.replace("hidden", "heads"))
            if getattr(self, name) % heads:
                raise ValueError(f"{name}={getattr(self, name)} must be divisible by its heads")
        if not 0 < self.image_std:
            raise ValueError(f"image_std={self.image_std} must be > 0")

    @property
    def grid(self) -> int:
        """Patches per side of the vision tower's grid."""
        return self.image_size // self.patch_size

    @property
    def n_image_tokens(self) -> int:
        """``<image>`` tokens in the prompt (Idefics3: after the pixel shuffle)."""
        if self.kind == "idefics3":
            return self.grid**2 // self.scale_factor**2
        return self.grid**2

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (for the model card)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> VlmConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``TypeError``."""
        return cls(**dict(doc))
