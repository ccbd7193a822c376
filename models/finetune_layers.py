"""Which layers of a network a focused re-training updates, and freezing the others."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal, get_args

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

Trainable = Literal["last_block", "head"]
TRAINABLE_OPTIONS: tuple[str, ...] = get_args(Trainable)


def trainable_parameter_names(model: nn.Module, trainable: Trainable) -> tuple[str, ...]:
    """Names of the parameters left trainable: the head, plus the last stage for "last_block".

    The head is ``model.get_classifier()`` (timm's API; the ``tiny_cnn`` adapter provides it).
    The last stage is the last parameter group of ``model.group_matcher(coarse=True)`` holding a
    ``blocks`` parameter, together with everything after it (final norm layers).

    Raises
    ------
    ValueError
        For an unknown option, or a network without ``get_classifier``/``group_matcher``.
    """
    if trainable not in TRAINABLE_OPTIONS:
        raise ValueError(f"trainable={trainable!r} is not one of {list(TRAINABLE_OPTIONS)}")
    if not hasattr(model, "get_classifier"):
        raise ValueError(
            f"{type(model).__name__} has no get_classifier(), so its head is unknown; use a timm "
            "architecture (adapter 'timm_cxr') or add get_classifier() to the network"
        )
    head_ids = {id(p) for p in model.get_classifier().parameters()}
    named = list(model.named_parameters())
    head = [n for n, p in named if id(p) in head_ids]
    if trainable == "head":
        return tuple(head)
    if not hasattr(model, "group_matcher"):
        raise ValueError(
            f"{type(model).__name__} has no group_matcher(), so its last stage is unknown; use "
            "trainable='head'"
        )
    from timm.models import group_parameters

    matcher = model.group_matcher(coarse=True)
    spec = matcher.get("blocks")
    patterns = [re.compile(s) for s in ([spec] if isinstance(spec, str) else [s[0] for s in spec])]
    groups = group_parameters(model, matcher)
    stages = [g for g in sorted(groups) if any(p.match(n) for n in groups[g] for p in patterns)]
    if not stages:
        raise ValueError(f"no 'blocks' parameter group in {type(model).__name__}; use 'head'")
    last = {n for g in groups if g >= stages[-1] for n in groups[g]} | set(head)
    return tuple(n for n, _ in named if n in last)


def freeze_except(model: nn.Module, names: Sequence[str]) -> None:
    """Set ``requires_grad`` on the named parameters only."""
    keep = set(names)
    for name, param in model.named_parameters():
        param.requires_grad_(name in keep)


def train_mode_frozen_eval(model: nn.Module, *, update_bn_stats: bool = False) -> None:
    """Train mode, except modules without a trainable parameter and (by default) every BatchNorm.

    BatchNorm layers in eval mode normalise with the parent's running statistics and never update
    them: re-estimating them from one site's batches would shift the features of every other
    site. With ``update_bn_stats`` the trainable stage's BatchNorm layers re-estimate them.
    """
    model.train()
    for module in model.modules():
        params = list(module.parameters(recurse=True))
        frozen = bool(params) and not any(p.requires_grad for p in params)
        if frozen or (isinstance(module, _BatchNorm) and not update_bn_stats):
            module.eval()
