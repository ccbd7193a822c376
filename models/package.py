"""The vendor model package: a directory that a vendor hands over and clinaudit audits.

Format ``clinaudit.model_package/v1``
=====================================

A model package is a directory holding exactly these files::

    <package>/
        model.safetensors     the weights (required)
        model_card.json       what the weights are and how to feed them (required, written last)
        recalibration.json    reserved (optional); site maps are an output of the study's
                              recalibration stage (recalibration_maps.json)

``model.safetensors``
    The network's ``state_dict`` in the `safetensors <https://huggingface.co/docs/safetensors>`_
    format, written with ``safetensors.torch.save_file(state_dict, "model.safetensors")`` (every
    tensor contiguous, on the CPU). Keys must be exactly those of the network that the adapter
    named in the card builds (a strict ``load_state_dict``). Pickle-based files (``.pt``, ``.pth``,
    ``.bin``, ``.ckpt``, ``.pkl``) can run arbitrary code when loaded: a package that contains one
    is refused, even next to a ``model.safetensors``.

``model_card.json``
    A UTF-8 JSON object with these keys:

    ``format``
        The string ``"clinaudit.model_package/v1"``.
    ``adapter``
        Registered adapter that rebuilds the network, e.g. ``"timm_cxr"`` (any timm architecture,
        one input channel, one logit per label) or ``"tiny_cnn"`` (tests only).
    ``config``
        The adapter configuration: ``architecture`` (e.g. ``"resnet18"``, ``"densenet121"``),
        ``input_size`` (side of the square input in pixels), ``in_chans`` (1, or 3 when the grey
        image is repeated), ``mean`` and ``std`` (per-channel normalisation of ``[0, 1]`` pixels:
        ``(x - mean) / std``), ``labels`` (output names **in output order**; for chest X-rays
        the 14 ChestX-ray14 findings in NIH order: Atelectasis, Cardiomegaly, Effusion,
        Infiltration, Mass, Nodule, Pneumonia, Pneumothorax, Consolidation, Edema, Emphysema,
        Fibrosis, Pleural_Thickening, Hernia), ``version`` and ``licence`` of the model.
        Input images are grey-level, MONOCHROME2 polarity (bone bright), scaled to ``[0, 1]`` and
        resized to ``input_size`` x ``input_size`` before normalisation. Outputs are logits; the
        probability of each label is ``sigmoid(logit)``.
    ``vendor``, ``intended_use``, ``description``
        Free text: who supplies the model and for which use and population it is intended.
    ``operating_thresholds``
        Object mapping every label to the probability threshold (in ``[0, 1]``) at which the
        vendor calls the finding positive.
    ``training_data``
        ``null`` or an object describing the development data: ``sites`` (list), ``n_images``,
        ``n_patients``, ``images_per_site`` (site -> count), ``prevalence`` (label -> fraction
        positive among labelled images), ``n_labelled`` (label -> count), ``demographics``
        (attribute -> category -> fraction, or numeric summary) and ``quality`` (image-quality
        feature -> ``mean``/``std``/``p05``/``median``/``p95``/``missing_fraction``).
    ``validation_auroc``
        Object mapping labels to the vendor's held-out AUROC (``null`` where undefined).
    ``created_utc``
        ISO-8601 time the package was written.
    ``weights_file`` and ``weights_sha256``
        ``"model.safetensors"`` and the lowercase hex sha256 of that file's bytes.
    ``lineage`` (optional)
        Only in a package derived from another one (focused re-training,
        :mod:`clinaudit.models.finetune`; transfer to new targets and its from-scratch baseline,
        :mod:`clinaudit.models.transfer`): an object with at least ``parent_package_sha256`` and
        ``method``. Absent in original packages.

Loading (:func:`load_package`) refuses pickle files, checks the format, recomputes the sha256 of
the weights and compares it with ``weights_sha256``, checks that ``config.labels`` equals the
labels the audit expects (same names, same order) and that every label has a threshold, rebuilds
the network through the adapter and loads the weights strictly. Every failure raises
:class:`ModelPackageError` naming the file, the expected and the found value, and the fix.

Provenance: :func:`package_sha256` hashes the canonical card JSON together with the weights'
sha256; predictions carry it as ``model_sha256``. ``recalibration.json`` is deliberately not part of
this identity: recalibration is recorded and hashed by the audit that produces it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from clinaudit.models.model_card import (
    ModelCard,
    TrainingDataSummary,
    floats_or_nan,
    json_safe,
)
from clinaudit.models.registry import (
    AdapterConfig,
    ModelAdapter,
    UnknownAdapterError,
    adapter_from_config,
)
from clinaudit.sources.cxr_labels import FINDINGS
from clinaudit.sources.landing import sha256_file

PACKAGE_FORMAT = "clinaudit.model_package/v1"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model_card.json"
RECALIBRATION_FILE = "recalibration.json"
PICKLE_SUFFIXES: tuple[str, ...] = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle", ".joblib")
_CARD_KEYS = (
    "format",
    "adapter",
    "config",
    "vendor",
    "intended_use",
    "operating_thresholds",
    "weights_file",
    "weights_sha256",
)


class ModelPackageError(ValueError):
    """A model package that cannot be trusted or loaded.

    Attributes
    ----------
    path : str
        The file (or directory) concerned.
    message, expected, found, fix : str
        What is wrong, what was expected, what was found, how to fix it.
    """

    def __init__(
        self, path: str | os.PathLike[str], message: str, *, expected: str, found: str, fix: str
    ) -> None:
        self.path = str(path)
        self.message = message
        self.expected = expected
        self.found = found
        self.fix = fix
        super().__init__(f"{self.path}: {message} (expected {expected}; found {found}). Fix: {fix}")


@dataclass(frozen=True)
class LoadedPackage:
    """A verified package: the network (CPU, eval mode), its adapter and card, and hashes."""

    model: nn.Module
    adapter: ModelAdapter
    card: ModelCard
    sha256: str
    weights_sha256: str
    path: Path

    @property
    def config(self) -> AdapterConfig:
        """The adapter configuration (input size, normalisation, labels...)."""
        return self.adapter.config


def _canonical_json(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _check_thresholds(
    path: Path, thresholds: Mapping[str, Any], labels: Sequence[str]
) -> dict[str, float]:
    missing = [label for label in labels if label not in thresholds]
    extra = [k for k in thresholds if k not in labels]
    if missing or extra:
        raise ModelPackageError(
            path,
            "operating_thresholds do not cover exactly the model's labels",
            expected=f"one threshold for each of {list(labels)}",
            found=f"missing {missing}, unknown {extra}",
            fix=(
                "give one threshold per label "
                "(see clinaudit.models.evaluation.fit_operating_thresholds)"
            ),
        )
    out = {}
    for label in labels:
        value = thresholds[label]
        if not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
            raise ModelPackageError(
                path,
                f"operating threshold of {label!r} is not a probability",
                expected="a number in [0, 1]",
                found=repr(value),
                fix="write thresholds as probabilities between 0 and 1",
            )
        out[label] = float(value)
    return out


def refuse_pickles(directory: Path) -> None:
    """Raise :class:`ModelPackageError` for a pickle-based file in a package directory."""
    for entry in sorted(directory.iterdir()):
        if entry.suffix.lower() in PICKLE_SUFFIXES:
            raise ModelPackageError(
                entry,
                "pickle-based weight files can execute code when loaded and are refused",
                expected=f"weights only in {WEIGHTS_FILE}",
                found=f"{entry.name} in the package directory",
                fix=(
                    "convert with safetensors.torch.save_file(model.state_dict(), "
                    f"'{WEIGHTS_FILE}') and remove {entry.name} from the package"
                ),
            )


def verified_file_sha256(directory: Path, name: str, recorded: object) -> str:
    """sha256 of the package file ``directory / name``, which must equal the card's ``recorded``.

    Raises
    ------
    ModelPackageError
        The file is missing or its bytes changed (naming the file and the fix).
    """
    path = directory / name
    if not path.is_file():
        raise ModelPackageError(
            path, f"{name} is missing", expected=name, found="no such file",
            fix="copy the whole package directory",
        )  # fmt: skip
    found = sha256_file(path)
    if found != str(recorded).lower():
        raise ModelPackageError(
            path, f"sha256 of {name} differs from the card (corrupted or replaced file)",
            expected=str(recorded), found=found,
            fix="re-copy the package; its files never change without a new card",
        )  # fmt: skip
    return found


def state_dict_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights, detached, on the CPU and contiguous (what safetensors saves)."""
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def _load_state(path: Path, adapter: ModelAdapter, state: Mapping[str, torch.Tensor]) -> nn.Module:
    model = adapter.create_model(seed=0)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        expected_keys = set(model.state_dict())
        missing = sorted(expected_keys - set(state))[:5]
        unexpected = sorted(set(state) - expected_keys)[:5]
        raise ModelPackageError(
            path,
            f"weights do not fit adapter {adapter.name!r} with architecture "
            f"{adapter.config.architecture!r} and {adapter.config.num_labels} labels",
            expected=f"the {len(expected_keys)} tensors of that network",
            found=(
                f"{len(state)} tensors; missing e.g. {missing}, unexpected e.g. {unexpected}; "
                f"torch says: {str(err).splitlines()[0]}"
            ),
            fix="export the state_dict of the network described in model_card.json config",
        ) from err
    return model.eval()


def save_package(
    directory: str | os.PathLike[str],
    adapter: ModelAdapter,
    model: nn.Module,
    card: ModelCard,
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``model.safetensors`` then ``model_card.json`` (last, as the ready marker).

    Parameters
    ----------
    directory : path
        Package directory (created if needed).
    adapter : ModelAdapter
        The adapter that built ``model``; its name and config go into the card.
    model : torch.nn.Module
        The trained network.
    card : ModelCard
        Vendor, intended use, thresholds, training-data summary...
    overwrite : bool
        Replace an existing package in ``directory``.

    Returns
    -------
    Path
        The package directory.

    Raises
    ------
    ModelPackageError
        If thresholds do not match the labels, the directory already holds a package and
        ``overwrite`` is false, or the weights do not load back into the adapter's network.
    """
    directory = Path(directory)
    labels = adapter.config.labels
    thresholds = _check_thresholds(directory / CARD_FILE, card.operating_thresholds, labels)
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
    _load_state(directory / WEIGHTS_FILE, adapter, state)  # what we write must load back
    tmp_weights = directory / f".{WEIGHTS_FILE}.tmp"
    # One metadata entry: safetensors writes its metadata map in hash order, so two entries made
    # the bytes (and weights_sha256) of identical weights differ from one save to the next.
    save_file(state, str(tmp_weights), metadata={"format": "pt"})
    os.replace(tmp_weights, directory / WEIGHTS_FILE)
    created = card.created_utc or dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    doc = {
        "format": PACKAGE_FORMAT,
        "adapter": adapter.name,
        "config": adapter.config.to_dict(),
        "vendor": card.vendor,
        "intended_use": card.intended_use,
        "description": card.description,
        "operating_thresholds": thresholds,
        "training_data": card.training_data.to_dict() if card.training_data else None,
        "validation_auroc": json_safe(dict(card.validation_auroc)),
        "created_utc": created,
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": sha256_file(directory / WEIGHTS_FILE),
    }
    if card.lineage is not None:  # absent (not null) in original packages: their hash is unchanged
        doc["lineage"] = json_safe(dict(card.lineage))
    tmp_card = directory / f".{CARD_FILE}.tmp"
    tmp_card.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp_card, directory / CARD_FILE)
    return directory


_REEXPORT_FIX = "re-export the package in the documented format"
_SAFETENSORS_FIX = f"save the state_dict with safetensors.torch.save_file as {WEIGHTS_FILE}"


def _weights_path(directory: Path) -> Path:
    """The package's weights file; raises :class:`ModelPackageError` when it is missing."""
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelPackageError(
            weights,
            "weights file is missing",
            expected=f"{WEIGHTS_FILE} (safetensors)",
            found="no such file",
            fix="copy the weights into the package directory",
        )
    return weights


def read_card_json(
    directory: Path,
    *,
    required: Sequence[str],
    contents: str,
    pointer: str = "point --model at the package directory",
) -> dict[str, Any]:
    """The ``model_card.json`` of a package directory as a dict holding ``required`` keys.

    Checks first that the directory exists (``contents`` says what it should hold) and holds no
    pickle-based file (:func:`refuse_pickles`).

    Raises
    ------
    ModelPackageError
        Naming the file, what was expected and found, and the fix.
    """
    path = directory / CARD_FILE
    if not directory.is_dir():
        raise ModelPackageError(
            directory,
            "model package directory does not exist",
            expected=f"a directory with {contents}",
            found="nothing at that path",
            fix=pointer,
        )
    refuse_pickles(directory)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ModelPackageError(
            path,
            "model card is missing",
            expected=f"{CARD_FILE} next to {WEIGHTS_FILE}",
            found="no such file",
            fix="write the card described in clinaudit.models.package (docs/)",
        ) from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelPackageError(
            path,
            "model card is not valid JSON",
            expected="UTF-8 JSON",
            found=str(err),
            fix="re-export the card",
        ) from err
    if not isinstance(doc, dict):
        raise ModelPackageError(
            path,
            "model card is not a JSON object",
            expected="an object",
            found=type(doc).__name__,
            fix="re-export the card",
        )
    missing = [k for k in required if k not in doc]
    if missing:
        raise ModelPackageError(
            path,
            "model card lacks required keys",
            expected=f"keys {list(required)}",
            found=f"missing {missing}",
            fix="add them (see the format description)",
        )
    return doc


def _read_card(directory: Path) -> dict[str, Any]:
    path = directory / CARD_FILE
    doc = read_card_json(
        directory, required=_CARD_KEYS, contents="model.safetensors and model_card.json"
    )
    for key, expected, message, fix in (
        ("format", PACKAGE_FORMAT, "unknown package format", _REEXPORT_FIX),
        ("weights_file", WEIGHTS_FILE, "weights must be a safetensors file", _SAFETENSORS_FIX),
    ):
        if doc[key] != expected:
            raise ModelPackageError(
                path, message, expected=repr(expected), found=repr(doc[key]), fix=fix
            )
    return doc


def load_package(
    directory: str | os.PathLike[str], *, expected_labels: Sequence[str] | None = FINDINGS
) -> LoadedPackage:
    """Verify and load a model package.

    Parameters
    ----------
    directory : path
        The package directory.
    expected_labels : sequence of str or None
        Labels the audit needs, in output order; ``None`` skips the check.

    Returns
    -------
    LoadedPackage
        Network on the CPU in eval mode, adapter, card, package sha256 and weights sha256.

    Raises
    ------
    ModelPackageError
        On pickle files, an unreadable card, a weights hash mismatch, a label mismatch (names or
        order), missing thresholds or weights that do not fit the network.
    """
    directory = Path(directory)
    doc = _read_card(directory)
    card_path = directory / CARD_FILE
    weights = _weights_path(directory)
    found_sha = sha256_file(weights)
    if found_sha != str(doc["weights_sha256"]).lower():
        raise ModelPackageError(
            weights,
            "sha256 of the weights differs from model_card.json weights_sha256 (corrupted or "
            "replaced file)",
            expected=str(doc["weights_sha256"]),
            found=found_sha,
            fix="re-copy the package from the vendor; weights never change without a new card",
        )
    try:
        config = AdapterConfig.from_dict(doc["config"])
        adapter = adapter_from_config(str(doc["adapter"]), config)
    except (TypeError, ValueError, UnknownAdapterError) as err:
        raise ModelPackageError(
            card_path,
            "adapter or config in the card is invalid",
            expected="a registered adapter and a valid config",
            found=str(err),
            fix="correct the card's adapter/config",
        ) from err
    if expected_labels is not None and tuple(config.labels) != tuple(expected_labels):
        same_set = sorted(config.labels) == sorted(expected_labels)
        raise ModelPackageError(
            card_path,
            "the model's output labels are in a different order than the audit expects"
            if same_set
            else "the model's output labels differ from the labels the audit expects",
            expected=f"config.labels == {list(expected_labels)}",
            found=f"config.labels == {list(config.labels)}",
            fix="re-export the model with outputs in the expected order (permute the final layer "
            "rows) and list them in that order in config.labels",
        )
    thresholds = _check_thresholds(card_path, doc["operating_thresholds"], config.labels)
    try:
        state = load_file(str(weights), device="cpu")
    except SafetensorError as err:
        raise ModelPackageError(
            weights,
            "not a readable safetensors file",
            expected="safetensors",
            found=str(err),
            fix="save with safetensors.torch.save_file",
        ) from err
    model = _load_state(weights, adapter, state)
    training = doc.get("training_data")
    card = ModelCard(
        vendor=str(doc["vendor"]),
        intended_use=str(doc["intended_use"]),
        operating_thresholds=thresholds,
        training_data=TrainingDataSummary.from_dict(training) if training else None,
        validation_auroc=floats_or_nan(doc.get("validation_auroc") or {}),
        description=str(doc.get("description", "")),
        created_utc=str(doc.get("created_utc", "")),
        lineage=doc.get("lineage"),
    )
    return LoadedPackage(
        model=model,
        adapter=adapter,
        card=card,
        sha256=_package_hash(doc, found_sha),
        weights_sha256=found_sha,
        path=directory,
    )


def _package_hash(card_doc: Mapping[str, Any], weights_sha: str) -> str:
    h = hashlib.sha256()
    h.update(f"{PACKAGE_FORMAT}\n{CARD_FILE}\0".encode())
    h.update(_canonical_json(card_doc))
    h.update(f"\n{WEIGHTS_FILE}\0{weights_sha}\n".encode())
    return h.hexdigest()


def package_sha256(directory: str | os.PathLike[str]) -> str:
    """Stable identity of a package: sha256 over the canonical card JSON and the weights' sha256.

    Re-indenting or re-ordering keys of ``model_card.json`` does not change it; any change of a
    card value or of a weight byte does. ``recalibration.json`` is not included.

    Parameters
    ----------
    directory : path
        The package directory.

    Returns
    -------
    str
        Lowercase hex digest.
    """
    directory = Path(directory)
    doc = _read_card(directory)
    return _package_hash(doc, sha256_file(_weights_path(directory)))
