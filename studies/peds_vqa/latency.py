"""peds_vqa latency: time to answer one question, as an interactive user would wait for it.

The first ``latency.questions`` questions of the evaluation set (after ``latency.warmup`` untimed
ones) are answered one at a time by the tuned model: the image is encoded once and cached (a
question on an image already seen reuses its features), then one prefill forward gives the
first-token logits (no generation). Each question's time is its encoding (when not cached) plus
its prefill. Precision ``auto`` is bf16 autocast where the CPU supports it (oneDNN bf16), else
float32; the hardware, threads and precision used are recorded with the numbers.
"""

from __future__ import annotations

import contextlib
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from clinaudit.models.vlm.config import vqa_prompt
from clinaudit.studies.base import AuditData

from .images import ImageLoader, image_loader
from .policy import PedsVqaPolicy

__all__ = ["cpu_name", "latency_table", "resolve_precision"]


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``), else what :mod:`platform` says."""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def resolve_precision(precision: str) -> str:
    """``auto`` -> ``bf16`` where this CPU runs bf16 natively, else ``fp32``."""
    if precision != "auto":
        return precision
    return "bf16" if bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) else "fp32"


def latency_table(
    data: AuditData, questions: pd.DataFrame, images: pd.DataFrame, policy: PedsVqaPolicy
) -> pd.DataFrame:
    """One row per timed question: ``seconds``, ``encode_seconds``, ``prefill_seconds``,
    ``cached`` and the run's ``precision``, ``threads``, ``hardware``."""
    from .model import load_audited

    cfg = policy.latency
    tuned = load_audited(data.model)["tuned"]
    adapter, model = tuned.adapter, tuned.model.eval()
    precision = resolve_precision(cfg.precision)
    amp = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )
    rows_by_key = images.set_index("image_key")
    chosen = questions.head(cfg.warmup + cfg.questions)
    size = tuned.config.image_size
    loaders: dict[str, ImageLoader] = {}
    cache: dict[str, torch.Tensor] = {}
    out = []
    with torch.inference_mode(), amp:
        for i, q in enumerate(chosen.itertuples()):
            r = rows_by_key.loc[q.image_key]
            site = str(r["site"])
            if site not in loaders:
                loaders[site] = image_loader(data.landing / "peds_vqa", site, size)
            pixels = loaders[site](r)
            cached = q.image_key in cache
            t0 = time.perf_counter()
            if not cached:
                pv = adapter.pixel_values(pixels[None])
                cache[q.image_key] = adapter.encode_images(model, pv)
            t1 = time.perf_counter()
            adapter.prefill(model, cache[q.image_key], [vqa_prompt(q.question)])
            t2 = time.perf_counter()
            if i < cfg.warmup:
                continue
            out.append({"question_id": q.question_id, "cached": cached,
                        "encode_seconds": t1 - t0, "prefill_seconds": t2 - t1,
                        "seconds": t2 - t0})  # fmt: skip
    table = pd.DataFrame(out)
    return table.assign(
        precision=precision, threads=torch.get_num_threads(), hardware=cpu_name(),
        device="cpu", median_seconds=float(np.median(table["seconds"])) if len(table) else np.nan,
    )  # fmt: skip
