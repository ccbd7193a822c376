"""Settings, budget and results of the image + note training.

The budget rule and the determinism guarantees are described in
:mod:`clinaudit.models.multimodal_train`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from clinaudit.models.devices import DeviceChoice, DevicePreference, Precision

__all__ = [
    "ArmEpoch",
    "ArmResult",
    "MultimodalTrainConfig",
    "TrainingBudget",
    "training_budget",
    "training_context",
]


@dataclass(frozen=True)
class MultimodalTrainConfig:
    """Training settings shared by every arm (one home for their defaults).

    The defaults are the demo-scale ones. Measured by ``bench/bench_multimodal_train.py`` (2,500
    simulated pairs, 1,750 for training, 64 px, 12 epochs) on a 2-core CPU shared with other work
    (others using about 60 % of it): the four default arms trained in 99 s with one thread
    (image-only 33 s, text-only 15 s, early fusion 44 s, late-fusion fit 0.1 s) but in 528 s with
    two, whose threads wait for each other whenever one is descheduled. Pass ``num_threads=1``
    on a shared machine.

    Parameters
    ----------
    epochs, batch_size : int
        The budget: passes over the training pairs and pairs per AdamW step.
    lr, weight_decay, warmup : float
        AdamW peak learning rate, weight decay and OneCycle warm-up share of the steps.
    note_dropout, image_dropout : float
        Modality dropout probabilities (fusion arms only; see the module docstring).
    flip : bool
        Random horizontal/vertical flips of the images (lesion photos have no orientation).
    seed : int
        Seeds weights, batch order, modality dropout, flips and dropout layers.
    num_threads : int, optional
        ``torch.set_num_threads`` during training (restored afterwards).
    device, precision
        For :func:`~clinaudit.models.devices.select_device` (bf16 autocast on CUDA by default).
    eval_batch_size : int
        Pairs per forward pass in validation and prediction.
    """

    epochs: int = 12
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: float = 0.15
    note_dropout: float = 0.25
    image_dropout: float = 0.1
    flip: bool = True
    seed: int = 0
    num_threads: int | None = None
    device: DevicePreference = "auto"
    precision: Precision = "auto"
    eval_batch_size: int = 256

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2 or self.eval_batch_size < 1:
            raise ValueError(
                f"epochs={self.epochs} must be >= 1, batch_size={self.batch_size} >= 2 and "
                f"eval_batch_size={self.eval_batch_size} >= 1"
            )
        if not (self.lr > 0 and self.weight_decay >= 0 and 0 < self.warmup < 1):
            raise ValueError(
                f"lr={self.lr} must be > 0, weight_decay={self.weight_decay} >= 0 and "
                f"warmup={self.warmup} in (0, 1)"
            )
        for name in ("note_dropout", "image_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must lie in [0, 1)")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads={self.num_threads} must be >= 1 or None")


@dataclass(frozen=True)
class TrainingBudget:
    """What one trained arm was given (identical for every trained arm of a run)."""

    epochs: int
    batch_size: int
    steps: int
    samples: int


@dataclass(frozen=True)
class ArmEpoch:
    """Metrics after one epoch."""

    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    lr: float
    seconds: float


@dataclass(frozen=True)
class ArmResult:
    """A trained (or fitted) arm: network on the CPU in eval mode, history and timings.

    Attributes
    ----------
    arm : str
        Arm name.
    model : torch.nn.Module
        The kept network (best validation epoch), CPU, eval mode.
    history : tuple of ArmEpoch
        Per-epoch metrics (late fusion: empty).
    best_epoch : int
        Epoch kept (0 for late fusion).
    budget : TrainingBudget
        Gradient steps of this arm itself (late fusion: zero; see ``components``).
    train_seconds : float
        Seconds in optimiser steps (late fusion: the fit).
    total_seconds : float
        Seconds in the whole call, validation and checkpoint copies included.
    val_probabilities : numpy.ndarray
        ``(n_val, K)`` probabilities of the kept network.
    n_parameters : int
        Parameters of the network (late fusion: its components' plus its own).
    components : tuple of str
        Arms combined by late fusion; empty otherwise.
    device : str
        Where it was trained.
    """

    arm: str
    model: nn.Module
    history: tuple[ArmEpoch, ...]
    best_epoch: int
    budget: TrainingBudget
    train_seconds: float
    total_seconds: float
    val_probabilities: np.ndarray
    n_parameters: int
    components: tuple[str, ...] = ()
    device: str = "cpu"

    @property
    def pairs_per_second(self) -> float:
        """Training pairs per second of optimiser steps (NaN for late fusion)."""
        if self.budget.samples == 0 or self.train_seconds <= 0:
            return math.nan
        return self.budget.samples / self.train_seconds


def training_budget(n_train: int, config: MultimodalTrainConfig) -> TrainingBudget:
    """Steps and pairs of one trained arm: the same for every trained arm of a run.

    Parameters
    ----------
    n_train : int
        Training pairs.
    config : MultimodalTrainConfig
        Epochs and batch size.

    Returns
    -------
    TrainingBudget

    Examples
    --------
    >>> training_budget(130, MultimodalTrainConfig(epochs=2, batch_size=64))
    TrainingBudget(epochs=2, batch_size=64, steps=6, samples=260)
    """
    sizes = [min(config.batch_size, n_train - s) for s in range(0, n_train, config.batch_size)]
    sizes = [s for s in sizes if s >= 2]
    return TrainingBudget(
        config.epochs, config.batch_size, len(sizes) * config.epochs, sum(sizes) * config.epochs
    )


@contextlib.contextmanager
def training_context(config: MultimodalTrainConfig, choice: DeviceChoice) -> Iterator[None]:
    """Threads, deterministic algorithms (CPU) and a forked, seeded global RNG for dropout."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    cuda = [choice.device] if choice.device.type == "cuda" else []
    try:
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)
        if choice.device.type == "cpu":
            torch.use_deterministic_algorithms(True)
        with torch.random.fork_rng(devices=cuda, device_type=choice.device.type):
            torch.manual_seed(config.seed)
            yield
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)
