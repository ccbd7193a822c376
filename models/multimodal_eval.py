"""Batched prediction of the image + note arms, and their evaluation with notes removed.

:func:`predict_proba` runs any arm over cached pairs (:class:`~clinaudit.models.multimodal_data.
PairedData`) in eval mode, batched, on the device :func:`~clinaudit.models.devices.select_device`
picks (bf16 autocast on CUDA); :func:`evaluate_note_removal` scores an arm after a seeded share of
the present notes is removed (0, 30 and 70 % by default), the robustness check of the study.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from clinaudit.models.devices import DeviceChoice, DevicePreference, select_device
from clinaudit.models.evaluation import per_label_auroc
from clinaudit.models.multimodal_arms import LateFusionArm
from clinaudit.models.multimodal_config import MultimodalConfig
from clinaudit.models.multimodal_data import PairedData, batch_inputs, remove_notes

NOTE_REMOVAL_FRACTIONS: tuple[float, ...] = (0.0, 0.3, 0.7)
__all__ = [
    "NOTE_REMOVAL_FRACTIONS",
    "NoteRemovalResult",
    "component_log_probs",
    "evaluate_note_removal",
    "predict_logits",
    "predict_proba",
]


def _choice(device: DeviceChoice | DevicePreference) -> DeviceChoice:
    return device if isinstance(device, DeviceChoice) else select_device(device)


def _batches(
    model: nn.Module,
    data: PairedData,
    config: MultimodalConfig,
    batch_size: int,
    choice: DeviceChoice,
) -> Iterator[dict[str, torch.Tensor]]:
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    if data.images.shape[-1] != config.image_size:
        raise ValueError(
            f"images are {data.images.shape[-1]} px, the model takes {config.image_size} px; "
            "prepare the pairs with the model's config"
        )
    model.to(choice.device).eval()
    for idx in torch.arange(len(data)).split(batch_size):
        yield batch_inputs(data, idx, config, choice.device)


def predict_logits(
    model: nn.Module,
    data: PairedData,
    config: MultimodalConfig,
    *,
    batch_size: int = 256,
    device: DeviceChoice | DevicePreference = "auto",
) -> np.ndarray:
    """Class logits of every pair, batched, in eval mode (the model is moved to the device).

    Parameters
    ----------
    model : torch.nn.Module
        Any arm.
    data : PairedData
        Cached pairs (labels not needed).
    config : MultimodalConfig
        The arm's config.
    batch_size : int
        Pairs per forward pass.
    device : DeviceChoice or {"auto", "cuda", "mps", "cpu"}
        Where to run.

    Returns
    -------
    numpy.ndarray
        ``(N, K)`` float32 logits.
    """
    choice = _choice(device)
    out = []
    for inputs in _batches(model, data, config, batch_size, choice):
        with (
            torch.no_grad(),
            torch.autocast(
                choice.device.type,
                dtype=choice.autocast_dtype or torch.float32,
                enabled=choice.autocast_dtype is not None,
            ),
        ):
            out.append(model(**inputs).float().cpu())
    if not out:
        return np.empty((0, config.num_labels), dtype=np.float32)
    return torch.cat(out).numpy()


def predict_proba(
    model: nn.Module,
    data: PairedData,
    config: MultimodalConfig,
    *,
    batch_size: int = 256,
    device: DeviceChoice | DevicePreference = "auto",
) -> np.ndarray:
    """Class probabilities (softmax of :func:`predict_logits`), rows summing to 1.

    Parameters
    ----------
    model : torch.nn.Module
        Any arm.
    data : PairedData
        Cached pairs.
    config : MultimodalConfig
        The arm's config.
    batch_size : int
        Pairs per forward pass.
    device : DeviceChoice or {"auto", "cuda", "mps", "cpu"}
        Where to run.

    Returns
    -------
    numpy.ndarray
        ``(N, K)`` float32 probabilities in ``config.labels`` order.

    Examples
    --------
    >>> probs = predict_proba(result.model, test, cfg, device="cpu")  # doctest: +SKIP
    """
    logits = predict_logits(model, data, config, batch_size=batch_size, device=device)
    return torch.softmax(torch.from_numpy(logits), dim=1).numpy()


def component_log_probs(
    model: LateFusionArm,
    data: PairedData,
    config: MultimodalConfig,
    *,
    batch_size: int = 256,
    device: DeviceChoice | DevicePreference = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image-arm and text-arm log-probabilities of a late-fusion arm (CPU float32 tensors)."""
    choice = _choice(device)
    image, text = [], []
    for inputs in _batches(model, data, config, batch_size, choice):
        with torch.autocast(
            choice.device.type,
            dtype=choice.autocast_dtype or torch.float32,
            enabled=choice.autocast_dtype is not None,
        ):
            i, t = model.component_log_probs(**inputs)
        image.append(i.float().cpu())
        text.append(t.float().cpu())
    model.to("cpu")
    return torch.cat(image), torch.cat(text)


@dataclass(frozen=True)
class NoteRemovalResult:
    """Scores of one arm after a share of the notes is removed.

    Attributes
    ----------
    fraction : float
        Share of the present notes removed.
    seed : int
        Seed of the removal.
    n : int
        Pairs scored.
    notes_present : int
        Pairs that still have a note.
    accuracy : float
        Share of pairs whose most probable class is the label.
    macro_auroc : float
        Mean one-vs-rest AUROC over the classes with both outcomes (NaN if none).
    log_loss : float
        Mean cross-entropy of the label's probability (clipped at 1e-12).
    probabilities : numpy.ndarray
        ``(n, K)`` probabilities, for further metrics.
    """

    fraction: float
    seed: int
    n: int
    notes_present: int
    accuracy: float
    macro_auroc: float
    log_loss: float
    probabilities: np.ndarray


def evaluate_note_removal(
    model: nn.Module,
    data: PairedData,
    config: MultimodalConfig,
    *,
    fractions: Sequence[float] = NOTE_REMOVAL_FRACTIONS,
    seed: int = 0,
    batch_size: int = 256,
    device: DeviceChoice | DevicePreference = "auto",
) -> tuple[NoteRemovalResult, ...]:
    """Score an arm with 0 / 30 / 70 % (``fractions``) of the present notes removed.

    Removal is :func:`~clinaudit.models.multimodal_data.remove_notes` with ``seed``: the same
    notes for every arm, and each larger fraction removes a superset of a smaller one.

    Parameters
    ----------
    model : torch.nn.Module
        Any arm.
    data : PairedData
        Labelled test pairs.
    config : MultimodalConfig
        The arm's config.
    fractions : sequence of float
        Shares in ``[0, 1]``.
    seed : int
        Seed of the removal.
    batch_size : int
        Pairs per forward pass.
    device : DeviceChoice or {"auto", "cuda", "mps", "cpu"}
        Where to run.

    Returns
    -------
    tuple of NoteRemovalResult
        One per fraction, in the given order.

    Raises
    ------
    ValueError
        If ``data`` has no labels or a fraction lies outside ``[0, 1]``.
    """
    if data.labels is None:
        raise ValueError("evaluate_note_removal needs labelled pairs (prepare_pairs(labels=...))")
    y = data.labels.numpy()
    onehot = np.eye(config.num_labels)[y]
    out = []
    for fraction in fractions:
        reduced = remove_notes(data, float(fraction), seed=seed)
        probs = predict_proba(model, reduced, config, batch_size=batch_size, device=device)
        aurocs = [v for v in per_label_auroc(onehot, probs, config.labels).values()]
        defined = [v for v in aurocs if math.isfinite(v)]
        p_true = np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0)
        out.append(
            NoteRemovalResult(
                fraction=float(fraction),
                seed=int(seed),
                n=len(y),
                notes_present=int(reduced.note_present.sum()),
                accuracy=float((probs.argmax(axis=1) == y).mean()),
                macro_auroc=float(np.mean(defined)) if defined else math.nan,
                log_loss=float(-np.log(p_true).mean()),
                probabilities=probs,
            )
        )
    return tuple(out)
