"""Benchmark: batched ``predict`` vs a naive per-image loop, same model and images, one run.

Images (``--images``): ``simulated`` (default) lands ``--n`` (default 512) simulated DICOMs of one
demo-scale deployment site (what the predictions asset scores), or ``png``: 8-bit grey PNG files of
``--source-px`` (default 512) pixels with smooth random content. Both paths read them with the
loader of the predictions asset (``ImageFileLoader``: one read, sha256 against the value recorded
at ingest, ``clinaudit.sources.images.decode_image`` + ``resize_for_model``).

Compared:

* ``clinaudit.models.inference.predict``: DataLoader (decoding in-process on the CPU, workers on a
  GPU), default batch size (16 on the CPU, 32 on a GPU), ``inference_mode``, channels-last, on the
  CPU BatchNorm folded into the convolutions; pinned memory and bf16 autocast on CUDA;
* a naive loop: for each file, decode, normalise, one ``model(x)`` under ``torch.no_grad`` on a
  ``(1, 1, S, S)`` tensor, sigmoid; no batching, no workers, default memory format, float32.

Both start from identical weights. The paths run in alternation ``--repeats`` times (default 3) on
all images, so a burst of load from other processes hits both; the script prints per-round
images/s, ratios and the share of the CPUs other processes used (Linux ``/proc/stat``), then the
medians over the quiet rounds (others below 5% in every path; all rounds, with a warning, when
none was quiet: the per-image loop slows down far more under contention, which inflates the
ratio), and checks that both paths give the same probabilities (float32 rounding; bf16 by more: the
bench's network is untrained, so its outputs sit near 0.5; on the trained demo vendor model bf16
moves scores by about 1e-3 on average and up to 0.08). ``--breakdown`` also times the parts
(read, sha256, decode, resize; forward passes alone).
With ``--device cuda`` it also prints the model-only bf16 throughput (random tensors already on
the GPU), e.g. ``--arch densenet121 --input-size 224``.

Run: ``.venv/bin/python bench/bench_inference.py [--n 1024] [--breakdown] [--device cpu|cuda]``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clinaudit.models.devices import prepare_model, select_device
from clinaudit.models.inference import ImageFileLoader, default_batch_size, predict
from clinaudit.models.registry import create_adapter, normalise_images
from clinaudit.models.training import TrainConfig
from clinaudit.sources.cxr_simulator import simulate_site_batch
from clinaudit.sources.images import decode_image, resize_for_model

QUIET = 0.05  # a round is quiet when other processes used < 5% of the CPUs in every path


def write_pngs(directory: Path, n: int, px: int, seed: int) -> list[Path]:
    """``n`` smooth random 8-bit grey PNGs of ``px`` x ``px`` pixels."""
    rng = np.random.default_rng(seed)
    files = []
    for i in range(n):
        coarse = (rng.random((16, 16)) * 255).astype(np.uint8)
        img = Image.fromarray(coarse).resize((px, px), Image.Resampling.BICUBIC)
        noise = rng.integers(-8, 9, (px, px))
        arr = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        path = directory / f"img{i:05d}.png"
        Image.fromarray(arr).save(path)
        files.append(path)
    return files


def simulated_dicoms(directory: Path, n: int, seed: int) -> list[Path]:
    """``n`` simulated DICOMs of the demo-scale site_b, as the landing area holds them."""
    summary = simulate_site_batch(
        directory, truth_root=directory / "truth", site="site_b", n_images=n, scale="demo",
        seed=seed, workers=2,
    )  # fmt: skip
    return sorted((summary.batch_dir / "images").glob("*.dcm"))


def naive_loop(model, cfg, files, loader, device) -> np.ndarray:
    """Decode and run one image at a time."""
    out = []
    with torch.no_grad():
        for f in files:
            x = torch.from_numpy(loader(str(f)))[None, None].to(device)
            out.append(torch.sigmoid(model(normalise_images(x, cfg)).float()).cpu().numpy()[0])
    return np.stack(out)


def _cpu_busy_s() -> float | None:
    """Busy CPU seconds of the whole machine so far (Linux ``/proc/stat``), else None."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _seconds(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def timed(fn: Callable[[], np.ndarray], device: torch.device) -> tuple[np.ndarray, float, float]:
    """``fn()``'s result, its wall seconds and the CPU share other processes used meanwhile."""
    busy0, own0, t0 = _cpu_busy_s(), time.process_time(), time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    busy1, own = _cpu_busy_s(), time.process_time() - own0
    others = float("nan")
    if busy0 is not None and busy1 is not None:
        others = max(0.0, busy1 - busy0 - own) / (wall * (os.cpu_count() or 1))
    return out, wall, others


def breakdown(adapter, seed, files, expected, choice, precisions) -> None:
    """Milliseconds per image of each part of both paths (first 128 files; best of 3 rounds)."""
    cfg = adapter.config
    files = [str(f) for f in files[:128]]
    parts: dict[str, float] = {}
    for _ in range(3):
        t = dict.fromkeys(("read", "sha256", "decode", "resize"), 0.0)
        for f in files:
            t0 = time.perf_counter()
            data = Path(f).read_bytes()
            t1 = time.perf_counter()
            assert hashlib.sha256(data).hexdigest() == expected[f]
            t2 = time.perf_counter()
            pixels = decode_image(data, name=f).pixels
            t3 = time.perf_counter()
            resize_for_model(pixels, cfg.input_size)
            t4 = time.perf_counter()
            for key, dt in zip(t, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                t[key] += dt
        for key, total in t.items():
            parts[key] = min(parts.get(key, np.inf), total / len(files) * 1e3)
    print("loader, ms/image: " + ", ".join(f"{k} {v:.3f}" for k, v in parts.items()))
    size = cfg.input_size
    model = adapter.create_model(seed=seed).to(choice.device).eval()
    with torch.no_grad():
        one = torch.zeros(1, cfg.in_chans, size, size, device=choice.device)
        best = min(_seconds(lambda: [model(one) for _ in range(32)]) for _ in range(3)) / 32
    print(f"naive forward (batch 1, float32): {best * 1e3:.2f} ms/image")
    for precision in precisions:
        pchoice = select_device(choice.device.type, precision)
        bs = default_batch_size(pchoice)
        net = prepare_model(adapter.create_model(seed=seed), pchoice)
        x = torch.zeros(bs, cfg.in_chans, size, size, device=choice.device)
        x = x.contiguous(memory_format=torch.channels_last)
        amp = dict(dtype=torch.bfloat16, enabled=precision == "bf16")
        with torch.inference_mode(), torch.autocast(choice.device.type, **amp):
            for _ in range(3):  # oneDNN creates its kernels on the first calls
                net(x)
            best = min(_seconds(lambda n=net, x=x: n(x)) for _ in range(5)) / bs
        print(f"predict forward ({precision}, batch {bs}, prepared): {best * 1e3:.2f} ms/image")


def summarize(rates, busy, results, precisions, args, choice) -> None:
    """Medians over the quiet rounds (all rounds, with a warning, when none was quiet)."""
    keep = [i for i, b in enumerate(busy) if not b >= QUIET]  # NaN (no /proc/stat): keep all
    scope = f"median of {len(keep)} quiet round(s)"
    if not keep:
        keep, scope = list(range(len(busy))), "median of all rounds, none quiet"
        print(
            f"WARNING: other processes used up to {max(busy):.0%} of the CPUs in every round. "
            "The per-image loop suffers most (one thread barrier per operator per image), so "
            "these ratios overstate the speed-up; re-run on a quiet machine."
        )
    naive = [rates["naive"][i] for i in keep]
    print(
        f"naive per-image loop (no batching, float32): {statistics.median(naive):8.1f} img/s "
        f"({scope})"
    )
    for precision in precisions:
        med = statistics.median(rates[precision][i] for i in keep)
        ratio = statistics.median(rates[precision][i] / rates["naive"][i] for i in keep)
        diff = float(np.abs(results[precision] - results["naive"]).max())
        bs = args.batch_size or default_batch_size(select_device(args.device, precision))
        print(
            f"predict {precision} (batch {bs}, workers "
            f"{'auto' if args.workers is None else args.workers}, inference_mode, "
            f"channels_last{', BatchNorm folded' if choice.device.type == 'cpu' else ''}): "
            f"{med:8.1f} img/s; ratio vs naive {ratio:.2f}x ({scope}; target >= 3x on CPU); "
            f"max |p - p_naive| {diff:.1e}"
        )


def model_only_throughput(model, cfg, choice, batch: int, seconds: float = 5.0) -> float:
    """Images/s of forward passes on random tensors already on the device (no decoding)."""
    x = torch.randn(batch, cfg.in_chans, cfg.input_size, cfg.input_size, device=choice.device)
    x = x.contiguous(memory_format=torch.channels_last)
    model = model.to(choice.device).eval().to(memory_format=torch.channels_last)
    amp = dict(dtype=choice.autocast_dtype or torch.float32, enabled=bool(choice.autocast_dtype))
    with torch.inference_mode(), torch.autocast(choice.device.type, **amp):
        for _ in range(3):
            model(x)
        torch.cuda.synchronize()
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            model(x)
            n += batch
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def main() -> None:
    """Parse arguments, run both paths in alternation, print throughputs and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--source-px", type=int, default=512)
    parser.add_argument("--images", choices=["simulated", "png"], default="simulated")
    parser.add_argument("--arch", default=TrainConfig.arch)
    parser.add_argument("--input-size", type=int, default=TrainConfig.input_size)
    parser.add_argument("--batch-size", type=int, default=None, help="default: predict's")
    parser.add_argument("--workers", type=int, default=None, help="default: 0 on CPU, 4 on GPU")
    parser.add_argument("--device", choices=["auto", "cuda", "mps", "cpu"], default="auto")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds (median)")
    parser.add_argument("--breakdown", action="store_true", help="also time the parts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    choice = select_device(args.device)
    cpu_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    adapter = create_adapter("timm_cxr", architecture=args.arch, input_size=args.input_size)
    cfg = adapter.config
    print(f"device: {choice.describe()}; torch threads: {torch.get_num_threads()}")
    source = "simulated DICOMs (demo scale)" if args.images == "simulated" else (
        f"PNGs of {args.source_px} px"
    )  # fmt: skip
    print(f"model: timm_cxr {args.arch} @ {args.input_size} px; {args.n} {source}")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if args.images == "simulated":
            files = simulated_dicoms(Path(tmp), args.n, args.seed)
        else:
            files = write_pngs(Path(tmp), args.n, args.source_px, args.seed)
        print(f"wrote {len(files)} images in {time.perf_counter() - t0:.1f} s")
        # As in the predictions asset: every file is re-hashed against its ingest-time sha256.
        expected = {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
        loader = ImageFileLoader(cfg.input_size, expected_sha256=expected)

        batched_model = adapter.create_model(seed=args.seed)
        naive_model = adapter.create_model(seed=args.seed).to(choice.device).eval()
        precisions = ["fp32", "bf16"] if choice.device.type == "cuda" or cpu_bf16 else ["fp32"]
        kw = dict(batch_size=args.batch_size, device=args.device, loader=loader)
        for precision in precisions:  # warm-up
            predict(batched_model, cfg, files[:32], num_workers=0, precision=precision, **kw)
        naive_loop(naive_model, cfg, files[:4], loader, choice.device)
        if args.breakdown:
            breakdown(adapter, args.seed, files, expected, choice, precisions)

        paths: dict[str, Callable[[], np.ndarray]] = {
            "naive": lambda: naive_loop(naive_model, cfg, files, loader, choice.device)
        }
        for precision in precisions:
            paths[precision] = lambda p=precision: predict(
                batched_model, cfg, files, num_workers=args.workers, precision=p, **kw
            )
        rates: dict[str, list[float]] = {k: [] for k in paths}
        busy: list[float] = []
        results: dict[str, np.ndarray] = {}
        for r in range(args.repeats):
            cells, shares = [], []
            for name, fn in paths.items():
                results[name], wall, others = timed(fn, choice.device)
                rates[name].append(len(files) / wall)
                shares.append(others)
                cells.append(f"{name} {rates[name][-1]:6.1f} img/s (others {others:4.0%})")
            busy.append(max(shares))
            ratios = [f"{rates[p][-1] / rates['naive'][-1]:.2f}x" for p in precisions]
            print(f"round {r + 1}: " + "; ".join(cells) + " -> ratio " + ", ".join(ratios))
        summarize(rates, busy, results, precisions, args, choice)
        if not cpu_bf16 and choice.device.type == "cpu":
            print("this CPU has no native bf16: only float32 was measured")
    if choice.device.type == "cuda":
        model = adapter.create_model(seed=args.seed)
        rate = model_only_throughput(model, cfg, choice, batch=256)
        print(
            f"model-only bf16 throughput ({args.arch} @ {args.input_size} px, batch 256): "
            f"{rate:,.0f} img/s"
        )


if __name__ == "__main__":
    main()
