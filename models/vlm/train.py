"""Adult pretraining (full parameters) and the language-model-only LoRA tune of a small VLM.

:func:`pretrain_base` trains every weight on simulated ADULT question-answer pairs and captions
(:mod:`.adult_data`); :func:`lora_finetune` adds peft LoRA adapters to the language model's
attention projections only and trains those. The LoRA targets are the adapter's regex
(:attr:`~clinaudit.models.vlm.adapters.VlmAdapter.lm_lora_pattern`): a plain
``target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]`` would also match the SigLIP / CLIP
vision tower's projections. :func:`check_lora_placement` raises if any LoRA module lands in the
vision tower anyway (or none in the language model).

The loss is the language-model loss on the answer tokens (+ eos) only. Steps are batches of
IMAGES: every question of an image in the batch is a sequence, and each image is encoded once
per step (:meth:`~clinaudit.models.vlm.adapters.VlmAdapter.batch_loss`), which is where most of
the speed comes from. Training is deterministic for a given seed on one machine: a
``torch.Generator`` shuffles, the global RNG (dropout) is seeded inside ``fork_rng`` and
restored after, and ``torch.use_deterministic_algorithms`` is on during training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import PreTrainedTokenizerBase

from clinaudit.models.vlm.adapters import VLM_REGISTRY, VlmAdapter, unwrap_model
from clinaudit.models.vlm.answer import score_questions
from clinaudit.models.vlm.config import CAPTION_PROMPT, vqa_prompt

Log = Callable[[str], None]
__all__ = [
    "LoraPlacementError",
    "TrainResult",
    "TrainSettings",
    "check_lora_placement",
    "lora_finetune",
    "lora_modules_by_tower",
    "merge_lora",
    "pretrain_base",
    "yes_no_accuracy",
]


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings (AdamW with warmup then a cosine or linear decay).

    Attributes
    ----------
    epochs : int
        Passes over the images.
    batch_images : int
        Images per step (all of their questions, and captions, are in the step).
    lr, weight_decay : float
        AdamW.
    warmup_frac : float
        Fraction of steps with a linear warmup.
    schedule : {"cosine", "linear"}
        Decay to 0 after the warmup.
    max_grad_norm : float
        Gradient clipping.
    device : str
        Where to train (``"cpu"``, ``"cuda"``).
    """

    epochs: int = 4
    batch_images: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_frac: float = 0.05
    schedule: Literal["cosine", "linear"] = "cosine"
    max_grad_norm: float = 1.0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_images < 1 or not self.lr > 0:
            raise ValueError(f"epochs, batch_images >= 1 and lr > 0 are needed, got {self}")
        if self.schedule not in ("cosine", "linear") or not 0 <= self.warmup_frac < 1:
            raise ValueError(f"schedule in (cosine, linear), 0 <= warmup_frac < 1, got {self}")


@dataclass(frozen=True)
class TrainResult:
    """What a training run did (JSON-ready through :meth:`summary`)."""

    stage: str
    settings: TrainSettings
    seed: int
    epoch_losses: tuple[float, ...]
    n_trainable: int
    n_parameters: int
    n_images: int
    n_sequences: int
    steps: int
    seconds: float
    device: str
    lora: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        """Plain dict for the model card."""
        doc = dataclasses.asdict(self)
        doc["settings"] = dataclasses.asdict(self.settings)
        doc["epoch_losses"] = [round(x, 6) for x in self.epoch_losses]
        doc["seconds"] = round(self.seconds, 3)
        return doc


class LoraPlacementError(ValueError):
    """LoRA modules in the vision tower, or none in the language model."""

    def __init__(self, counts: dict[str, int], examples: Sequence[str]) -> None:
        self.counts = dict(counts)
        self.examples = list(examples)
        super().__init__(
            f"LoRA modules by tower: {counts} (e.g. vision: {list(examples)[:3]}); expected "
            "vision=0 and language>0; target the language model only with "
            "LoraConfig(target_modules=adapter.lm_lora_pattern), not a list of bare names"
        )


def _adapter_class(model: nn.Module) -> type[VlmAdapter]:
    hf = unwrap_model(model)
    for cls in VLM_REGISTRY.values():
        if isinstance(hf, cls.model_class):
            return cls
    raise TypeError(
        f"{type(hf).__name__} is not one of "
        f"{[c.model_class.__name__ for c in VLM_REGISTRY.values()]}"
    )


def _lora_names(model: nn.Module) -> list[str]:
    return [n for n, m in unwrap_model(model).named_modules() if isinstance(m, LoraLayer)]


def lora_modules_by_tower(model: nn.Module) -> dict[str, int]:
    """Count LoRA-wrapped modules in the vision tower, the language model and elsewhere.

    Returns
    -------
    dict
        ``{"vision": int, "language": int, "other": int}``.
    """
    cls = _adapter_class(model)
    counts = {"vision": 0, "language": 0, "other": 0}
    for name in _lora_names(model):
        if name.startswith(cls.vision_tower_path + "."):
            counts["vision"] += 1
        elif name.startswith(cls.language_model_path + "."):
            counts["language"] += 1
        else:
            counts["other"] += 1
    return counts


def check_lora_placement(model: nn.Module) -> dict[str, int]:
    """Counts of :func:`lora_modules_by_tower`; raises unless vision == 0 < language.

    Raises
    ------
    LoraPlacementError
        If a LoRA module is in the vision tower or none is in the language model.
    """
    counts = lora_modules_by_tower(model)
    if counts["vision"] or not counts["language"]:
        path = _adapter_class(model).vision_tower_path + "."
        raise LoraPlacementError(counts, [n for n in _lora_names(model) if n.startswith(path)])
    return counts


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the LoRA deltas into the weights; returns the plain Hugging Face model."""
    if not isinstance(model, PeftModel):
        raise TypeError(f"merge_lora needs a peft model, got {type(model).__name__}")
    return model.merge_and_unload()


def _sequences(
    questions: Sequence[Sequence[str]], answers: Sequence[Sequence[str]],
    captions: Sequence[str] | None,
) -> list[list[tuple[str, str]]]:  # fmt: skip
    if len(questions) != len(answers) or (captions is not None and len(captions) != len(questions)):
        raise ValueError("questions, answers (and captions) need one entry per image")
    out = []
    for i, (qs, ans) in enumerate(zip(questions, answers, strict=True)):
        if len(qs) != len(ans):
            raise ValueError(f"image {i}: {len(qs)} questions but {len(ans)} answers")
        seqs = [(vqa_prompt(q), a) for q, a in zip(qs, ans, strict=True)]
        if captions is not None:
            seqs.append((CAPTION_PROMPT, captions[i]))
        out.append(seqs)
    return out


def _lr_lambda(settings: TrainSettings, total: int) -> Callable[[int], float]:
    warm = max(1, int(settings.warmup_frac * total))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        frac = (step - warm) / max(1, total - warm)
        return 0.5 * (1 + math.cos(math.pi * frac)) if settings.schedule == "cosine" else 1 - frac

    return f


@contextlib.contextmanager
def _deterministic(seed: int) -> Iterator[None]:
    before = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(before)


def _train(
    stage: str, adapter: VlmAdapter, model: nn.Module, images: np.ndarray,
    seqs: list[list[tuple[str, str]]], settings: TrainSettings, seed: int, log: Log | None,
    lora: dict[str, Any] | None = None,
) -> TrainResult:  # fmt: skip
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3 or len(images) != len(seqs):
        raise ValueError(f"images must be (N, H, W) with N={len(seqs)}, got {images.shape}")
    device = torch.device(settings.device)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    n_steps = math.ceil(len(images) / settings.batch_images)
    t0 = time.perf_counter()
    losses = []
    with _deterministic(seed):
        opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, _lr_lambda(settings, n_steps * settings.epochs)
        )
        gen = torch.Generator().manual_seed(seed)
        for epoch in range(settings.epochs):
            order = torch.randperm(len(images), generator=gen).tolist()
            total, count = 0.0, 0
            for start in range(0, len(order), settings.batch_images):
                ids = order[start : start + settings.batch_images]
                rows = [(j, p, a) for j, i in enumerate(ids) for p, a in seqs[i]]
                batch = adapter.training_batch(
                    images[ids], [r[1] for r in rows], [r[2] for r in rows],
                    image_index=[r[0] for r in rows],
                )  # fmt: skip
                loss = adapter.batch_loss(model, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(rows)
                count += len(rows)
            losses.append(total / count)
            if log is not None:
                log(f"{stage} epoch {epoch + 1}/{settings.epochs}: loss {losses[-1]:.4f} "
                    f"({time.perf_counter() - t0:.1f}s)")  # fmt: skip
    model.eval()
    return TrainResult(
        stage=stage,
        settings=settings,
        seed=seed,
        epoch_losses=tuple(losses),
        n_trainable=sum(p.numel() for p in params),
        n_parameters=sum(p.numel() for p in model.parameters()),
        n_images=len(images),
        n_sequences=sum(len(s) for s in seqs),
        steps=n_steps * settings.epochs,
        seconds=time.perf_counter() - t0,
        device=str(device),
        lora=lora,
    )


def _check_tokenizer(adapter: VlmAdapter, tokenizer: PreTrainedTokenizerBase) -> None:
    if tokenizer.get_vocab() != adapter.tokenizer.get_vocab():
        raise ValueError(
            "tokenizer differs from the adapter's; pass the tokenizer the model was built with"
        )


def pretrain_base(
    adapter: VlmAdapter,
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    images: np.ndarray,
    questions: Sequence[Sequence[str]],
    answers: Sequence[Sequence[str]],
    *,
    captions: Sequence[str] | None = None,
    settings: TrainSettings = TrainSettings(),
    seed: int = 0,
    log: Log | None = None,
) -> TrainResult:
    """Full-parameter training on yes/no pairs (and captions), in place.

    Parameters
    ----------
    adapter, model, tokenizer
        From :func:`~clinaudit.models.vlm.adapters.create_vlm` (same tokenizer).
    images : array (N, H, W)
        Grey films in [0, 1] (:func:`~clinaudit.models.vlm.adult_data.adult_pretraining_pairs`).
    questions, answers : sequence of sequence of str
        Per image, its questions and ``"yes"`` / ``"no"`` answers.
    captions : sequence of str, optional
        Per image; adds a caption sequence per image (second task).
    settings : TrainSettings
        Optimisation.
    seed : int
        Shuffling and dropout.
    log : callable, optional
        Receives one line per epoch.

    Returns
    -------
    TrainResult
    """
    _check_tokenizer(adapter, tokenizer)
    for p in model.parameters():
        p.requires_grad_(True)
    seqs = _sequences(questions, answers, captions)
    return _train("pretrain", adapter, model, images, seqs, settings, seed, log)


def lora_finetune(
    adapter: VlmAdapter,
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    images: np.ndarray,
    questions: Sequence[Sequence[str]],
    answers: Sequence[Sequence[str]],
    *,
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.05,
    mlp: bool = False,
    settings: TrainSettings = TrainSettings(),
    seed: int = 0,
    log: Log | None = None,
) -> tuple[PeftModel, TrainResult]:
    """LoRA on the language model's q/k/v/o (and with ``mlp`` its MLP) projections only.

    The base weights are frozen (peft); :func:`check_lora_placement` runs before training.

    Returns
    -------
    (peft.PeftModel, TrainResult)
        The wrapped model (merge with :func:`merge_lora`) and the run.
    """
    _check_tokenizer(adapter, tokenizer)
    pattern = adapter.lora_target_pattern(mlp=mlp)
    cfg = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern, bias="none"
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, cfg)
    counts = check_lora_placement(peft_model)
    info = {"rank": rank, "alpha": alpha, "dropout": dropout, "target_modules": pattern,
            "modules_by_tower": counts}  # fmt: skip
    seqs = _sequences(questions, answers, None)
    result = _train("lora", adapter, peft_model, images, seqs, settings, seed, log, lora=info)
    return peft_model, result


def yes_no_accuracy(
    adapter: VlmAdapter, model: nn.Module, images: np.ndarray,
    questions: Sequence[Sequence[str]], answers: Sequence[Sequence[str]], *, batch_size: int = 128,
) -> float:  # fmt: skip
    """Share of yes/no questions where ``sign(z_yes - z_no)`` matches the answer."""
    keyed = {str(i): img for i, img in enumerate(np.asarray(images, dtype=np.float32))}
    items = [(str(i), q) for i, qs in enumerate(questions) for q in qs]
    truth = np.array([a == "yes" for ans in answers for a in ans])
    z = score_questions(adapter, model, keyed, items, batch_size=batch_size)
    return float(np.mean((z > 0) == truth))
