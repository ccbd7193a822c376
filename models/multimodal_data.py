"""Image + note pairs decoded, resized and tokenized once, as tensors the multimodal arms read.

:func:`prepare_pairs` turns uint8 RGB images (an ``(N, H, W, 3)`` array, a list of arrays of any
size, or image files read by a loader) and note strings (``""`` or ``None`` when missing) into a
:class:`PairedData` of cached tensors: images as ``(N, 3, S, S)`` uint8 (a quarter of the memory
of float32; normalised per batch), notes as fixed-length token ids. Training epochs and
evaluations then slice these tensors instead of decoding, resizing and tokenizing every sample
again (``bench/bench_multimodal_train.py`` times the difference). :func:`remove_notes` blanks a
seeded fraction of the present notes, for the evaluation with notes removed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerFast

from clinaudit.models.multimodal_config import MultimodalConfig, normalise_pixels
from clinaudit.models.text_tokenizer import CLS_ID, SEP_ID, encode_notes

RgbLoader = Callable[[str | os.PathLike[str]], np.ndarray]
ImagesInput = np.ndarray | Sequence[np.ndarray] | Sequence[str | os.PathLike[str]]
__all__ = [
    "PairedData",
    "RgbLoader",
    "batch_inputs",
    "prepare_images",
    "prepare_pairs",
    "read_rgb",
    "remove_notes",
]


@dataclass(frozen=True)
class PairedData:
    """Cached model inputs of ``N`` image + note pairs (CPU tensors).

    Attributes
    ----------
    images : torch.Tensor
        ``(N, 3, S, S)`` uint8 RGB.
    input_ids, attention_mask : torch.Tensor
        ``(N, L)`` int64 from :func:`~clinaudit.models.text_tokenizer.encode_notes`.
    note_present : torch.Tensor
        ``(N,)`` bool.
    labels : torch.Tensor or None
        ``(N,)`` int64 class indices, or ``None`` for unlabelled data.
    """

    images: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    note_present: torch.Tensor
    labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: np.ndarray | torch.Tensor | Sequence[int]) -> PairedData:
        """The rows ``index`` (a copy)."""
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long)
        return PairedData(
            images=self.images[idx],
            input_ids=self.input_ids[idx],
            attention_mask=self.attention_mask[idx],
            note_present=self.note_present[idx],
            labels=None if self.labels is None else self.labels[idx],
        )


def read_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode an image file (PNG, JPEG, ...) as ``(H, W, 3)`` uint8 RGB with Pillow."""
    from PIL import Image

    with Image.open(path) as img:
        return np.array(img.convert("RGB"), dtype=np.uint8)


def _resize(batch: torch.Tensor, size: int) -> torch.Tensor:
    """``(n, H, W, 3)`` uint8 -> ``(n, 3, size, size)`` uint8, antialiased bilinear."""
    x = batch.permute(0, 3, 1, 2).float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8)


def prepare_images(
    images: ImagesInput, size: int, *, loader: RgbLoader | None = None, chunk: int = 256
) -> torch.Tensor:
    """Decode (if files) and resize RGB images once to ``(N, 3, size, size)`` uint8.

    Parameters
    ----------
    images : numpy.ndarray, sequence of numpy.ndarray or sequence of path
        ``(N, H, W, 3)`` uint8, or one ``(H, W, 3)`` uint8 array per image (sizes may differ),
        or image files.
    size : int
        Output side in pixels.
    loader : callable, optional
        ``path -> (H, W, 3) uint8``; default :func:`read_rgb`.
    chunk : int
        Images resized together.

    Returns
    -------
    torch.Tensor
        ``(N, 3, size, size)`` uint8.

    Raises
    ------
    ValueError
        If an image is not ``(H, W, 3)`` uint8.
    """
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise ValueError(
                f"images has shape {images.shape} and dtype {images.dtype}; expected "
                "(N, H, W, 3) uint8 RGB"
            )
        out = torch.empty((len(images), 3, size, size), dtype=torch.uint8)
        for s in range(0, len(images), chunk):
            part = np.require(images[s : s + chunk], requirements=("C", "W"))
            out[s : s + chunk] = _resize(torch.from_numpy(part), size)
        return out
    read = loader or read_rgb
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8)
    for i, item in enumerate(images):
        img = read(item) if isinstance(item, str | os.PathLike) else np.asarray(item)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(
                f"image {i} has shape {img.shape} and dtype {img.dtype}; expected (H, W, 3) uint8 "
                "RGB (convert grey or RGBA images to RGB first)"
            )
        part = np.require(img, requirements=("C", "W"))  # torch wants writable memory
        out[i] = _resize(torch.from_numpy(part)[None], size)[0]
    return out


def prepare_pairs(
    images: ImagesInput,
    notes: Sequence[object],
    tokenizer: PreTrainedTokenizerFast,
    config: MultimodalConfig,
    *,
    labels: Sequence[int] | np.ndarray | None = None,
    loader: RgbLoader | None = None,
) -> PairedData:
    """Cache images and notes as model inputs (decoded, resized and tokenized once).

    Parameters
    ----------
    images : numpy.ndarray, sequence of numpy.ndarray or sequence of path
        See :func:`prepare_images`.
    notes : sequence of str or None
        One note per image; ``""``/``None`` when missing.
    tokenizer : transformers.PreTrainedTokenizerFast
        The note tokenizer; must match ``config`` (vocabulary size and special ids).
    config : MultimodalConfig
        ``image_size`` and ``max_length``.
    labels : sequence of int, optional
        Class index per pair, in ``range(config.num_labels)``.
    loader : callable, optional
        File decoder for paths (default :func:`read_rgb`).

    Returns
    -------
    PairedData

    Raises
    ------
    ValueError
        On a length mismatch, labels out of range or a tokenizer that does not fit ``config``.
    """
    config.check_tokenizer(tokenizer)
    n = len(images)
    if len(notes) != n or (labels is not None and len(labels) != n):
        raise ValueError(
            f"got {n} images, {len(notes)} notes and "
            f"{'no' if labels is None else len(labels)} labels; give one note (and label) per image"
        )
    y = None
    if labels is not None:
        y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        bad = y[(y < 0) | (y >= config.num_labels)]
        if bad.numel():
            raise ValueError(
                f"labels hold {sorted(set(bad.tolist()))[:5]}; expected class indices 0.."
                f"{config.num_labels - 1} for {list(config.labels)}"
            )
    enc = encode_notes(tokenizer, notes, max_length=config.max_length)
    return PairedData(
        images=prepare_images(images, config.image_size, loader=loader),
        input_ids=enc.input_ids,
        attention_mask=enc.attention_mask,
        note_present=enc.note_present,
        labels=y,
    )


def _blank(data: PairedData, drop: torch.Tensor) -> PairedData:
    """``data`` with the notes of rows ``drop`` (bool) replaced by ``[CLS] [SEP]``."""
    ids, mask = data.input_ids.clone(), data.attention_mask.clone()
    ids[drop] = 0
    mask[drop] = 0
    ids[drop, 0], ids[drop, 1] = CLS_ID, SEP_ID
    mask[drop, :2] = 1
    return replace(data, input_ids=ids, attention_mask=mask, note_present=data.note_present & ~drop)


def remove_notes(data: PairedData, fraction: float, *, seed: int = 0) -> PairedData:
    """Blank a seeded ``fraction`` of the notes that are present (as if never written).

    Parameters
    ----------
    data : PairedData
        The pairs.
    fraction : float
        Share in ``[0, 1]`` of the present notes removed (``round(fraction * n_present)``).
    seed : int
        Which notes: the same seed removes the same notes; a larger fraction removes a superset.

    Returns
    -------
    PairedData
        A copy; removed notes read ``[CLS] [SEP]`` with ``note_present`` False.

    Examples
    --------
    >>> import torch
    >>> d = PairedData(torch.zeros(4, 3, 8, 8, dtype=torch.uint8),
    ...     torch.tensor([[2, 9, 3]] * 4), torch.ones(4, 3, dtype=torch.long),
    ...     torch.tensor([True, True, True, False]))
    >>> remove_notes(d, 2 / 3, seed=0).note_present.sum().item()
    1
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction={fraction} must lie in [0, 1] (0.3 removes 30% of notes)")
    present = np.flatnonzero(data.note_present.numpy())
    order = np.random.default_rng(seed).permutation(present)
    drop = torch.zeros(len(data), dtype=torch.bool)
    drop[torch.from_numpy(order[: int(round(fraction * len(present)))])] = True
    return _blank(data, drop)


def batch_inputs(
    data: PairedData,
    index: torch.Tensor,
    config: MultimodalConfig,
    device: torch.device,
    *,
    drop_note: torch.Tensor | None = None,
    drop_image: torch.Tensor | None = None,
    flip: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The arm's keyword inputs for rows ``index`` on ``device``.

    Padding beyond the longest note of the batch is cut (attention ignores it anyway).

    Parameters
    ----------
    data : PairedData
        Cached pairs.
    index : torch.Tensor
        Row indices.
    config : MultimodalConfig
        Normalisation.
    device : torch.device
        Target device.
    drop_note, drop_image : torch.Tensor, optional
        ``(len(index),)`` bool: modality dropout (a dropped note reads ``[CLS] [SEP]`` and is
        flagged missing; a dropped image is flagged missing and its pixels zeroed).
    flip : torch.Tensor, optional
        ``(len(index), 2)`` bool: horizontal / vertical flip per image (augmentation).

    Returns
    -------
    dict of torch.Tensor
        ``pixels``, ``input_ids``, ``attention_mask``, ``note_present``, ``image_present``.
    """
    sub = data.subset(index.cpu())
    if drop_note is not None and bool(drop_note.any()):
        sub = _blank(sub, drop_note.cpu())
    images = sub.images.to(device, non_blocking=True)
    if flip is not None:
        flip = flip.to(device)
        images = torch.where(flip[:, 0].view(-1, 1, 1, 1), images.flip(3), images)
        images = torch.where(flip[:, 1].view(-1, 1, 1, 1), images.flip(2), images)
    image_present = torch.ones(len(sub), dtype=torch.bool)
    if drop_image is not None:
        image_present = ~drop_image.cpu()
    pixels = normalise_pixels(images, config) * image_present.to(device).view(-1, 1, 1, 1)
    length = max(2, int(sub.attention_mask.sum(dim=1).max()))
    return {
        "pixels": pixels,
        "input_ids": sub.input_ids[:, :length].to(device),
        "attention_mask": sub.attention_mask[:, :length].to(device),
        "note_present": sub.note_present.to(device),
        "image_present": image_present.to(device),
    }
