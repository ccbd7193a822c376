"""Benchmark: seconds per yes/no question of the peds_vqa model, against a naive generate() loop.

Builds the embedded model's architecture (``--kind``, default PaliGemma, the demo sizes of
:mod:`clinaudit.studies.peds_vqa.model`; latency does not depend on what the weights learned, so
they are left as initialised) with a tokenizer trained on the question templates, renders
``--images`` simulated pediatric films and asks each of them questions of the four categories
until ``--questions`` (default 200) are timed, one question at a time, as an interactive user
would ask them:

* **baseline (naive)**: ``model.generate(pixel_values, input_ids, max_new_tokens=1)`` per
  question (the image is re-encoded every time; what a first implementation does);
* **cached prefill**: the study's path (:func:`clinaudit.studies.peds_vqa.latency`): the image is
  encoded once and cached, then one prefill forward gives the first-token logits, in float32 and,
  where the CPU runs bf16 natively, under bf16 autocast;
* on a CUDA device when one is present (``--device cuda``), the same two paths.

Both paths give the same z = z_yes - z_no (checked, float32). Prints median and p95 per question
for each path and the ratio naive / cached, with the hardware and the threads.

Run: ``.venv/bin/python bench/bench_peds_vqa_latency.py [--questions 200] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
import torch

from clinaudit.models.vlm.answer import generate_answers_naive, yes_no_logit
from clinaudit.models.vlm.config import VlmConfig, vqa_prompt
from clinaudit.models.vlm.registry import create_vlm
from clinaudit.models.vlm.tokenizer import train_vqa_tokenizer
from clinaudit.sources.peds_render import PEDS_CATEGORIES, render_peds_cxr
from clinaudit.studies.peds_vqa.latency import cpu_name, resolve_precision
from clinaudit.studies.peds_vqa.model import DEFAULTS
from clinaudit.studies.peds_vqa.questions import TEMPLATES


def _images(n: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        findings = {c: float(rng.uniform(0.4, 1.0)) for c in PEDS_CATEGORIES if rng.random() < 0.3}
        img, _ = render_peds_cxr(rng, findings=findings, age_years=float(rng.uniform(0, 10)),
                                 sex="M", view="AP", size=size)  # fmt: skip
        out.append(img)
    return np.stack(out)


def _time(fn, items, warmup: int) -> tuple[np.ndarray, np.ndarray]:
    seconds, z = [], []
    for i, item in enumerate(items):
        t0 = time.perf_counter()
        value = fn(*item)
        dt = time.perf_counter() - t0
        if i >= warmup:
            seconds.append(dt)
            z.append(value)
    return np.asarray(seconds), np.asarray(z)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", default=DEFAULTS["kind"])
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("--images", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    texts = [q for fam in TEMPLATES.values() for q in fam] + ["yes", "no"]
    tok = train_vqa_tokenizer(texts, vocab_size=512)
    arch = {k: DEFAULTS[k] for k in ("patch_size", "vision_hidden", "vision_layers",
                                     "text_hidden", "text_layers")}  # fmt: skip
    config = VlmConfig(args.kind, vocab_size=len(tok), image_size=DEFAULTS["image_size"], **arch)
    adapter, model = create_vlm(args.kind, config, tok, seed=0)
    device = torch.device(args.device)
    model = model.to(device).eval()
    images = _images(args.images, config.image_size, seed=0)
    cats = list(TEMPLATES)
    items = [(i % args.images, TEMPLATES[cats[(i // args.images) % len(cats)]][0])
             for i in range(args.warmup + args.questions)]  # fmt: skip

    def naive(k: int, question: str) -> float:
        one = {"x": images[k]}
        return float(
            generate_answers_naive(adapter, model, one, [("x", question)], device=device)[0]
        )

    def cached_path(precision: str):
        cache: dict[int, torch.Tensor] = {}
        amp = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
               else contextlib.nullcontext())  # fmt: skip

        def answer(k: int, question: str) -> float:
            with amp:
                if k not in cache:
                    pv = adapter.pixel_values(images[k][None]).to(device)
                    cache[k] = adapter.encode_images(model, pv)
                logits = adapter.prefill(model, cache[k], [vqa_prompt(question)])
            return float(yes_no_logit(logits.float(), tok)[0])

        return answer

    rows = {}
    with torch.inference_mode():
        rows["naive generate() (baseline)"] = _time(naive, items, args.warmup)
        rows["cached prefill fp32"] = _time(cached_path("fp32"), items, args.warmup)
        if device.type == "cuda" or resolve_precision("auto") == "bf16":
            rows["cached prefill bf16"] = _time(cached_path("bf16"), items, args.warmup)
    z_naive, z_cached = rows["naive generate() (baseline)"][1], rows["cached prefill fp32"][1]
    agree = float(np.max(np.abs(z_naive - z_cached)))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"peds_vqa latency: {args.kind}, {args.questions} questions on {args.images} images, "
          f"{where}, {args.threads} threads, device {device}")  # fmt: skip
    base = np.median(rows["naive generate() (baseline)"][0])
    for name, (sec, _) in rows.items():
        print(
            f"  {name:30s} median {1000 * np.median(sec):7.2f} ms  p95 "
            f"{1000 * np.quantile(sec, 0.95):7.2f} ms  naive/this {base / np.median(sec):5.2f}x"
        )
    print(f"  max |z naive - z cached fp32| = {agree:.2e}")
    return 0 if agree < 1e-3 else 1


if __name__ == "__main__":
    raise SystemExit(main())
