"""VLM model packages: merged weights, tokenizer and card, verified on load.

Format ``clinaudit.vlm_model/v1``
=================================

A directory holding exactly::

    <package>/
        model.safetensors   the (LoRA-merged) state_dict (safetensors; pickle files are refused)
        tokenizer.json      the tokenizer (word-level, clinaudit.models.vlm.tokenizer, or the
                            checkpoint's own fast tokenizer)
        model_card.json     what the model is and how it was built (written last)

``model_card.json`` keys: ``format``, ``kind`` (paligemma / llava / idefics3), ``config``
(:class:`~clinaudit.models.vlm.config.VlmConfig` as a dict), ``prompt_format``, ``vendor``,
``intended_use``, ``description``, ``created_utc``, ``pretraining`` and ``lora`` (``null`` or
:meth:`~clinaudit.models.vlm.train.TrainResult.summary`), ``validation``, ``lineage``,
``weights_file`` / ``weights_sha256``, ``tokenizer_file`` / ``tokenizer_sha256``; for a model
read from a local checkpoint (``--base-model``) also ``hf_config`` (the checkpoint's full Hugging
Face config, from which the class is rebuilt instead of from ``config``) and
``tokenizer_special`` (its pad / bos / eos / unk tokens; ``tokenizer.json`` is then its own fast
tokenizer, not the word-level one). Follows
:mod:`clinaudit.models.multimodal_package`: same
:class:`~clinaudit.models.package.ModelPackageError`,
pickle refusal, sha256 check of both files, strict weight loading into the class rebuilt from
the card's config (nothing downloaded). Tied weights (PaliGemma's LM head and embedding) are
saved as two copies, since safetensors refuses shared storage, and re-tied on load.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from clinaudit.models.model_card import json_safe
from clinaudit.models.package import (
    ModelPackageError,
    read_card_json,
    refuse_pickles,
    verified_file_sha256,
)
from clinaudit.models.vlm.adapters import VLM_REGISTRY, VlmAdapter, create_vlm, unwrap_model
from clinaudit.models.vlm.config import PROMPT_FORMAT, VLM_KINDS, VlmConfig
from clinaudit.models.vlm.tokenizer import (
    TOKENIZER_FILE,
    load_checkpoint_tokenizer,
    load_vqa_tokenizer,
    save_vqa_tokenizer,
)
from clinaudit.sources.landing import sha256_file

VLM_FORMAT = "clinaudit.vlm_model/v1"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model_card.json"
_CARD_KEYS = ("format", "kind", "config", "vendor", "intended_use", "weights_file")
_CARD_KEYS += ("weights_sha256", "tokenizer_file", "tokenizer_sha256")
__all__ = [
    "VLM_FORMAT",
    "LoadedVlm",
    "VlmCard",
    "load_vlm_package",
    "save_vlm_package",
    "vlm_package_sha256",
]


@dataclass(frozen=True)
class VlmCard:
    """The statements of a VLM package's card (the writer adds config and hashes)."""

    vendor: str
    intended_use: str
    description: str = ""
    created_utc: str = ""
    pretraining: Mapping[str, Any] | None = None
    lora: Mapping[str, Any] | None = None
    validation: Mapping[str, Any] | None = None
    lineage: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class LoadedVlm:
    """A verified package: adapter, model (CPU, eval), card and hashes."""

    adapter: VlmAdapter
    model: PreTrainedModel
    config: VlmConfig
    tokenizer: PreTrainedTokenizerFast
    card: VlmCard
    sha256: str
    weights_sha256: str
    tokenizer_sha256: str
    path: Path


def _state(model: nn.Module) -> dict[str, Any]:
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}


def _rebuild(path: Path, config: VlmConfig, tokenizer: PreTrainedTokenizerFast,
             state: Mapping[str, Any], hf_config: dict[str, Any] | None,
             ) -> tuple[VlmAdapter, PreTrainedModel]:  # fmt: skip
    if hf_config is None:
        adapter, model = create_vlm(config.kind, config, tokenizer, seed=0)
    else:  # a model read from a local checkpoint: its exact class and configuration
        adapter, model = VLM_REGISTRY[config.kind].from_hf_config(config, tokenizer, hf_config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        expected = set(model.state_dict())
        raise ModelPackageError(
            path, f"weights do not fit the {config.kind!r} model described by the card's config",
            expected=f"the {len(expected)} tensors of that model",
            found=f"{len(state)} tensors; missing e.g. {sorted(expected - set(state))[:5]}, "
            f"unexpected e.g. {sorted(set(state) - expected)[:5]}",
            fix="save the merged model built from this config (merge_lora before saving)",
        ) from err  # fmt: skip
    return adapter, model.eval()


def save_vlm_package(
    directory: str | os.PathLike[str],
    adapter: VlmAdapter,
    model: nn.Module,
    card: VlmCard,
    *,
    overwrite: bool = False,
) -> Path:
    """Write merged weights, tokenizer, then ``model_card.json`` (last, as the ready marker).

    Parameters
    ----------
    directory : path
        Package directory (created if needed).
    adapter : VlmAdapter
        The model's adapter (config and tokenizer).
    model : torch.nn.Module
        The trained model, LoRA already merged (:func:`~clinaudit.models.vlm.train.merge_lora`).
    card : VlmCard
        Vendor, intended use, training summaries.
    overwrite : bool
        Replace a package already in ``directory``.

    Returns
    -------
    Path

    Raises
    ------
    ModelPackageError
        If the directory holds a package (and not ``overwrite``) or the weights do not load back.
    TypeError
        If ``model`` still carries LoRA adapters (a peft wrapper).
    """
    if unwrap_model(model) is not model:
        raise TypeError("merge the LoRA adapters first (merge_lora(model)) and save the result")
    directory = Path(directory)
    if not overwrite and (directory / CARD_FILE).exists():
        raise ModelPackageError(
            directory, "the directory already holds a model package",
            expected="an empty or new directory", found=f"{CARD_FILE} present",
            fix="choose a new directory (every version is kept) or pass overwrite=True",
        )  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    refuse_pickles(directory)
    state = _state(model)
    _rebuild(directory / WEIGHTS_FILE, adapter.config, adapter.tokenizer, state, adapter.hf_config)
    tmp = directory / f".{WEIGHTS_FILE}.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, directory / WEIGHTS_FILE)
    save_vqa_tokenizer(adapter.tokenizer, directory)
    created = card.created_utc or dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()

    def opt(x: Mapping[str, Any] | None) -> Any:
        return json_safe(dict(x)) if x is not None else None

    doc = {
        "format": VLM_FORMAT,
        "kind": adapter.kind,
        "config": adapter.config.to_dict(),
        "prompt_format": PROMPT_FORMAT,
        "vendor": card.vendor,
        "intended_use": card.intended_use,
        "description": card.description,
        "created_utc": created,
        "pretraining": opt(card.pretraining),
        "lora": opt(card.lora),
        "validation": opt(card.validation),
        "lineage": opt(card.lineage),
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": sha256_file(directory / WEIGHTS_FILE),
        "tokenizer_file": TOKENIZER_FILE,
        "tokenizer_sha256": sha256_file(directory / TOKENIZER_FILE),
    }
    if adapter.hf_config is not None:  # read from a local checkpoint (VlmAdapter.from_local)
        tok = adapter.tokenizer
        doc["hf_config"] = adapter.hf_config
        doc["tokenizer_special"] = {
            name: str(getattr(tok, name))
            for name in ("pad_token", "bos_token", "eos_token", "unk_token")
            if getattr(tok, name) is not None
        }
    tmp_card = directory / f".{CARD_FILE}.tmp"
    tmp_card.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp_card, directory / CARD_FILE)
    return directory


def _read_card(directory: Path) -> dict[str, Any]:
    doc = read_card_json(
        directory, required=_CARD_KEYS, pointer="point at the package directory",
        contents="model.safetensors, tokenizer.json and model_card.json",
    )  # fmt: skip
    for key, expected in (
        ("format", VLM_FORMAT), ("weights_file", WEIGHTS_FILE), ("tokenizer_file", TOKENIZER_FILE),
    ):  # fmt: skip
        if doc[key] != expected:
            raise ModelPackageError(
                directory / CARD_FILE, f"unexpected {key}", expected=repr(expected),
                found=repr(doc[key]), fix="re-export the package in the documented format",
            )  # fmt: skip
    if doc["kind"] not in VLM_KINDS:
        raise ModelPackageError(
            directory / CARD_FILE, "unknown kind", expected=f"one of {list(VLM_KINDS)}",
            found=repr(doc["kind"]), fix="correct the card's kind",
        )  # fmt: skip
    return doc


def load_vlm_package(directory: str | os.PathLike[str]) -> LoadedVlm:
    """Verify and load a VLM package from a local directory (nothing is downloaded).

    Raises
    ------
    ModelPackageError
        On pickle files, an invalid card, a sha256 mismatch, a tokenizer that does not fit the
        config, or weights that do not fit.
    """
    directory = Path(directory)
    doc = _read_card(directory)
    weights_sha = verified_file_sha256(directory, WEIGHTS_FILE, doc["weights_sha256"])
    tokenizer_sha = verified_file_sha256(directory, TOKENIZER_FILE, doc["tokenizer_sha256"])
    try:
        config = VlmConfig.from_dict(doc["config"])
        hf_config = doc.get("hf_config")
        if hf_config is not None and not isinstance(hf_config, dict):
            raise ValueError(f"hf_config must be an object, got {type(hf_config).__name__}")
        if doc.get("tokenizer_special") is not None:
            tokenizer = load_checkpoint_tokenizer(directory, dict(doc["tokenizer_special"]))
        else:
            tokenizer = load_vqa_tokenizer(directory)
        if config.kind != doc["kind"]:
            raise ValueError(f"card kind {doc['kind']!r} but config kind {config.kind!r}")
    except (TypeError, ValueError) as err:
        raise ModelPackageError(
            directory / CARD_FILE, "config or tokenizer is invalid or they do not fit each other",
            expected="a valid config and the tokenizer it was built for", found=str(err),
            fix="re-export the package with the tokenizer used in training",
        ) from err  # fmt: skip
    try:
        state = load_file(str(directory / WEIGHTS_FILE), device="cpu")
    except SafetensorError as err:
        raise ModelPackageError(
            directory / WEIGHTS_FILE, "not a readable safetensors file", expected="safetensors",
            found=str(err), fix="save with safetensors.torch.save_file",
        ) from err  # fmt: skip
    try:
        adapter, model = _rebuild(directory / WEIGHTS_FILE, config, tokenizer, state, hf_config)
    except ValueError as err:
        if isinstance(err, ModelPackageError):
            raise
        raise ModelPackageError(
            directory / CARD_FILE, "the tokenizer does not fit the config", expected="matching ids",
            found=str(err), fix="re-export the package with the tokenizer used in training",
        ) from err  # fmt: skip
    card = VlmCard(
        vendor=str(doc["vendor"]), intended_use=str(doc["intended_use"]),
        description=str(doc.get("description", "")), created_utc=str(doc.get("created_utc", "")),
        pretraining=doc.get("pretraining"), lora=doc.get("lora"),
        validation=doc.get("validation"), lineage=doc.get("lineage"),
    )  # fmt: skip
    return LoadedVlm(
        adapter=adapter, model=model, config=config, tokenizer=tokenizer, card=card,
        sha256=_package_hash(doc, weights_sha, tokenizer_sha), weights_sha256=weights_sha,
        tokenizer_sha256=tokenizer_sha, path=directory,
    )  # fmt: skip


def _package_hash(doc: Mapping[str, Any], weights_sha: str, tokenizer_sha: str) -> str:
    h = hashlib.sha256()
    h.update(f"{VLM_FORMAT}\n{CARD_FILE}\0".encode())
    h.update(json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode())
    h.update(f"\n{WEIGHTS_FILE}\0{weights_sha}\n{TOKENIZER_FILE}\0{tokenizer_sha}\n".encode())
    return h.hexdigest()


def vlm_package_sha256(directory: str | os.PathLike[str]) -> str:
    """Identity of a package: sha256 over the canonical card and the files' sha256s."""
    directory = Path(directory)
    doc = _read_card(directory)
    return _package_hash(
        doc, sha256_file(directory / WEIGHTS_FILE), sha256_file(directory / TOKENIZER_FILE)
    )
