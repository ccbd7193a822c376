"""Image + note model packages: one trained arm and its tokenizer, verified on load.

Format ``clinaudit.multimodal_model/v1``
========================================

A directory holding exactly::

    <package>/
        model.safetensors   the arm's state_dict (safetensors; pickle files are refused)
        tokenizer.json      the note tokenizer (clinaudit.models.text_tokenizer)
        model_card.json     what the arm is and how it was built (written last)

``model_card.json`` keys: ``format`` (the string above), ``arm`` (one of
:data:`~clinaudit.models.multimodal_arms.ARMS`), ``config`` (:class:`MultimodalConfig` as a dict:
labels in output order, sizes, tokenizer ids), ``vendor``, ``intended_use``, ``description``,
``created_utc``, ``training`` (``null`` or the budget, history and timings of the run,
:func:`training_summary`), ``validation`` (``null`` or free-form held-out results), ``lineage``
(``null`` or the parent package), ``weights_file`` / ``weights_sha256`` and ``tokenizer_file`` /
``tokenizer_sha256`` (lowercase hex sha256 of the files' bytes).

The existing ``clinaudit.model_package/v1`` (:mod:`clinaudit.models.package`) describes grey-level
image networks by an adapter config (one or three repeated channels, sigmoid outputs, operating
thresholds); an image + text arm needs a tokenizer beside its weights and has softmax outputs, so
it gets this sibling format (as tabular models have ``clinaudit.tabular_model/v1``). Errors are the
same :class:`~clinaudit.models.package.ModelPackageError` (file, expected, found, fix).

:func:`load_multimodal_package` refuses pickle files, checks the card, recomputes both sha256s
and compares them with the card, loads the tokenizer from the local file and checks that its
vocabulary size and special ids are the config's (a mismatch would read wrong embeddings), checks
the labels if asked, rebuilds the arm from the config (nothing downloaded) and loads the weights
strictly. A user's weights load from a local path the same way.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedTokenizerFast

from clinaudit.models.model_card import json_safe
from clinaudit.models.multimodal_arms import build_arm
from clinaudit.models.multimodal_config import ARMS, MultimodalConfig
from clinaudit.models.multimodal_train_spec import ArmResult
from clinaudit.models.package import (
    ModelPackageError,
    read_card_json,
    refuse_pickles,
    state_dict_for_saving,
    verified_file_sha256,
)
from clinaudit.models.text_tokenizer import (
    TOKENIZER_FILE,
    load_note_tokenizer,
    save_note_tokenizer,
)
from clinaudit.sources.landing import sha256_file

MULTIMODAL_FORMAT = "clinaudit.multimodal_model/v1"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model_card.json"
_CARD_KEYS = ("format", "arm", "config", "vendor", "intended_use", "weights_file")
_CARD_KEYS += ("weights_sha256", "tokenizer_file", "tokenizer_sha256")
__all__ = [
    "MULTIMODAL_FORMAT",
    "LoadedMultimodal",
    "MultimodalCard",
    "load_multimodal_package",
    "multimodal_package_sha256",
    "save_multimodal_package",
    "training_summary",
]


@dataclass(frozen=True)
class MultimodalCard:
    """The statements of a multimodal package's card (the writer adds config and hashes)."""

    vendor: str
    intended_use: str
    description: str = ""
    created_utc: str = ""
    training: Mapping[str, Any] | None = None
    validation: Mapping[str, Any] | None = None
    lineage: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class LoadedMultimodal:
    """A verified package: the arm (CPU, eval mode), its config, tokenizer, card and hashes."""

    model: nn.Module
    arm: str
    config: MultimodalConfig
    tokenizer: PreTrainedTokenizerFast
    card: MultimodalCard
    sha256: str
    weights_sha256: str
    tokenizer_sha256: str
    path: Path


def training_summary(result: ArmResult) -> dict[str, Any]:
    """JSON-ready budget, history and timings of a trained arm, for ``MultimodalCard.training``."""
    return json_safe(
        {
            "arm": result.arm,
            "budget": dataclasses.asdict(result.budget),
            "best_epoch": result.best_epoch,
            "components": list(result.components),
            "history": [dataclasses.asdict(h) for h in result.history],
            "train_seconds": round(result.train_seconds, 3),
            "n_parameters": result.n_parameters,
            "device": result.device,
        }
    )


def _build(path: Path, arm: str, config: MultimodalConfig, state: Mapping[str, Any]) -> nn.Module:
    model = build_arm(arm, config, seed=0)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        expected = set(model.state_dict())
        raise ModelPackageError(
            path,
            f"weights do not fit the {arm!r} arm described by the card's config",
            expected=f"the {len(expected)} tensors of that network",
            found=(
                f"{len(state)} tensors; missing e.g. {sorted(expected - set(state))[:5]}, "
                f"unexpected e.g. {sorted(set(state) - expected)[:5]}; torch says: "
                f"{str(err).splitlines()[0]}"
            ),
            fix="export the state_dict of the arm built from model_card.json config",
        ) from err
    return model.eval()


def save_multimodal_package(
    directory: str | os.PathLike[str],
    arm: str,
    model: nn.Module,
    config: MultimodalConfig,
    tokenizer: PreTrainedTokenizerFast,
    card: MultimodalCard,
    *,
    overwrite: bool = False,
) -> Path:
    """Write weights, tokenizer, then ``model_card.json`` (last, as the ready marker).

    Parameters
    ----------
    directory : path
        Package directory (created if needed).
    arm : str
        The arm's name (:data:`~clinaudit.models.multimodal_arms.ARMS`).
    model : torch.nn.Module
        The trained arm.
    config : MultimodalConfig
        Its config.
    tokenizer : transformers.PreTrainedTokenizerFast
        The note tokenizer it was trained with.
    card : MultimodalCard
        Vendor, intended use, training summary...
    overwrite : bool
        Replace a package already in ``directory``.

    Returns
    -------
    Path
        The package directory.

    Raises
    ------
    ModelPackageError
        If the directory holds a package (and not ``overwrite``) or the weights do not load back.
    ValueError
        If the tokenizer does not fit ``config``.
    """
    directory = Path(directory)
    config.check_tokenizer(tokenizer)
    if not overwrite and (directory / CARD_FILE).exists():
        raise ModelPackageError(
            directory,
            "the directory already holds a model package",
            expected="an empty or new directory",
            found=f"{CARD_FILE} present",
            fix="choose a new directory (every version is kept) or pass overwrite=True",
        )
    directory.mkdir(parents=True, exist_ok=True)
    refuse_pickles(directory)
    state = state_dict_for_saving(model)
    _build(directory / WEIGHTS_FILE, arm, config, state)  # what we write must load back
    tmp = directory / f".{WEIGHTS_FILE}.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, directory / WEIGHTS_FILE)
    save_note_tokenizer(tokenizer, directory)
    created = card.created_utc or dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    doc = {
        "format": MULTIMODAL_FORMAT,
        "arm": arm,
        "config": config.to_dict(),
        "vendor": card.vendor,
        "intended_use": card.intended_use,
        "description": card.description,
        "created_utc": created,
        "training": json_safe(dict(card.training)) if card.training is not None else None,
        "validation": json_safe(dict(card.validation)) if card.validation is not None else None,
        "lineage": json_safe(dict(card.lineage)) if card.lineage is not None else None,
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": sha256_file(directory / WEIGHTS_FILE),
        "tokenizer_file": TOKENIZER_FILE,
        "tokenizer_sha256": sha256_file(directory / TOKENIZER_FILE),
    }
    tmp_card = directory / f".{CARD_FILE}.tmp"
    tmp_card.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp_card, directory / CARD_FILE)
    return directory


def _read_card(directory: Path) -> dict[str, Any]:
    path = directory / CARD_FILE
    doc = read_card_json(
        directory, required=_CARD_KEYS, pointer="point at the package directory",
        contents="model.safetensors, tokenizer.json and model_card.json",
    )  # fmt: skip
    for key, expected in (
        ("format", MULTIMODAL_FORMAT),
        ("weights_file", WEIGHTS_FILE),
        ("tokenizer_file", TOKENIZER_FILE),
    ):
        if doc[key] != expected:
            raise ModelPackageError(
                path, f"unexpected {key}", expected=repr(expected), found=repr(doc[key]),
                fix="re-export the package in the documented format",
            )  # fmt: skip
    if doc["arm"] not in ARMS:
        raise ModelPackageError(
            path, "unknown arm", expected=f"one of {list(ARMS)}", found=repr(doc["arm"]),
            fix="correct the card's arm",
        )  # fmt: skip
    return doc


def load_multimodal_package(
    directory: str | os.PathLike[str], *, expected_labels: Sequence[str] | None = None
) -> LoadedMultimodal:
    """Verify and load a multimodal package from a local directory (nothing is downloaded).

    Parameters
    ----------
    directory : path
        The package directory.
    expected_labels : sequence of str, optional
        Class names the caller needs, in output order; ``None`` skips the check.

    Returns
    -------
    LoadedMultimodal

    Raises
    ------
    ModelPackageError
        On pickle files, an invalid card, a sha256 mismatch of the weights or the tokenizer, a
        tokenizer that does not fit the config, a label mismatch or weights that do not fit.
    """
    directory = Path(directory)
    doc = _read_card(directory)
    card_path = directory / CARD_FILE
    weights_sha = verified_file_sha256(directory, WEIGHTS_FILE, doc["weights_sha256"])
    tokenizer_sha = verified_file_sha256(directory, TOKENIZER_FILE, doc["tokenizer_sha256"])
    try:
        config = MultimodalConfig.from_dict(doc["config"])
        tokenizer = load_note_tokenizer(directory, max_length=config.max_length)
        config.check_tokenizer(tokenizer)
    except (TypeError, ValueError) as err:
        raise ModelPackageError(
            card_path, "config or tokenizer is invalid or they do not fit each other",
            expected="a valid config and the tokenizer it was built for", found=str(err),
            fix="re-export the package with the tokenizer used in training",
        ) from err  # fmt: skip
    if expected_labels is not None and tuple(config.labels) != tuple(expected_labels):
        raise ModelPackageError(
            card_path, "the model's classes differ from (or are ordered unlike) those expected",
            expected=f"config.labels == {list(expected_labels)}",
            found=f"config.labels == {list(config.labels)}",
            fix="use a package trained for these classes, outputs in this order",
        )  # fmt: skip
    try:
        state = load_file(str(directory / WEIGHTS_FILE), device="cpu")
    except SafetensorError as err:
        raise ModelPackageError(
            directory / WEIGHTS_FILE, "not a readable safetensors file", expected="safetensors",
            found=str(err), fix="save with safetensors.torch.save_file",
        ) from err  # fmt: skip
    model = _build(directory / WEIGHTS_FILE, str(doc["arm"]), config, state)
    card = MultimodalCard(
        vendor=str(doc["vendor"]),
        intended_use=str(doc["intended_use"]),
        description=str(doc.get("description", "")),
        created_utc=str(doc.get("created_utc", "")),
        training=doc.get("training"),
        validation=doc.get("validation"),
        lineage=doc.get("lineage"),
    )
    return LoadedMultimodal(
        model=model,
        arm=str(doc["arm"]),
        config=config,
        tokenizer=tokenizer,
        card=card,
        sha256=_package_hash(doc, weights_sha, tokenizer_sha),
        weights_sha256=weights_sha,
        tokenizer_sha256=tokenizer_sha,
        path=directory,
    )


def _package_hash(doc: Mapping[str, Any], weights_sha: str, tokenizer_sha: str) -> str:
    h = hashlib.sha256()
    h.update(f"{MULTIMODAL_FORMAT}\n{CARD_FILE}\0".encode())
    h.update(json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode())
    h.update(f"\n{WEIGHTS_FILE}\0{weights_sha}\n{TOKENIZER_FILE}\0{tokenizer_sha}\n".encode())
    return h.hexdigest()


def multimodal_package_sha256(directory: str | os.PathLike[str]) -> str:
    """Identity of a package: sha256 over the canonical card and the files' sha256s.

    Parameters
    ----------
    directory : path
        The package directory.

    Returns
    -------
    str
        Lowercase hex digest (what predictions carry as ``model_sha256``).
    """
    directory = Path(directory)
    doc = _read_card(directory)
    return _package_hash(
        doc, sha256_file(directory / WEIGHTS_FILE), sha256_file(directory / TOKENIZER_FILE)
    )
