"""Batched inference: image files -> per-label probabilities -> schema-checked predictions table.

:func:`predict` runs a torch ``DataLoader`` whose workers decode, resize and normalise images while
the model runs; it uses ``torch.inference_mode``, the channels-last memory format, pinned memory and
bf16 autocast on CUDA, and on the CPU a copy of the network with BatchNorm folded into the
convolutions (see :mod:`clinaudit.models.devices`).

Where the time goes on a 2-core CPU (AVX-512, resnet10t at 160 px, demo-scale 304 px DICOMs,
quiet machine): reading + sha256 + decoding + resizing one file about 0.6-0.8 ms (pydicom parsing
and header reads about half of it); one image alone through the network 5.8-8.0 ms; in batches of
16, float32, channels-last 4.2 ms per image, 2.6-3.2 ms with BatchNorm folded, bf16 1.5-1.8 ms. The
float32 forward is compute-bound, so decoding in a background thread (or worker processes) only
takes cores from the network: whole path, float32, batch 16, 275 images/s decoding in-process,
260 with a prefetch thread, 180 with a prefetch thread and one torch thread; hence decoding
in-process on the CPU. ``torch.jit.trace`` + ``freeze`` (deprecated in torch 2.13) and
``torch.compile`` run the float32 forward in 2.8 and 2.6 ms per image, but cost 0.2 s and 5-9 s
before the first batch: not worth it for a site of 500-3,000 images.

Determinism on CPU: for the same model, files, ``batch_size`` and torch thread count, the output
is bitwise identical across runs and across ``num_workers`` (the loader keeps file order and
every op used is deterministic on CPU). A different batch size may change the last bits, because
oneDNN may pick another convolution kernel. ``torch.use_deterministic_algorithms`` is not set: it
is a process-wide switch that changes nothing for these CPU ops and would make unrelated CUDA code
raise. On CUDA, bf16 autocast gives results within about 1e-2 of float32, not bitwise.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import pandas as pd
import pandera.pandas as pa
import torch
from pandera.typing import Series
from torch import nn
from torch.utils.data import DataLoader, Dataset

from clinaudit.models.devices import (
    DeviceChoice,
    DevicePreference,
    Precision,
    prepare_model,
    select_device,
)
from clinaudit.models.registry import AdapterConfig, normalise_images
from clinaudit.sources.cxr_labels import FINDINGS

ImageLoader = Callable[[str], np.ndarray]
#: What :func:`predict` returns: sigmoid probabilities, or the network's logits themselves.
Output = Literal["probabilities", "logits"]
OUTPUTS: tuple[str, ...] = get_args(Output)
ProgressCallback = Callable[[int, int], None]
DEFAULT_MAX_PIXELS = 50_000_000


def _probability() -> pa.Field:
    return pa.Field(ge=0.0, le=1.0, nullable=False)


class Predictions(pa.DataFrameModel):
    """One row per image: identifiers, one probability per finding, the model's sha256."""

    image_id: Series[str] = pa.Field(unique=True, nullable=False)
    site: Series[str] = pa.Field(nullable=False)
    patient_pseudonym: Series[str] = pa.Field(nullable=False)
    Atelectasis: Series[float] = _probability()
    Cardiomegaly: Series[float] = _probability()
    Effusion: Series[float] = _probability()
    Infiltration: Series[float] = _probability()
    Mass: Series[float] = _probability()
    Nodule: Series[float] = _probability()
    Pneumonia: Series[float] = _probability()
    Pneumothorax: Series[float] = _probability()
    Consolidation: Series[float] = _probability()
    Edema: Series[float] = _probability()
    Emphysema: Series[float] = _probability()
    Fibrosis: Series[float] = _probability()
    Pleural_Thickening: Series[float] = _probability()
    Hernia: Series[float] = _probability()
    model_sha256: Series[str] = pa.Field(str_matches=r"^[0-9a-f]{64}$", nullable=False)

    class Config:
        strict = True
        coerce = True


ID_COLUMNS: tuple[str, ...] = ("image_id", "site", "patient_pseudonym")


def predictions_schema(labels: Sequence[str] = FINDINGS) -> pa.DataFrameSchema:
    """The :class:`Predictions` schema, with ``labels`` as the probability columns.

    Parameters
    ----------
    labels : sequence of str
        Probability columns (the 14 findings by default).

    Returns
    -------
    pandera.DataFrameSchema
        Strict, coercing schema.
    """
    schema = Predictions.to_schema()
    if tuple(labels) == FINDINGS:
        return schema
    return schema.remove_columns(list(FINDINGS)).add_columns(
        {label: pa.Column(float, pa.Check.in_range(0.0, 1.0), nullable=False) for label in labels}
    )


class ImageFileLoader:
    """Default loader: ``clinaudit.sources.images`` decode (DICOM or PNG) and resize.

    Picklable, so DataLoader workers can use it.

    Parameters
    ----------
    size : int
        Side of the square output.
    max_pixels : int
        Images with more pixels are refused by the decoder (decompression-bomb guard).
    expected_sha256 : mapping, optional
        ``str(path) -> sha256`` recorded when the file was validated; a file whose bytes no
        longer match is refused (it changed after validation), never scored.
    """

    def __init__(
        self,
        size: int,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        expected_sha256: Mapping[str, str] | None = None,
    ) -> None:
        self.size = int(size)
        self.max_pixels = int(max_pixels)
        self.expected_sha256 = dict(expected_sha256 or {})

    def __call__(self, path: str) -> np.ndarray:
        from clinaudit.sources.images import decode_image, resize_for_model

        data = Path(path).read_bytes()
        expected = self.expected_sha256.get(str(path))
        if expected is not None and hashlib.sha256(data).hexdigest() != expected:
            raise ValueError(
                f"{path}: sha256 differs from the one recorded at validation ({expected[:16]}...): "
                "the landed file changed after ingest; landed data must not change; re-land the "
                "batch and re-run ingest"
            )
        decoded = decode_image(data, name=str(path), max_pixels=self.max_pixels)
        return resize_for_model(decoded.pixels, self.size)


class ImageDataset(Dataset):
    """Files -> ``(C, S, S)`` float32 tensors, normalised for the model (or raw ``[0, 1]``).

    Parameters
    ----------
    files : sequence of path
        Image files.
    config : AdapterConfig
        Input size and normalisation.
    loader : callable
        ``path -> float32 (S, S) array in [0, 1]``.
    normalise : bool
        Apply the adapter normalisation (False returns ``(1, S, S)`` raw pixels).
    """

    def __init__(
        self,
        files: Sequence[str | os.PathLike[str]],
        config: AdapterConfig,
        loader: ImageLoader,
        *,
        normalise: bool = True,
    ) -> None:
        self.files = [str(f) for f in files]
        self.config = config
        self.loader = loader
        self.normalise = normalise

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        path = self.files[index]
        pixels = check_loaded_image(self.loader(path), path, self.config.input_size)
        x = torch.from_numpy(pixels).unsqueeze(0)
        return normalise_images(x, self.config) if self.normalise else x


def check_loaded_image(pixels: np.ndarray, path: str, size: int) -> np.ndarray:
    """Check a loader's output: 2-D ``(size, size)``, floating, finite, within ``[0, 1]``.

    Parameters
    ----------
    pixels : numpy.ndarray
        What the loader returned.
    path : str
        The file it came from (named in errors).
    size : int
        Expected side.

    Returns
    -------
    numpy.ndarray
        C-contiguous float32 array.

    Raises
    ------
    ValueError
        Naming the file, the shape/dtype/range found and the expected one.
    """
    if not isinstance(pixels, np.ndarray) or pixels.shape != (size, size):
        shape = getattr(pixels, "shape", type(pixels).__name__)
        raise ValueError(
            f"{path}: image loader returned shape {shape}, expected ({size}, {size}); the loader "
            "must decode and resize to the model input size"
        )
    if not np.issubdtype(pixels.dtype, np.floating):
        raise ValueError(
            f"{path}: image loader returned dtype {pixels.dtype}, expected float32 in [0, 1]; "
            "scale integer pixels by their maximum value"
        )
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    lo, hi = float(pixels.min()), float(pixels.max())
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"{path}: image loader returned values in [{lo}, {hi}], expected finite values in "
            "[0, 1]; rescale the pixels"
        )
    return pixels


def default_num_workers(device_type: str = "cuda") -> int:
    """DataLoader workers for a device type.

    On a GPU the workers decode while the device computes: the CPUs this process may use, at
    most 4. On the CPU the network's threads already use every core, and decode workers only
    compete with them (2 cores, resnet10t at 160 px, bf16: 381 images/s with 0 workers, 258
    with 2), so images are decoded in the calling process.
    """
    if device_type == "cpu":
        return 0
    return max(0, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))


def default_batch_size(choice: DeviceChoice) -> int:
    """Images per forward pass: 16 on the CPU, else 32.

    On the CPU a batch's activations should stay in the last-level cache. Whole predictions
    path, resnet10t at 160 px, 512 demo DICOMs, 2 cores with 32 MiB L3, BatchNorm folded, quiet
    machine: float32 batch 8 254, 16 262-275, 32 238-246 images/s; bf16 batch 16 376-398, 32
    310-327 images/s.
    """
    return 16 if choice.device.type == "cpu" else 32


def _forward(
    model: nn.Module, x: torch.Tensor, choice: DeviceChoice, n_labels: int, output: Output
) -> np.ndarray:
    x = x.to(choice.device, non_blocking=choice.pin_memory)
    if choice.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(
        choice.device.type,
        dtype=choice.autocast_dtype or torch.float32,
        enabled=choice.autocast_dtype is not None,
    )
    if choice.autocast_dtype is not None and hasattr(model, "forward_head"):
        # timm networks: the backbone in reduced precision, the head in float32, so the logits
        # (the scores every metric ranks) keep float32 resolution instead of bf16's ~3 digits.
        with autocast:
            features = model.forward_features(x)
        logits = model.forward_head(features.float())
    else:
        with autocast:
            logits = model(x)
    if logits.ndim != 2 or logits.shape != (x.shape[0], n_labels):
        raise ValueError(
            f"model returned outputs of shape {tuple(logits.shape)} for a batch of {x.shape[0]}, "
            f"expected ({x.shape[0]}, {n_labels}) (one logit per label in the adapter config); "
            "check that the package's config.labels matches the network head"
        )
    logits = logits.float()
    return (logits if output == "logits" else torch.sigmoid(logits)).cpu().numpy()


def _check_output(output: str) -> None:
    if output not in OUTPUTS:
        raise ValueError(
            f"output={output!r} is not one of {list(OUTPUTS)}: 'probabilities' (sigmoid of the "
            "logits, what the predictions table holds) or 'logits' (for temperature scaling)"
        )


def _check_finite(probs: np.ndarray, names: Sequence[str]) -> None:
    bad = np.flatnonzero(~np.isfinite(probs).all(axis=1))
    if bad.size:
        shown = [names[i] for i in bad[:5]]
        raise ValueError(
            f"the model produced non-finite outputs for {bad.size} image(s), e.g. {shown}; check "
            "these inputs and the weights (a NaN weight poisons every output)"
        )


def predict(
    model: nn.Module,
    adapter_cfg: AdapterConfig,
    files: Sequence[str | os.PathLike[str]],
    *,
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: DevicePreference = "auto",
    precision: Precision = "auto",
    loader: ImageLoader | None = None,
    progress: ProgressCallback | None = None,
    output: Output = "probabilities",
) -> np.ndarray:
    """Probabilities (or logits) of every label for every file, in file order.

    The model is moved to the chosen device and switched to eval mode in place; what runs is
    :func:`clinaudit.models.devices.prepare_model` of it (on the CPU a channels-last copy with
    BatchNorm folded into the convolutions).

    Parameters
    ----------
    model : torch.nn.Module
        Network returning ``(N, n_labels)`` logits.
    adapter_cfg : AdapterConfig
        Input size, normalisation and labels of the model.
    files : sequence of path
        Image files.
    batch_size : int, optional
        Images per forward pass; ``None`` uses :func:`default_batch_size`.
    num_workers : int, optional
        DataLoader worker processes; ``None`` uses :func:`default_num_workers`; 0 decodes in the
        calling process.
    device : {"auto", "cuda", "mps", "cpu"}
        See :func:`clinaudit.models.devices.select_device`.
    precision : {"auto", "fp32", "bf16"}
        See :func:`clinaudit.models.devices.select_device` (float32 on CPU unless ``"bf16"``).
    loader : callable, optional
        ``path -> float32 (S, S) array in [0, 1]``; default :class:`ImageFileLoader`.
    progress : callable, optional
        Called as ``progress(done, total)`` after every batch.
    output : {"probabilities", "logits"}
        ``"logits"`` returns the network's float32 logits (``sigmoid`` of them is what
        ``"probabilities"`` returns, bit for bit). Temperature scaling needs them: a logit
        recovered from a float32 probability that rounded to 1.0 (logit above about 17) has lost
        its rank.

    Returns
    -------
    numpy.ndarray
        ``(len(files), n_labels)`` float32 probabilities (or logits).

    Raises
    ------
    ValueError
        If an image cannot be used (file named), the outputs have the wrong shape or are
        non-finite.

    Examples
    --------
    >>> probs = predict(model, adapter.config, files, num_workers=0)  # doctest: +SKIP
    >>> probs.shape  # doctest: +SKIP
    (512, 14)
    """
    choice = select_device(device, precision)
    _check_output(output)
    batch_size = default_batch_size(choice) if batch_size is None else int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    workers = default_num_workers(choice.device.type) if num_workers is None else int(num_workers)
    if workers < 0:
        raise ValueError(f"num_workers={num_workers} must be >= 0")
    names = [str(f) for f in files]
    n_labels = adapter_cfg.num_labels
    out = np.empty((len(names), n_labels), dtype=np.float32)
    if not names:
        return out
    dataset = ImageDataset(names, adapter_cfg, loader or ImageFileLoader(adapter_cfg.input_size))
    batches = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=choice.pin_memory,
    )
    model = prepare_model(model, choice)
    done = 0
    with torch.inference_mode():
        for x in batches:
            out[done : done + len(x)] = _forward(model, x, choice, n_labels, output)
            done += len(x)
            if progress is not None:
                progress(done, len(names))
    _check_finite(out, names)
    return out


def predict_images(
    model: nn.Module,
    adapter_cfg: AdapterConfig,
    images: np.ndarray,
    *,
    batch_size: int | None = None,
    device: DevicePreference | DeviceChoice = "auto",
    output: Output = "probabilities",
) -> np.ndarray:
    """Probabilities (or logits) for images already decoded to ``(N, S, S)`` float32 in ``[0, 1]``.

    Same computation as :func:`predict` without the file decoding (used for validation during
    training and for held-out evaluation of arrays from ``training.load_images``).

    Parameters
    ----------
    model : torch.nn.Module
        Network returning logits.
    adapter_cfg : AdapterConfig
        Normalisation and labels.
    images : numpy.ndarray
        ``(N, S, S)`` float32 in ``[0, 1]`` at the model input size.
    batch_size : int, optional
        Images per forward pass; ``None`` uses :func:`default_batch_size`.
    device : str or DeviceChoice
        Device preference or an already made choice.
    output : {"probabilities", "logits"}
        What to return (see :func:`predict`).

    Returns
    -------
    numpy.ndarray
        ``(N, n_labels)`` float32 probabilities (or logits).
    """
    size = adapter_cfg.input_size
    if images.ndim != 3 or images.shape[1:] != (size, size):
        raise ValueError(
            f"images have shape {images.shape}, expected (N, {size}, {size}) at the model input "
            "size; decode with training.load_images(files, size, ...)"
        )
    choice = device if isinstance(device, DeviceChoice) else select_device(device)
    _check_output(output)
    batch_size = default_batch_size(choice) if batch_size is None else int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    model = prepare_model(model, choice)
    n_labels = adapter_cfg.num_labels
    out = np.empty((len(images), n_labels), dtype=np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).unsqueeze(1)
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = normalise_images(tensor[start : start + batch_size], adapter_cfg)
            out[start : start + len(x)] = _forward(model, x, choice, n_labels, output)
    _check_finite(out, [f"image #{i}" for i in range(len(images))])
    return out


def predictions_frame(
    table: pd.DataFrame,
    probs: np.ndarray,
    labels: Sequence[str],
    model_sha256: str,
) -> pd.DataFrame:
    """Predictions table: identifiers from ``table``, probabilities, model hash; schema-checked.

    Parameters
    ----------
    table : pandas.DataFrame
        Rows aligned with ``probs``, with ``image_id``, ``site`` and ``patient_pseudonym``.
    probs : numpy.ndarray
        ``(len(table), len(labels))`` probabilities.
    labels : sequence of str
        Column names of ``probs`` (the model's labels, in output order).
    model_sha256 : str
        ``package_sha256`` of the model (or the sha256 of a vendor scores file).

    Returns
    -------
    pandas.DataFrame
        Validated against :func:`predictions_schema` (``lazy=True``: all failures at once).

    Raises
    ------
    ValueError
        If shapes disagree or identifier columns are missing.
    pandera.errors.SchemaErrors
        If the frame breaks the schema (duplicate ids, probabilities outside [0, 1], NaN...).
    """
    missing = [c for c in ID_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"predictions_frame: table lacks columns {missing} (has {list(table.columns)}); pass "
            "the validated images table of the site"
        )
    probs = np.asarray(probs)
    if probs.shape != (len(table), len(labels)):
        raise ValueError(
            f"probs has shape {probs.shape}, expected ({len(table)}, {len(labels)}): one row per "
            "table row and one column per label"
        )
    frame = table.loc[:, list(ID_COLUMNS)].reset_index(drop=True).copy()
    for j, label in enumerate(labels):
        frame[label] = probs[:, j].astype(np.float64)
    frame["model_sha256"] = model_sha256
    return predictions_schema(labels).validate(frame, lazy=True)
