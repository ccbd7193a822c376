"""Saliency maps of a vision-language model's yes/no answer, and the model-randomisation copy.

* :func:`gradcam_map`: Grad-CAM (Selvaraju et al. 2017) on the patch tokens output by the vision
  tower's LAST encoder layer, for the target ``z = z_yes - z_no`` of one question. Channel
  weights are the token-averaged gradients; the map is ``ReLU(sum_c w_c * A_c)`` per patch,
  reshaped to the patch grid and divided by its maximum. The pixels are marked as requiring
  grad, so the activations are in the graph also for frozen (LoRA) models; the activation is read
  by a forward hook, not replaced (LLaVA reads its features from recorded hidden states).
  If the ReLU map is all zero although the gradient is not (every patch argues for "no"),
  the map stays all zero (empty: scored as a miss, never replaced by another quantity); if the
  gradient is exactly zero a :class:`ZeroGradientError` is raised (no evidence to draw).
* :func:`attention_rollout_map`: attention rollout (Abnar & Zuidema 2020) over the vision
  tower's layers, from the eager attention weights: per layer the head-averaged attention plus
  the identity (residual), rows renormalised, multiplied from the first layer to the last. The
  patch relevance is the class token's row (LLaVA's CLIP) or the mean row over patches (SigLIP
  towers without a class token), min-max scaled to [0, 1]. It does NOT depend on the question
  (the vision tower never sees it): a question-agnostic contrast to Grad-CAM.
* :func:`randomized_copy`: a deep copy with every weight matrix of the vision tower, projector,
  language model and head redrawn from N(0, 0.02) (norm gains and biases kept): the cascading
  model-randomisation sanity check (Adebayo et al. 2018) compares maps of the two models.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clinaudit.models.vlm.adapters import VlmAdapter, unwrap_model
from clinaudit.models.vlm.answer import yes_no_logit
from clinaudit.models.vlm.config import vqa_prompt

__all__ = [
    "ZeroGradientError",
    "attention_rollout_map",
    "gradcam_map",
    "randomized_copy",
    "upsample_map",
]


class ZeroGradientError(ValueError):
    """The target's gradient w.r.t. the vision activations is exactly zero: no map exists."""


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def _patch_tokens(adapter: VlmAdapter, x: torch.Tensor) -> torch.Tensor:
    return x[adapter.vision_prefix_tokens :]


def gradcam_map(
    adapter: VlmAdapter, model: nn.Module, image: np.ndarray, question: str
) -> np.ndarray:
    """Grad-CAM of ``z_yes - z_no`` on the last vision layer's patch tokens.

    Parameters
    ----------
    adapter : VlmAdapter
        The model's adapter.
    model : torch.nn.Module
        The model (or its peft wrapper); left in eval mode.
    image : array (H, W)
        Grey film in [0, 1].
    question : str
        Raw question (:func:`~clinaudit.models.vlm.config.vqa_prompt` is applied).

    Returns
    -------
    numpy.ndarray
        ``(grid, grid)`` float64 in [0, 1] with maximum 1; all zeros when every patch lowers
        ``z_yes - z_no`` (ReLU leaves nothing: the map is empty, not replaced by another one).

    Raises
    ------
    ZeroGradientError
        If the gradient is exactly zero.
    """
    model.eval()
    store: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
        store["act"] = _first(out)

    device = unwrap_model(model).device
    handle = adapter.vision_layers(model)[-1].register_forward_hook(hook)
    try:
        with torch.enable_grad():
            pv = adapter.pixel_values(np.asarray(image)[None]).to(device).requires_grad_(True)
            feats = adapter.encode_images(model, pv)
            logits = adapter.prefill(model, feats, [vqa_prompt(question)])
            z = yes_no_logit(logits, adapter.tokenizer)[0]
            (grad,) = torch.autograd.grad(z, store["act"])
    finally:
        handle.remove()
    act = _patch_tokens(adapter, store["act"][0].detach().double())
    grad = _patch_tokens(adapter, grad[0].double())
    if not torch.any(grad != 0):
        raise ZeroGradientError(
            "the gradient of z_yes - z_no w.r.t. the vision tower's last layer is exactly zero; "
            "Grad-CAM has no evidence to show (is the answer position cut off from the image?)"
        )
    cam = (act * grad.mean(dim=0)).sum(dim=-1)
    relu = cam.clamp_min(0)
    grid = adapter.config.grid
    if relu.max() <= 0:  # no patch supports "yes": an empty map, never another quantity
        return np.zeros((grid, grid))
    return (relu / relu.max()).reshape(grid, grid).cpu().numpy()


def attention_rollout_map(
    adapter: VlmAdapter,
    model: nn.Module,
    image: np.ndarray,
    *,
    head_fusion: Literal["mean", "max"] = "mean",
) -> np.ndarray:
    """Attention rollout over the vision tower's layers (question-agnostic).

    Parameters
    ----------
    adapter, model
        As for :func:`gradcam_map` (the model must use eager attention).
    image : array (H, W)
        Grey film in [0, 1].
    head_fusion : {"mean", "max"}
        How the heads of a layer are combined.

    Returns
    -------
    numpy.ndarray
        ``(grid, grid)`` float64, min-max scaled to [0, 1].

    Raises
    ------
    RuntimeError
        If a layer returned no attention weights (not eager attention).
    """
    if head_fusion not in ("mean", "max"):
        raise ValueError(f"head_fusion={head_fusion!r} is not one of ['mean', 'max']")
    weights: list[torch.Tensor | None] = []

    def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
        weights.append(out[1] if isinstance(out, tuple) and len(out) > 1 else None)

    model.eval()
    handles = [
        layer.self_attn.register_forward_hook(hook) for layer in adapter.vision_layers(model)
    ]
    try:
        with torch.inference_mode():
            pv = adapter.pixel_values(np.asarray(image)[None]).to(unwrap_model(model).device)
            adapter.encode_images(model, pv)
    finally:
        for h in handles:
            h.remove()
    if not weights or any(w is None for w in weights):
        raise RuntimeError(
            "the vision layers returned no attention weights; load the model with "
            "attn_implementation='eager' (VlmAdapter.build and from_local do)"
        )
    rollout = None
    for w in weights:
        a = w[0].double()
        a = a.mean(0) if head_fusion == "mean" else a.amax(0)
        a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = a / a.sum(-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    assert rollout is not None
    k = adapter.vision_prefix_tokens
    rel = rollout[0, k:] if k else rollout.mean(0)
    rel = rel - rel.min()
    rel = rel / rel.max() if rel.max() > 0 else rel
    grid = adapter.config.grid
    return rel.reshape(grid, grid).cpu().numpy()


def upsample_map(saliency: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of a ``(grid, grid)`` map to ``(size, size)``, clipped to [0, 1].

    Examples
    --------
    >>> upsample_map(np.eye(2), 4).shape
    (4, 4)
    """
    m = np.asarray(saliency, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"saliency must be 2-D, got shape {m.shape}")
    t = torch.as_tensor(m)[None, None]
    up = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    return up.clamp(0, 1).numpy()


def randomized_copy(model: nn.Module, seed: int) -> nn.Module:
    """Copy of ``model`` with all weight matrices (ndim >= 2) redrawn from N(0, 0.02).

    Tied weights stay tied (filled in place); ``model`` is unchanged.
    """
    out = copy.deepcopy(unwrap_model(model))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p) * 0.02)
    return out.eval()
