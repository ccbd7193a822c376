"""Training of the image + note arms under one budget, and the late-fusion fit.

Budget rule
-----------
Every trained arm (``image_only``, ``text_only``, ``early_fusion``, ``vilt``) gets the same
:class:`TrainingBudget`: ``epochs`` passes over the same training pairs in the same seeded batch
order, ``batch_size`` pairs per AdamW step (a last batch of one pair is skipped), hence the same
number of optimiser steps and of pairs seen, the same OneCycle schedule and the same selection
rule (the epoch with the lowest validation cross-entropy is kept). ``late_fusion`` takes no
gradient step of its own: it combines the two single-modality arms, each trained under that
budget, with ``2 + 2K`` weights fitted on the validation split by L-BFGS
(:func:`fit_late_fusion`), so its compute is the sum of theirs plus a fit of under a second.

Modality dropout (fusion arms only; a single-modality arm without its modality could only learn
the class prior): each training pair loses its note with probability ``note_dropout`` (the note
reads ``[CLS] [SEP]`` and is flagged missing, as a truly missing note) and, if it still has a
note, its image with probability ``image_dropout`` (patches masked); a pair never loses both.

Determinism: weights are initialised under ``torch.random.fork_rng`` with ``seed``; batch order,
modality dropout and flips draw from ``torch.Generator`` objects seeded from ``seed`` (batch
order from its own generator, so every arm sees the same batches); dropout layers draw from the
global generator, seeded with ``seed`` inside ``fork_rng`` (the caller's RNG state is restored).
On the CPU ``torch.use_deterministic_algorithms`` is on during training: with the same thread
count, two runs give bitwise identical weights. On CUDA (bf16 autocast through
:func:`~clinaudit.models.devices.select_device`) results agree to training noise.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clinaudit.models.devices import DeviceChoice, select_device
from clinaudit.models.multimodal_arms import LateFusionArm, build_arm, count_parameters
from clinaudit.models.multimodal_config import (
    FUSION_ARMS,
    TRAINED_ARMS,
    MultimodalConfig,
    UnknownArmError,
)
from clinaudit.models.multimodal_data import PairedData, batch_inputs
from clinaudit.models.multimodal_eval import component_log_probs, predict_logits
from clinaudit.models.multimodal_train_spec import (
    ArmEpoch,
    ArmResult,
    MultimodalTrainConfig,
    TrainingBudget,
    training_budget,
    training_context,
)

DEFAULT_ARMS: tuple[str, ...] = ("image_only", "text_only", "late_fusion", "early_fusion")
__all__ = [
    "DEFAULT_ARMS",
    "ArmEpoch",
    "ArmResult",
    "MultimodalTrainConfig",
    "TrainingBudget",
    "fit_late_fusion",
    "train_arm",
    "train_arms",
    "training_budget",
]


def _generators(seed: int) -> tuple[torch.Generator, torch.Generator]:
    order, augment = np.random.SeedSequence(seed).generate_state(2)
    return torch.Generator().manual_seed(int(order)), torch.Generator().manual_seed(int(augment))


def _check(name: str, data: PairedData, config: MultimodalConfig, minimum: int) -> None:
    if data.labels is None or len(data) < minimum:
        raise ValueError(
            f"{name} holds {len(data)} pairs{' without labels' if data.labels is None else ''}; "
            f"training needs >= {minimum} labelled pairs (prepare_pairs(..., labels=...))"
        )
    if data.images.shape[-1] != config.image_size:
        raise ValueError(
            f"{name} images are {data.images.shape[-1]} px but the arms take "
            f"{config.image_size} px; prepare the pairs with the same MultimodalConfig"
        )


def _epoch(
    model: nn.Module,
    arm: str,
    train: PairedData,
    mc: MultimodalConfig,
    config: MultimodalTrainConfig,
    choice: DeviceChoice,
    opt: tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler],
    gens: tuple[torch.Generator, torch.Generator],
) -> tuple[float, float]:
    """One pass of AdamW steps; returns (mean loss, seconds)."""
    optimizer, scheduler = opt
    order_gen, aug_gen = gens
    started, total, seen = time.perf_counter(), 0.0, 0
    assert train.labels is not None
    model.train()
    for idx in torch.randperm(len(train), generator=order_gen).split(config.batch_size):
        if len(idx) < 2:
            continue
        n = len(idx)
        drop_note = drop_image = None
        if arm in FUSION_ARMS:
            drop_note = torch.rand(n, generator=aug_gen) < config.note_dropout
            keeps_note = train.note_present[idx] & ~drop_note
            drop_image = (torch.rand(n, generator=aug_gen) < config.image_dropout) & keeps_note
        flip = torch.rand(n, 2, generator=aug_gen) < 0.5 if config.flip else None
        inputs = batch_inputs(
            train, idx, mc, choice.device, drop_note=drop_note, drop_image=drop_image, flip=flip
        )
        target = train.labels[idx].to(choice.device)
        with torch.autocast(
            choice.device.type,
            dtype=choice.autocast_dtype or torch.float32,
            enabled=choice.autocast_dtype is not None,
        ):
            logits = model(**inputs)
        loss = F.cross_entropy(logits.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += float(loss.detach()) * n
        seen += n
    return total / max(seen, 1), time.perf_counter() - started


def _val_metrics(probs: np.ndarray, labels: torch.Tensor) -> tuple[float, float]:
    y = labels.numpy()
    p = np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0)
    return float(-np.log(p).mean()), float((probs.argmax(1) == y).mean())


def train_arm(
    arm: str,
    train: PairedData,
    val: PairedData,
    model_config: MultimodalConfig,
    config: MultimodalTrainConfig | None = None,
    *,
    progress: Callable[[str, ArmEpoch], None] | None = None,
) -> ArmResult:
    """Train one arm from random weights under the run's budget; keep its best validation epoch.

    Parameters
    ----------
    arm : {"image_only", "text_only", "early_fusion", "vilt"}
        A trained arm (late fusion: :func:`fit_late_fusion`).
    train, val : PairedData
        Labelled pairs from :func:`~clinaudit.models.multimodal_data.prepare_pairs`.
    model_config : MultimodalConfig
        Arm sizes, labels, tokenizer ids.
    config : MultimodalTrainConfig, optional
        Budget and settings (defaults if omitted).
    progress : callable, optional
        Called with ``(arm, ArmEpoch)`` after every epoch.

    Returns
    -------
    ArmResult

    Raises
    ------
    UnknownArmError
        If ``arm`` is not a trained arm.
    ValueError
        On unlabelled or too small data, or images of another size than the config's.

    Examples
    --------
    >>> result = train_arm("early_fusion", train, val, cfg)  # doctest: +SKIP
    >>> result.budget.steps, result.best_epoch  # doctest: +SKIP
    """
    config = config or MultimodalTrainConfig()
    if arm not in TRAINED_ARMS:
        raise UnknownArmError(
            f"arm {arm!r} is not trained by gradient steps; trained arms are {list(TRAINED_ARMS)} "
            "(late_fusion: fit_late_fusion(image_result, text_result, val, ...))"
        )
    _check("train", train, model_config, 2)
    _check("val", val, model_config, 1)
    assert val.labels is not None
    started = time.perf_counter()
    choice = select_device(config.device, config.precision)
    budget = training_budget(len(train), config)
    model = build_arm(arm, model_config, seed=config.seed).to(choice.device)
    history: list[ArmEpoch] = []
    best: tuple[float, int, dict[str, torch.Tensor], np.ndarray] | None = None
    train_seconds = 0.0
    with training_context(config, choice):
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=max(budget.steps, 1), pct_start=config.warmup
        )
        gens = _generators(config.seed)
        for epoch in range(1, config.epochs + 1):
            lr = float(optimizer.param_groups[0]["lr"])
            loss, seconds = _epoch(
                model, arm, train, model_config, config, choice, (optimizer, scheduler), gens
            )
            train_seconds += seconds
            logits = predict_logits(
                model, val, model_config, batch_size=config.eval_batch_size, device=choice
            )
            probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
            val_loss, val_acc = _val_metrics(probs, val.labels)
            record = ArmEpoch(epoch, loss, val_loss, val_acc, lr, seconds)
            history.append(record)
            if progress is not None:
                progress(arm, record)
            if best is None or val_loss < best[0]:
                state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                best = (val_loss, epoch, state, probs)
    assert best is not None
    model = model.to("cpu")
    model.load_state_dict(best[2])
    return ArmResult(
        arm=arm,
        model=model.eval(),
        history=tuple(history),
        best_epoch=best[1],
        budget=budget,
        train_seconds=train_seconds,
        total_seconds=time.perf_counter() - started,
        val_probabilities=best[3],
        n_parameters=count_parameters(model),
        device=str(choice.device),
    )


def fit_late_fusion(
    image_arm: nn.Module,
    text_arm: nn.Module,
    val: PairedData,
    model_config: MultimodalConfig,
    config: MultimodalTrainConfig | None = None,
) -> ArmResult:
    """Combine a trained image arm and text arm; fit the ``2 + 2K`` weights on ``val``.

    The components are copied and frozen; the weights minimise the validation cross-entropy
    (L-BFGS, full batch, deterministic) of
    ``w_img * log p_img + note_present * (w_txt * log p_txt + b_txt) + b``.

    Parameters
    ----------
    image_arm, text_arm : torch.nn.Module
        Trained ``ImageOnlyArm`` and ``TextOnlyArm`` (e.g. ``ArmResult.model``).
    val : PairedData
        Labelled validation pairs, with and without notes.
    model_config : MultimodalConfig
        The components' config.
    config : MultimodalTrainConfig, optional
        ``eval_batch_size``, ``device``, ``precision`` and ``num_threads``.

    Returns
    -------
    ArmResult
        ``budget`` is zero (no gradient step of its own); ``components`` names the two arms.
    """
    config = config or MultimodalTrainConfig()
    _check("val", val, model_config, 2)
    assert val.labels is not None
    started = time.perf_counter()
    choice = select_device(config.device, config.precision)
    model = build_arm("late_fusion", model_config, seed=config.seed)
    assert isinstance(model, LateFusionArm)
    model.image_arm.load_state_dict(copy.deepcopy(image_arm.state_dict()))
    model.text_arm.load_state_dict(copy.deepcopy(text_arm.state_dict()))
    for p in [*model.image_arm.parameters(), *model.text_arm.parameters()]:
        p.requires_grad_(False)
    with training_context(config, choice):
        image_lp, text_lp = component_log_probs(
            model, val, model_config, batch_size=config.eval_batch_size, device=choice
        )
        fit_started = time.perf_counter()
        present, target = val.note_present, val.labels
        params = [model.weights, model.bias, model.note_bias]
        optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(model.combine(image_lp, text_lp, present), target)
            loss.backward()
            return loss

        optimizer.step(closure)
        with torch.no_grad():
            probs = torch.softmax(model.combine(image_lp, text_lp, present), dim=1).numpy()
        fit_seconds = time.perf_counter() - fit_started
    return ArmResult(
        arm="late_fusion",
        model=model.eval(),
        history=(),
        best_epoch=0,
        budget=TrainingBudget(0, 0, 0, 0),
        train_seconds=fit_seconds,
        total_seconds=time.perf_counter() - started,
        val_probabilities=probs,
        n_parameters=count_parameters(model),
        components=("image_only", "text_only"),
        device="cpu",
    )


def train_arms(
    train: PairedData,
    val: PairedData,
    model_config: MultimodalConfig,
    config: MultimodalTrainConfig | None = None,
    *,
    arms: Sequence[str] = DEFAULT_ARMS,
    progress: Callable[[str, ArmEpoch], None] | None = None,
) -> dict[str, ArmResult]:
    """Train every requested arm under the same budget (late fusion from the two single arms).

    Parameters
    ----------
    train, val : PairedData
        Labelled pairs.
    model_config : MultimodalConfig
        Sizes, labels, tokenizer ids.
    config : MultimodalTrainConfig, optional
        Budget and settings.
    arms : sequence of str
        Arms to produce; ``late_fusion`` adds ``image_only`` and ``text_only`` if missing.
    progress : callable, optional
        Per-epoch callback ``(arm, ArmEpoch)``.

    Returns
    -------
    dict of str to ArmResult
        In training order (single arms first).
    """
    config = config or MultimodalTrainConfig()
    unknown = [a for a in arms if a not in (*TRAINED_ARMS, "late_fusion")]
    if unknown:
        raise UnknownArmError(f"unknown arms {unknown}; known are {[*TRAINED_ARMS, 'late_fusion']}")
    wanted = list(dict.fromkeys(arms))
    if "late_fusion" in wanted:
        wanted = [*dict.fromkeys(["image_only", "text_only", *wanted])]
    results: dict[str, ArmResult] = {}
    for arm in [a for a in wanted if a != "late_fusion"]:
        results[arm] = train_arm(arm, train, val, model_config, config, progress=progress)
    if "late_fusion" in wanted:
        results["late_fusion"] = fit_late_fusion(
            results["image_only"].model, results["text_only"].model, val, model_config, config
        )
    return results
