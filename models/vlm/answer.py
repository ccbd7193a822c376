"""Yes/no scores from a vision-language model's first answer token.

The score of a question is the logit difference ``z = z_yes - z_no`` at the first answer
position; ``P(yes) = sigmoid(z)``, which equals the two-way softmax over the ``yes`` and ``no``
logits (the rest of the vocabulary is ignored, so the probability is conditional on the model
answering yes or no). ``z`` is what :func:`clinaudit.audit.selective.fit_temperature` calibrates.

:func:`score_questions` is the fast path: each image goes through the vision tower once, its
features are reused for all of its questions, and each question costs ONE prefill forward of the
language model (no decoding loop, no KV cache). :func:`generate_answers_naive` is the baseline a
user of ``transformers`` would write (``model.generate`` with ``pixel_values`` for every
question, re-encoding the image each time); both give the same ``z`` in float32 (tested).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from clinaudit.models.devices import Precision, select_device
from clinaudit.models.vlm.adapters import VlmAdapter, unwrap_model
from clinaudit.models.vlm.config import vqa_prompt
from clinaudit.models.vlm.tokenizer import ANSWER_WORDS

__all__ = ["answer_token_ids", "generate_answers_naive", "p_yes", "score_questions", "yes_no_logit"]


def answer_token_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    """Ids of the single tokens ``yes`` and ``no``.

    Raises
    ------
    ValueError
        If either word is not one token of ``tokenizer``.
    """
    ids = []
    for word in ANSWER_WORDS:
        enc = tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(enc) != 1 or enc[0] == tokenizer.unk_token_id:
            raise ValueError(f"{word!r} must be one known token, tokenizer gives {enc}")
        ids.append(int(enc[0]))
    return ids[0], ids[1]


def yes_no_logit(logits: torch.Tensor, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """``z_yes - z_no`` from first-answer-token logits ``(..., vocab)``.

    Examples
    --------
    >>> from clinaudit.models.vlm.tokenizer import train_vqa_tokenizer
    >>> tok = train_vqa_tokenizer(["x"], vocab_size=16)
    >>> z = torch.zeros(1, len(tok)); z[0, tok.convert_tokens_to_ids("yes")] = 2.0
    >>> yes_no_logit(z, tok).tolist()
    [2.0]
    """
    yes, no = answer_token_ids(tokenizer)
    return logits[..., yes] - logits[..., no]


def p_yes(z: np.ndarray | torch.Tensor) -> np.ndarray:
    """``sigmoid(z)``: the probability of ``yes`` among {yes, no}.

    Examples
    --------
    >>> p_yes(np.array([0.0])).tolist()
    [0.5]
    """
    z = np.asarray(z.detach().cpu() if isinstance(z, torch.Tensor) else z, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-z))


def _autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    choice = select_device(device.type if device.type in ("cuda", "mps") else "cpu", precision)
    if choice.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=choice.autocast_dtype)


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _check_items(images: Mapping[str, np.ndarray], items: Sequence[tuple[str, str]]) -> None:
    missing = sorted({k for k, _ in items if k not in images})
    if missing:
        raise KeyError(f"items name {len(missing)} image keys not in images, e.g. {missing[:5]}")


def score_questions(
    adapter: VlmAdapter,
    model: nn.Module,
    images: Mapping[str, np.ndarray],
    items: Sequence[tuple[str, str]],
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    precision: Precision = "fp32",
) -> np.ndarray:
    """``z_yes - z_no`` for each ``(image_key, question)``: one prefill per question.

    Parameters
    ----------
    adapter : VlmAdapter
        The model's adapter.
    model : torch.nn.Module
        The model (moved to ``device`` and put in eval mode).
    images : mapping of str to array (H, W)
        Grey images in [0, 1] by key.
    items : sequence of (image_key, question)
        Questions (raw text; :func:`~clinaudit.models.vlm.config.vqa_prompt` is applied).
    batch_size : int
        Images per vision batch and questions per prefill batch.
    device : torch.device or str
        Where to run.
    precision : {"auto", "fp32", "bf16"}
        ``"bf16"``: bf16 autocast (raises where the device lacks it, see
        :func:`~clinaudit.models.devices.select_device`); ``"fp32"``: never.

    Returns
    -------
    numpy.ndarray
        ``(len(items),)`` float64 logits.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    _check_items(images, items)
    device = torch.device(device)
    model = model.to(device).eval()
    keys = list(dict.fromkeys(k for k, _ in items))
    row = {k: i for i, k in enumerate(keys)}
    out = np.empty(len(items), dtype=np.float64)
    with torch.inference_mode(), _autocast(device, precision):
        feats = []
        for sl in _chunks(len(keys), batch_size):
            pv = adapter.pixel_values(np.stack([images[k] for k in keys[sl]]))
            feats.append(adapter.encode_images(model, pv.to(device)))
        cache = torch.cat(feats)
        for sl in _chunks(len(items), batch_size):
            chunk = items[sl]
            index = torch.tensor([row[k] for k, _ in chunk], device=device)
            logits = adapter.prefill(model, cache[index], [vqa_prompt(q) for _, q in chunk])
            out[sl] = yes_no_logit(logits.float(), adapter.tokenizer).cpu().numpy()
    return out


def generate_answers_naive(
    adapter: VlmAdapter,
    model: nn.Module,
    images: Mapping[str, np.ndarray],
    items: Sequence[tuple[str, str]],
    *,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """The naive baseline: ``model.generate`` per question with ``pixel_values`` (re-encoding).

    ``max_new_tokens=1``, greedy, ``output_logits=True``: ``z`` is read from the raw logits of the
    one generated step. Same arguments and result as :func:`score_questions` (float32).
    """
    _check_items(images, items)
    device = torch.device(device)
    model = model.to(device).eval()
    hf = unwrap_model(model)
    out = np.empty(len(items), dtype=np.float64)
    with torch.inference_mode():
        for i, (key, question) in enumerate(items):
            pv = adapter.pixel_values(images[key][None])
            inputs = adapter.generate_inputs(pv, vqa_prompt(question))
            gen = hf.generate(
                **{k: v.to(device) for k, v in inputs.items()},
                max_new_tokens=1,
                do_sample=False,
                output_logits=True,
                output_scores=True,
                return_dict_in_generate=True,
                pad_token_id=adapter.config.pad_token_id,
                eos_token_id=adapter.config.eos_token_id,
            )
            out[i] = float(yes_no_logit(gen.logits[0][0].float(), adapter.tokenizer))
    return out
