"""The timm-style registry of the small vision-language models' adapters.

:func:`register_vlm`, :func:`create_vlm` and :func:`load_local_vlm`: an unknown kind lists the
known ones. Importing :mod:`clinaudit.models.vlm.adapters` registers the three kinds
(PaliGemma, LLaVA, Idefics3/SmolVLM); a local checkpoint's kind is read from its ``config.json``.
"""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from clinaudit.models.vlm.base import VlmAdapter, checkpoint_model_type
from clinaudit.models.vlm.config import VlmConfig

__all__ = [
    "VLM_REGISTRY",
    "checkpoint_model_type",
    "create_vlm",
    "kind_hint",
    "load_local_vlm",
    "local_vlm_kind",
    "register_vlm",
]

VLM_REGISTRY: dict[str, type[VlmAdapter]] = {}


def register_vlm(cls: type[VlmAdapter]) -> type[VlmAdapter]:
    """Class decorator: register an adapter under its ``kind``."""
    if cls.kind in VLM_REGISTRY:
        raise ValueError(f"a VLM adapter is already registered as {cls.kind!r}")
    VLM_REGISTRY[cls.kind] = cls
    return cls


def _registry() -> dict[str, type[VlmAdapter]]:
    import clinaudit.models.vlm.adapters  # noqa: F401  (registers the three kinds)

    return VLM_REGISTRY


def _adapter_class(kind: str) -> type[VlmAdapter]:
    if kind not in _registry():
        raise KeyError(f"unknown VLM kind {kind!r}; known kinds: {sorted(VLM_REGISTRY)}")
    return VLM_REGISTRY[kind]


def create_vlm(
    kind: str, config: VlmConfig, tokenizer: PreTrainedTokenizerBase, *, seed: int = 0
) -> tuple[VlmAdapter, PreTrainedModel]:
    """Build an untrained model of ``kind`` (see :meth:`VlmAdapter.build`).

    Examples
    --------
    >>> from clinaudit.models.vlm.tokenizer import train_vqa_tokenizer
    >>> tok = train_vqa_tokenizer(["is the heart enlarged?"], vocab_size=32)
    >>> adapter, model = create_vlm("llava", VlmConfig("llava", vocab_size=len(tok)), tok)
    >>> type(model).__name__
    'LlavaForConditionalGeneration'
    """
    return _adapter_class(kind).build(config, tokenizer, seed=seed)


def kind_hint(model_type: str) -> str:
    """Which registered kind reads checkpoints of ``model_type``, or the supported types."""
    loads = {t: k for k, a in _registry().items() for t in a.local_classes}
    if model_type in loads:
        return f"it is read with kind {loads[model_type]!r}"
    return f"no adapter reads model_type {model_type!r}; supported: " + ", ".join(
        f"{t} ({k})" for t, k in sorted(loads.items())
    )


def local_vlm_kind(path: str | Path) -> str:
    """The adapter kind that reads the checkpoint in ``path``, from its ``model_type``.

    ``paligemma`` -> ``paligemma``, ``llava`` -> ``llava``, ``idefics3`` and ``smolvlm``
    (SmolVLM / SmolVLM2) -> ``idefics3``.

    Raises
    ------
    ValueError
        If no registered adapter reads that ``model_type`` (e.g. ``llava_next``, LLaVA-1.6).
    """
    model_type = checkpoint_model_type(path)
    for kind, adapter in _registry().items():
        if model_type in adapter.local_classes:
            return kind
    raise ValueError(f"{Path(path) / 'config.json'}: {kind_hint(model_type)}")


def load_local_vlm(kind: str | None, path: str | Path) -> tuple[VlmAdapter, PreTrainedModel]:
    """Load a local checkpoint (see :meth:`VlmAdapter.from_local`); ``kind=None`` reads the
    kind from the checkpoint (:func:`local_vlm_kind`)."""
    return _adapter_class(kind or local_vlm_kind(path)).from_local(path)
