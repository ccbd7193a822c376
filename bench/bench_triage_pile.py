"""Benchmark: the cxr_triage evidence path on a whole pile (30,000 studies), CPU, one run.

Measures, stage by stage, what study ``cxr_triage`` does after ingest on a full-scale triage site
(:data:`clinaudit.sources.triage_simulator.TRIAGE_SCALES` ``"full"``: a 10,000-image labelled
development batch and a 30,000-image unlabelled pile), each with its seconds and a rate:

1. inference: the logits of every calibration, test and pile image through the study's path
   (:func:`clinaudit.models.inference.predict` with ``output="logits"``, the
   ``ImageFileLoader`` that re-hashes each file against its ingest-time sha256, the study's
   batch size and DataLoader workers: 16 and 0 on the CPU), images/s. The ``train`` rows, which
   the predictions asset also scores but no later stage reads, are not scored here; the script
   prints what they would add at the measured rate (an extrapolation);
2. the baseline, in the same run and on the same network: a naive loop (one image at a time:
   read + sha256 + decode, normalise, ``model(x)`` under ``no_grad``, float32, BatchNorm not
   folded) over a seeded random subsample of ``--naive`` of the same images, images/s, and the
   ratio of the batched rate to it (the naive rate is on the subsample; both logits compared);
3. calibration + certificate: :func:`clinaudit.studies.cxr_triage.data.scored_table` (splits,
   labels, scope) then :func:`clinaudit.studies.cxr_triage.certify.certify_triage`
   (temperatures, Learn-then-Test certificate, flag rule, subgroup re-certification, buckets,
   test-split checks with their bootstrap CIs), seconds;
4. queue: :func:`clinaudit.studies.cxr_triage.throughput.simulate_throughput` (backlog + inflow,
   the three reading policies, the policy's ``n_draws`` truth draws), seconds and studies
   simulated per second; its baseline, in the same run: the core queue
   (:func:`clinaudit.audit.triage_queue.simulate_queue`) and the slot-by-slot ``O(n^2)`` loop of
   ``bench_triage_queue.py`` (the slow reference of ``tests/test_triage_queue.py``) on a seeded
   subsample of ``--queue-sub`` of the same studies, capacity scaled by the same factor; the loop
   at full size is a quadratic extrapolation, printed as such;
5. the total: inference + calibration/certificate + queue (set-up excluded).

Each stage also prints the share of the CPUs other processes used meanwhile (Linux
``/proc/stat``): on a shared machine every figure is slower than on a quiet one.

Inputs. ``--home`` (default ``var/full``, what ``make demo SCALE=full`` writes) is used when it
holds a landed triage site (``landing/cxr_triage/<site>/dev-0001/`` and ``pile-0001/``), its
validated table (``artifacts/tables/cxr_triage/validated/<site>.parquet``; ingested here when
missing) and the triage model package (``artifacts/models/cxr_triage/transfer-*/``, newest by its
card). Without a landed site the script simulates one at ``--scale`` (default ``full``;
``--pile N`` overrides the pile size) into ``--work`` (default: a temporary directory, deleted at
the end) and ingests it with the study's ingest (``allow_unlabelled``); a ``--work`` directory is
laid out like a home and reused by the next run. Without a package it builds an *untrained*
network with the embedded model's adapter, architecture and input size: timings do not depend on
the weights, the scores are then meaningless (the script says so) and nothing is skipped;
``--model DIR`` scores with that triage package instead (e.g. a demo home's). Set-up
(simulation, ingest, loading) is timed and printed apart, never in the total. ``--pile N`` on a
landed home scores a seeded random ``N`` of its pile studies.

Disk: the full scale writes 40,000 DICOMs of 408 px (13.4 GB); the script refuses to simulate
when that would leave less than 5 GB free on the work directory's disk, and says what to pass.

How long (measured with this script: shared 2-vCPU AMD EPYC VM, float32, torch 2.13, while
another job kept one core busy: load average 2.8-3.8, others 34-61% of the CPUs in every stage):

* default run, nothing landed (full scale, untrained network): set-up 757 s (simulation of
  40,000 images 555 s, ingest 198 s = 202 images/s); inference of 36,856 images (4,854
  calibration, 2,002 test, 30,000 pile) 809 s = 45.6 images/s; naive loop 11.0 images/s on 300
  (4.2x; 2.5x against the batched path on the same 300 right after); ``scored_table`` +
  ``certify_triage`` 1.0 s; queue 3.2 s = 61,000 studies simulated/s (the slot-scan loop 70-85x
  slower on 2,000 studies, 5-6 min extrapolated to the 66,015); total 813 s (inference 99%),
  about 26 min with the set-up;
* a demo-scale home (3,000 development + 1,000 pile images, trained package; ``--home`` of a
  ``make demo`` run): 3,007 images scored at 31.0 images/s, naive 5.2 images/s (6.0x), certificate
  0.3 s, queue 3.2 s (the pile resampled to 30,000), total 100 s. The same run with
  ``--threads 1``: 61.3 images/s, naive 34.4 (1.8x), total 52.5 s. With every core in torch's
  threads, a core another process holds stalls every operator's thread barrier; the per-image
  loop (many small operators) suffers most, so the ratios above are inflated by the contention.

Run: ``.venv/bin/python bench/bench_triage_pile.py [--home var/full] [--scale demo] [--pile N]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from bench_triage_queue import slow_queue

from clinaudit.audit.bootstrap import derive_rng
from clinaudit.audit.triage_queue import POLICIES, QueueConfig, daily_inflow, simulate_queue
from clinaudit.models.devices import select_device
from clinaudit.models.inference import ImageFileLoader, default_batch_size, predict
from clinaudit.models.package import load_package
from clinaudit.models.registry import create_adapter, normalise_images
from clinaudit.models.training import TrainConfig
from clinaudit.sources.landing import image_paths, scan_landing
from clinaudit.sources.triage_simulator import (
    DEV_BATCH,
    PILE_BATCH,
    TRIAGE_SCALES,
    TRIAGE_SITES,
    simulate_triage_site,
)
from clinaudit.studies import get_study
from clinaudit.studies.cxr_triage.certify import certify_triage
from clinaudit.studies.cxr_triage.data import scored_table, triage_splits
from clinaudit.studies.cxr_triage.labels import TARGETS
from clinaudit.studies.cxr_triage.model import SCALE_TRAINING
from clinaudit.studies.cxr_triage.policy import SHIPPED_POLICY, TriagePolicy
from clinaudit.studies.cxr_triage.throughput import simulate_throughput
from clinaudit.studies.image_ingest import labelled_rows
from clinaudit.validation.ingest_loop import ingest_partition

STUDY = "cxr_triage"
KEY = b"bench-triage-pseudonym-key-0123456789"
SCORED = ("calibration", "test", "pile")
LOGITS = tuple(f"logit_{t}" for t in TARGETS)
#: Bytes the simulation must leave free on the work directory's disk (it may be shared).
MIN_FREE = 5e9
QUIET = 0.05  # a stage is quiet when other processes used < 5% of the CPUs meanwhile


# ------------------------------------------------------------------------------------- timing
def _cpu_busy_s() -> float | None:
    """Busy CPU seconds of the whole machine so far (Linux ``/proc/stat``), else None."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    """CPU seconds of this process and of its finished children (ingest / simulation workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """``fn()``'s result, its wall seconds and the CPU share other processes used meanwhile."""
    busy0, own0, t0 = _cpu_busy_s(), _own_cpu_s(), time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t0
    busy1, own = _cpu_busy_s(), _own_cpu_s() - own0
    others = float("nan")
    if busy0 is not None and busy1 is not None:
        others = min(1.0, max(0.0, busy1 - busy0 - own) / (wall * (os.cpu_count() or 1)))
    return out, wall, others


def load_line() -> str:
    """``uptime``'s load averages and the number of CPUs."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} CPUs"


# ------------------------------------------------------------------------------------- inputs
@dataclasses.dataclass(frozen=True)
class Inputs:
    """Landed sites, their validated tables and where each came from."""

    landing: Path
    validated: dict[str, pd.DataFrame]
    notes: tuple[str, ...]


def landed_sites(home: Path) -> list[str]:
    """Sites of ``home`` with a ready development batch and a ready pile."""
    ready = scan_landing(home / "landing", STUDY).ready()
    batches = {(b.site, b.batch) for b in ready}
    return sorted({s for s, _ in batches if {(s, DEV_BATCH), (s, PILE_BATCH)} <= batches})


def _validated_path(home: Path, site: str) -> Path:
    return home / "artifacts" / "tables" / STUDY / "validated" / f"{site}.parquet"


def ingest_site(landing: Path, site: str) -> pd.DataFrame:
    """The study's ingest of every ready batch of one site (unlabelled pile rows kept)."""
    study = get_study(STUDY)
    options = study.ingest_options()
    res = ingest_partition(
        landing,
        study.landing_dir,
        site,
        ingest_batch=lambda ref: study.ingest_batch(ref, key=KEY, options=options),
        empty_table=study.empty_table(),
        sort_by=study.sort_by,
    )
    if res.failed_batches or len(res.quarantine):
        print(f"  {site}: {len(res.quarantine)} quarantine record(s), failed {res.failed_batches}")
    return res.table


def check_disk(work: Path, scale: Any) -> None:
    """Refuse to simulate when the disk under ``work`` cannot hold the DICOMs."""
    native = TRIAGE_SITES[next(iter(TRIAGE_SITES))].native_px(scale.native_px)
    need = (scale.dev_images + scale.pile_images) * (2 * native * native + 2048)
    free = shutil.disk_usage(work).free
    if free - need < MIN_FREE:
        raise SystemExit(
            f"simulating scale {scale.name!r} ({scale.dev_images:,} + {scale.pile_images:,} "
            f"DICOMs of {native} px) needs about {need / 1e9:.1f} GB in {work}; "
            f"{free / 1e9:.1f} GB are free there (expected {MIN_FREE / 1e9:.0f} GB left after "
            "it: the disk may be shared). Pass "
            "--work DIR on a larger disk, --home HOME with a landed full-scale site, or a "
            "smaller --pile N / --scale demo"
        )


def build(work: Path, args: argparse.Namespace) -> tuple[list[str], float]:
    """Simulate one triage site into ``work`` (landed data is reused when present)."""
    if landed_sites(work):
        return landed_sites(work), 0.0
    scale = TRIAGE_SCALES[args.scale]
    if args.pile is not None:
        name = f"{scale.name}+pile{args.pile}"
        scale = dataclasses.replace(scale, name=name, pile_images=args.pile)
    work.mkdir(parents=True, exist_ok=True)
    check_disk(work, scale)
    print(
        f"simulating triage site at scale {scale.name!r}: {scale.dev_images:,} development + "
        f"{scale.pile_images:,} pile images into {work} ...",
        flush=True,
    )
    t0 = time.perf_counter()
    summary = simulate_triage_site(
        work / "landing", truth_root=work / "truth", scale=scale, seed=args.seed
    )
    return [summary.site], time.perf_counter() - t0


def resolve_inputs(home: Path, work: Path, args: argparse.Namespace) -> Inputs:
    """Landed sites and validated tables: from ``home``, else built in ``work``."""
    notes: list[str] = []
    source = home
    sites = landed_sites(home)
    if sites:
        notes.append(f"landed sites {sites} found in {home}")
    else:
        source = work
        sites, sim_s = build(work, args)
        what = f"simulated in {sim_s:.0f} s" if sim_s else "landed by an earlier run"
        notes.append(f"no landed triage site in {home}: {sites} {what} in {work}")
    validated: dict[str, pd.DataFrame] = {}
    for site in sites:
        path = _validated_path(source, site)
        if path.is_file():
            validated[site] = pd.read_parquet(path)
            notes.append(f"{site}: validated table {path} ({len(validated[site]):,} rows)")
            continue
        print(f"ingesting {site} (no validated table at {path}) ...", flush=True)
        table, wall, others = timed(lambda s=site: ingest_site(source / "landing", s))
        validated[site] = table
        notes.append(
            f"{site}: ingested here (set-up): {len(table):,} rows in {wall:.0f} s = "
            f"{len(table) / wall:.1f} images/s (others {others:.0%})"
        )
        if source == work:  # a work directory keeps its tables, like a home
            path.parent.mkdir(parents=True, exist_ok=True)
            table.to_parquet(path)
    return Inputs(source / "landing", validated, tuple(notes))


def _card(package: Path) -> dict[str, Any]:
    return json.loads((package / "model_card.json").read_text())


def resolve_model(
    home: Path, package: Path | None, scale: str, seed: int
) -> tuple[torch.nn.Module, Any, str, bool]:
    """``package``, else the newest triage package of ``home``, else an untrained network of
    the same kind."""
    root = home / "artifacts" / "models" / STUDY
    found = [p for p in root.glob("transfer-*") if (p / "model_card.json").is_file()]
    if package is not None or found:
        path = package or max(found, key=lambda p: _card(p).get("created_utc", ""))
        pkg = load_package(path, expected_labels=TARGETS)
        cfg = pkg.config
        text = f"triage package {path} ({cfg.architecture} at {cfg.input_size} px, trained)"
        return pkg.model, cfg, text, True
    size = SCALE_TRAINING.get(scale, {}).get("input_size", TrainConfig.input_size)
    adapter = create_adapter(
        TrainConfig.adapter, architecture=TrainConfig.arch, input_size=size, labels=TARGETS
    )
    text = (
        f"no triage package under {root}: an UNTRAINED {TrainConfig.adapter} "
        f"{TrainConfig.arch} at {size} px (the embedded model's network). Its scores are "
        "meaningless: only the timings below mean anything"
    )
    return adapter.create_model(seed=seed), adapter.config, text, False


def subsample_pile(
    validated: dict[str, pd.DataFrame], n: int, seed: int
) -> dict[str, pd.DataFrame]:
    """Keep a seeded random ``n`` of the pile (unlabelled) rows over all sites."""
    both = pd.concat(validated, names=["_site", "_row"])
    pile = np.flatnonzero(~labelled_rows(both.reset_index(drop=True)).to_numpy())
    if n >= pile.size:
        return validated
    drop = np.setdiff1d(pile, np.random.default_rng(seed).choice(pile, n, replace=False))
    kept = both.iloc[np.setdiff1d(np.arange(len(both)), drop)]
    return {s: kept.xs(s, level="_site").reset_index(drop=True) for s in validated}


# ---------------------------------------------------------------------------------- baselines
class Progress:
    """Prints a line at every tenth of a long inference (``predict``'s progress callback)."""

    def __init__(self, min_total: int = 5000) -> None:
        self.min_total, self.shown, self.t0 = min_total, 0, time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        if total < self.min_total or done * 10 // total <= self.shown:
            return
        self.shown = done * 10 // total
        wall = time.perf_counter() - self.t0
        print(f"  ... {done:,} / {total:,} images, {done / wall:.1f} images/s", flush=True)


def naive_loop(model, cfg, files, loader, device) -> np.ndarray:
    """One image at a time: read + sha256 + decode, normalise, ``model(x)``; float32 logits."""
    out = []
    with torch.no_grad():
        for f in files:
            x = torch.from_numpy(loader(str(f)))[None, None].to(device)
            out.append(model(normalise_images(x, cfg)).float().cpu().numpy()[0])
    return np.stack(out)


def queue_inputs(pile: pd.DataFrame, policy: TriagePolicy, seed: int):
    """Backlog + inflow of the queue stage built as ``simulate_throughput`` builds them."""
    w = policy.workload
    n = len(pile)
    rng = derive_rng(seed, "cxr_triage/backlog")
    backlog = rng.integers(0, n, w.simulated_pile) if n < w.simulated_pile else np.arange(n)
    arrivals = daily_inflow(w.daily_inflow, w.inflow_days, seed=seed)
    inflow = derive_rng(seed, "cxr_triage/inflow").integers(0, n, arrivals.size)
    idx = np.concatenate([backlog, inflow])
    arrival = np.concatenate([np.zeros(backlog.size), arrivals])
    studies = pile.iloc[idx]
    return arrival, studies["priority"].to_numpy(float), studies["bucket"].to_numpy(str)


def queue_baseline(pile: pd.DataFrame, policy: TriagePolicy, n_sub: int, seed: int) -> None:
    """Core queue vs the ``O(n^2)`` slot-scan loop on a subsample, capacity scaled."""
    arrival, priority, bucket = queue_inputs(pile, policy, seed)
    n = arrival.size
    sub = np.sort(np.random.default_rng(seed + 1).choice(n, min(n_sub, n), replace=False))
    w = policy.workload
    config = QueueConfig(
        reads_per_day=w.reads_per_day * sub.size / n,
        aging_cap_days=w.aging_cap_days,
        reread_fraction=policy.monitoring.reread_fraction,
        first_days=float(w.first_days),
    )
    print(
        f"  baseline on a subsample of {sub.size:,} of the {n:,} studies (capacity scaled to "
        f"{config.reads_per_day:.1f} reads/day):"
    )
    for name in POLICIES:
        args = (arrival[sub], priority[sub], bucket[sub])
        run, core_s, _ = timed(
            lambda a=args, p=name: simulate_queue(*a, policy=p, config=config, seed=seed)
        )
        order, loop_s, others = timed(
            lambda a=args, r=run, p=name: slow_queue(
                a[0], a[1], r.read, p, config.reads_per_day, config.aging_cap_days
            )
        )
        print(
            f"    {name:<18} core {core_s * 1e3:7.1f} ms | slot-scan loop {loop_s:6.2f} s "
            f"(others {others:.0%}) | loop / core {loop_s / core_s:6.0f}x | same read order: "
            f"{order == run.read_order.tolist()} | loop extrapolated (quadratic) to n={n:,}: "
            f"{loop_s * (n / sub.size) ** 2 / 60:,.0f} min"
        )


# ------------------------------------------------------------------------------------------ run
def run(home: Path, work: Path, args: argparse.Namespace) -> None:
    choice = select_device(args.device)
    threads = torch.get_num_threads()
    print(f"start: {load_line()}; device {choice.describe()}; torch threads {threads}")
    policy = TriagePolicy.load(SHIPPED_POLICY)
    t0 = time.perf_counter()
    inputs = resolve_inputs(home, work, args)
    validated = inputs.validated
    if args.pile is not None:  # no-op when the landed pile is not larger
        validated = subsample_pile(validated, args.pile, args.seed)
    model, cfg, model_text, trained = resolve_model(home, args.model, args.scale, args.seed)
    for note in inputs.notes:
        print(f"set-up: {note}")
    print(f"model: {model_text}")

    # What the evidence stage reads: the calibration, test and pile rows of every site.
    frac = policy.calibration.calibration_fraction
    files: list[Path] = []
    sha: list[str] = []
    rows: dict[str, pd.DataFrame] = {}
    counts: dict[str, int] = dict.fromkeys((*SCORED, "train"), 0)
    for site, table in validated.items():
        split = triage_splits(table, calibration_fraction=frac)
        for s in counts:
            counts[s] += int((split == s).sum())
        rows[site] = table[split.isin(SCORED)]
        files += image_paths(rows[site], inputs.landing, STUDY)
        sha += rows[site]["sha256"].astype(str).tolist()
    expected = dict(zip(map(str, files), sha, strict=True))
    loader = ImageFileLoader(cfg.input_size, expected_sha256=expected)
    batch = args.batch_size or default_batch_size(choice)
    print(
        f"set-up done in {time.perf_counter() - t0:.0f} s; scoring {len(files):,} images: "
        + ", ".join(f"{counts[s]:,} {s}" for s in SCORED)
        + f" ({counts['train']:,} train rows not scored); policy {policy.policy_id} "
        f"v{policy.version}"
    )

    # Warm-up (oneDNN builds its kernels on the first calls), then the timed stages.
    kw: dict[str, Any] = dict(batch_size=batch, device=args.device, loader=loader)
    predict(model, cfg, files[:batch], output="logits", num_workers=0, **kw)
    naive_loop(model, cfg, files[:4], loader, choice.device)
    stages: dict[str, float] = {}
    progress = Progress()
    logits, stages["inference"], others = timed(
        lambda: predict(
            model, cfg, files, output="logits", num_workers=args.workers, progress=progress, **kw
        )
    )
    rate, inference_others = len(files) / stages["inference"], others
    workers = "study default" if args.workers is None else args.workers
    print(
        f"inference: {len(files):,} images in {stages['inference']:.1f} s = {rate:.1f} images/s "
        f"(predict, logits, batch {batch}, workers {workers}, files re-hashed; others "
        f"{others:.0%}); the {counts['train']:,} train rows the predictions asset also scores "
        f"would add ~{counts['train'] / rate:.0f} s at this rate (extrapolated)"
    )
    rng = np.random.default_rng(args.seed)
    pick = np.sort(rng.choice(len(files), min(args.naive, len(files)), replace=False))
    subset = [files[i] for i in pick]
    naive, naive_s, others = timed(lambda: naive_loop(model, cfg, subset, loader, choice.device))
    # The batched path again on the same subsample right after, under the same load: the naive
    # loop suffers more from other processes (a thread barrier per operator per image).
    _, near_s, near_others = timed(
        lambda: predict(model, cfg, subset, output="logits", num_workers=args.workers, **kw)
    )
    naive_rate, near_rate = pick.size / naive_s, pick.size / near_s
    print(
        f"baseline: naive per-image loop on a seeded subsample of {pick.size:,} of these images: "
        f"{naive_s:.1f} s = {naive_rate:.1f} images/s (others {others:.0%}); batched over all / "
        f"naive on the subsample = {rate / naive_rate:.2f}x; batched on the same subsample right "
        f"after: {near_rate:.1f} images/s (others {near_others:.0%}) = "
        f"{near_rate / naive_rate:.2f}x naive; max |logit - logit_naive| "
        f"{float(np.abs(logits[pick] - naive).max()):.1e}"
    )
    if not others < QUIET:
        print(
            f"  note: other processes used {others:.0%} of the CPUs during the naive loop; it "
            "slows down more than the batched path under contention, which inflates the ratios"
        )

    frames, start = {}, 0
    for site, table in validated.items():
        part = pd.DataFrame(np.nan, index=table.index, columns=list(LOGITS))
        part.loc[rows[site].index] = logits[start : start + len(rows[site])]
        start += len(rows[site])
        frames[site] = part.assign(image_id=table["image_id"].to_numpy())
    scored, stages["scored_table"], _ = timed(lambda: scored_table(validated, frames, policy))
    cert, stages["certify"], others = timed(lambda: certify_triage(scored, policy, seed=0))
    c = cert.certificate
    print(
        f"calibration + certificate: scored_table {stages['scored_table']:.2f} s + certify_triage "
        f"{stages['certify']:.2f} s (temperatures, certificate, flag, "
        f"{len(cert.subgroups)} subgroup rows, buckets of {len(cert.rows):,} studies, test "
        f"checks with {policy.calibration.n_boot} bootstrap draws; others {others:.0%})"
    )
    temp = (
        f"T = {cert.temperature.temperature:.3f}"
        if cert.temperature
        else f"not fitted ({cert.facts['temperature_not_fitted']})"
    )
    print(
        f"  {'' if trained else '(untrained network: meaningless) '}temperature {temp}; "
        f"auto-clear below {c.threshold}; buckets "
        f"{cert.rows['bucket'].value_counts().to_dict()}"
    )

    pile = cert.rows[cert.rows["split"] == "pile"]
    thr, stages["queue"], others = timed(lambda: simulate_throughput(pile, policy, seed=0))
    n_sim = (thr.n_pile + thr.n_inflow) * len(POLICIES)
    resampled = f" (resampled from {thr.n_landed:,} landed)" if thr.resampled else ""
    print(
        f"queue: {thr.n_pile:,} backlog{resampled} + {thr.n_inflow:,} inflow studies "
        f"({thr.inflow_days} days) x {len(POLICIES)} policies, {policy.workload.n_draws} truth "
        f"draws: {stages['queue']:.2f} s = {n_sim / stages['queue']:,.0f} studies simulated/s "
        f"(others {others:.0%})"
    )
    if args.queue_sub:
        queue_baseline(pile, policy, args.queue_sub, seed=0)

    total = sum(stages.values())
    print(
        f"total (inference + calibration/certificate + queue, set-up excluded): {total:.1f} s "
        f"= {len(files) / total:.1f} scored images/s end to end; "
        + ", ".join(f"{k} {v / total:.0%}" for k, v in stages.items())
    )
    if not inference_others < QUIET and torch.get_num_threads() >= (os.cpu_count() or 1):
        print(
            f"note: other processes used {inference_others:.0%} of the CPUs during inference while "
            f"torch ran {torch.get_num_threads()} threads on {os.cpu_count()} CPUs; a core held "
            "by another process stalls every operator's thread barrier: compare --threads "
            f"{max(1, (os.cpu_count() or 1) - 1)}"
        )
    print(f"end: {load_line()}")


def main() -> None:
    """Parse arguments, find or build the inputs, run the timed stages."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--home",
        type=Path,
        default=Path("var/full"),
        help="a home with a landed triage site (default var/full)",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        help="where to build what is missing (kept; default a temporary dir)",
    )
    parser.add_argument(
        "--scale",
        choices=sorted(TRIAGE_SCALES),
        default="full",
        help="scale to simulate when nothing is landed (default full)",
    )
    parser.add_argument(
        "--pile",
        type=int,
        default=None,
        help="pile size to simulate, or pile studies to score of a landed home",
    )
    parser.add_argument("--naive", type=int, default=300, help="images of the naive loop")
    parser.add_argument(
        "--queue-sub",
        type=int,
        default=2000,
        help="studies of the O(n^2) queue baseline (0: skip it)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader workers (default: the study's, 0 on the CPU)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per forward pass (default: the study's, 16 on the CPU)",
    )
    parser.add_argument(
        "--model", type=Path, default=None, help="a triage package (default: the newest in --home)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's, as the study)"
    )
    parser.add_argument("--device", choices=["cpu", "auto", "cuda"], default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.pile is not None and args.pile < 1:
        parser.error(f"--pile {args.pile}: expected a number of studies >= 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.work is not None:
        run(args.home, args.work, args)
        return
    with tempfile.TemporaryDirectory(prefix="bench_triage_pile_") as tmp:
        run(args.home, Path(tmp), args)


if __name__ == "__main__":
    main()
