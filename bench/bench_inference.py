"""Benchmark: batched ``predict`` vs a naive per-image loop, same model and images, one run.

Images (``--images``): ``simulated`` (default) lands ``--n`` (default 512) simulated DICOMs of one
demo-scale deployment site (what the predictions asset scores), or ``png``: 8-bit grey PNG files of
``--source-px`` (default 512) pixels with smooth random content. Both paths decode them with the
default loader (``clinaudit.sources.images.decode_image`` + ``resize_for_model``).

Compared:

* ``clinaudit.models.inference.predict``: DataLoader (batch 32, 2 workers), ``inference_mode``,
  channels_last, pinned memory and bf16 autocast on CUDA;
* a naive loop: for each file, decode, normalise, one ``model(x)`` under ``torch.no_grad`` on a
  ``(1, 1, S, S)`` tensor, sigmoid; no batching, no workers, default memory format, float32.

Both start from identical weights; the script checks that they give the same probabilities (up to
float32 kernel differences and, on CUDA, bf16 rounding) and prints images/s and their ratio
(target >= 3x on CPU). With ``--device cuda`` it also prints the model-only bf16 throughput
(random tensors already on the GPU, no decoding), e.g. ``--arch densenet121 --input-size 224``.

Run: ``.venv/bin/python bench/bench_inference.py [--device cpu|cuda|auto] [--arch resnet10t]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clinaudit.models.devices import select_device
from clinaudit.models.inference import ImageFileLoader, predict
from clinaudit.models.registry import create_adapter, normalise_images
from clinaudit.models.training import TrainConfig
from clinaudit.sources.cxr_simulator import simulate_site_batch


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
    """Parse arguments, run both paths, print throughputs and ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--source-px", type=int, default=512)
    parser.add_argument("--images", choices=["simulated", "png"], default="simulated")
    parser.add_argument("--arch", default=TrainConfig.arch)
    parser.add_argument("--input-size", type=int, default=TrainConfig.input_size)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="default: 0 on CPU, 4 on GPU")
    parser.add_argument("--device", choices=["auto", "cuda", "mps", "cpu"], default="auto")
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
    loader = ImageFileLoader(cfg.input_size)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if args.images == "simulated":
            files = simulated_dicoms(Path(tmp), args.n, args.seed)
        else:
            files = write_pngs(Path(tmp), args.n, args.source_px, args.seed)
        print(f"wrote {len(files)} images in {time.perf_counter() - t0:.1f} s")

        batched_model = adapter.create_model(seed=args.seed)
        naive_model = adapter.create_model(seed=args.seed).to(choice.device).eval()
        kw = dict(batch_size=args.batch_size, device=args.device, loader=loader)
        predict(batched_model, cfg, files[: args.batch_size], num_workers=0, **kw)  # warm-up
        if cpu_bf16 or choice.device.type == "cuda":
            predict(
                batched_model, cfg, files[: args.batch_size], num_workers=0, precision="bf16", **kw
            )
        naive_loop(naive_model, cfg, files[:4], loader, choice.device)  # warm-up

        start = time.perf_counter()
        naive = naive_loop(naive_model, cfg, files, loader, choice.device)
        if choice.device.type == "cuda":
            torch.cuda.synchronize()
        t_naive = time.perf_counter() - start
        rate_n = len(files) / t_naive
        print(f"naive per-image loop (no batching, float32): {rate_n:8.1f} img/s ({t_naive:.2f} s)")

        precisions = ["fp32", "bf16"] if choice.device.type == "cuda" or cpu_bf16 else ["fp32"]
        results = {}
        for precision in precisions:
            start = time.perf_counter()
            results[precision] = predict(
                batched_model, cfg, files, num_workers=args.workers, precision=precision, **kw
            )
            if choice.device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter() - start
            diff = float(np.abs(results[precision] - naive).max())
            print(
                f"predict {precision} (DataLoader, batch {args.batch_size}, workers "
                f"{'auto' if args.workers is None else args.workers}, inference_mode, "
                f"channels_last): {len(files) / t:8.1f} img/s "
                f"({t:.2f} s); "
                f"ratio vs naive {len(files) / t / rate_n:.2f}x (target >= 3x on CPU); "
                f"max |p - p_naive| {diff:.1e}"
            )
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
