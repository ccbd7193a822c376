"""multimodal_triage model stage: the arms (deployed fusion arm and its baselines) and their
category probabilities per clinic.

Two modes (``ModelSpec.mode``):

* ``package``: a folder of arm packages (``<dir>/<arm>/model_card.json``, format
  ``clinaudit.multimodal_model/v1``), or one package (then it must be the deployed arm and the
  policy may name no baseline it lacks): every arm the policy needs is verified on load, labels
  checked against the policy's categories. A missing arm is an error naming it and the layout.
* embedded (default): every arm the policy names is trained here, from random weights, under the
  same budget (:func:`clinaudit.models.multimodal_train.train_arms`) on the development clinics'
  ``train`` split (epoch selection and the late-fusion weights on ``validation``), with a note
  tokenizer trained locally on the training notes only. Packages are kept under
  ``artifacts/models/multimodal_triage/<fingerprint>/<arm>/`` and reused when the training
  settings and the training data (image hashes, labels, splits) are unchanged.

Vendor scores are refused: the deferral score and the note-removal check need the arms
themselves.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clinaudit.audit.records import ModelRef
from clinaudit.audit.types import AuditInputError
from clinaudit.models.multimodal_config import MultimodalConfig
from clinaudit.models.multimodal_data import PairedData, prepare_pairs, remove_notes
from clinaudit.models.multimodal_eval import predict_proba
from clinaudit.models.multimodal_package import (
    CARD_FILE,
    LoadedMultimodal,
    MultimodalCard,
    load_multimodal_package,
    multimodal_package_sha256,
    save_multimodal_package,
    training_summary,
)
from clinaudit.models.multimodal_train import train_arms
from clinaudit.models.multimodal_train_spec import MultimodalTrainConfig
from clinaudit.models.text_tokenizer import train_note_tokenizer
from clinaudit.sources.landing import image_paths
from clinaudit.sources.rgb_images import decode_rgb
from clinaudit.studies.base import ModelSpec, RunDirs

from .policy import MultimodalPolicy
from .splits import assign_splits

__all__ = [
    "KIND",
    "LANDING_DIR",
    "PROB_PREFIX",
    "SCALE_TRAINING",
    "TRAINING_KEYS",
    "model_fingerprint",
    "predict_clinic",
    "resolve_model",
]

KIND = "image_text_multiclass"
LANDING_DIR = "multimodal_triage"
PROB_PREFIX = "p_"
#: Settings of the embedded arms a run may change (``ModelSpec.training``).
TRAINING_KEYS = ("scale", "epochs", "batch_size", "lr", "num_threads", "image_size", "vocab_size")
#: Per demo scale (defaults: ``MultimodalTrainConfig``, 64 px, a 1,000-piece vocabulary).
#: ``tiny`` (tests): 3 epochs of 32 pairs. ``demo``: the defaults, one thread (on a shared 2-core
#: machine two threads wait for each other: ``bench/bench_multimodal_train.py``).
SCALE_TRAINING: dict[str, dict[str, Any]] = {
    "tiny": {"epochs": 3, "batch_size": 32, "num_threads": 1, "vocab_size": 300},
    "demo": {"num_threads": 1},
    "full": {"num_threads": 1, "epochs": 10},
}
_INTENDED_USE = (
    "Research audit of image + note skin-lesion classification with clinician review; trained "
    "here on the development clinics of a clinaudit study"
)


def _settings(spec: ModelSpec) -> dict[str, Any]:
    training = spec.training_settings(LANDING_DIR, TRAINING_KEYS)
    merged = {**SCALE_TRAINING.get(str(training.get("scale")), {}), **training}
    return {
        "epochs": int(merged.get("epochs", MultimodalTrainConfig.epochs)),
        "batch_size": int(merged.get("batch_size", MultimodalTrainConfig.batch_size)),
        "lr": float(merged.get("lr", MultimodalTrainConfig.lr)),
        "num_threads": merged.get("num_threads"),
        "image_size": int(merged.get("image_size", 64)),
        "vocab_size": int(merged.get("vocab_size", 1000)),
    }


def train_config(spec: ModelSpec) -> MultimodalTrainConfig:
    """The training settings of every arm (the same budget for each)."""
    s = _settings(spec)
    return MultimodalTrainConfig(
        epochs=s["epochs"], batch_size=s["batch_size"], lr=s["lr"], seed=spec.seed,
        num_threads=s["num_threads"], device=spec.device,  # type: ignore[arg-type]
        precision=spec.precision,  # type: ignore[arg-type]
    )  # fmt: skip


def _refuse(spec: ModelSpec) -> None:
    if spec.mode == "scores":
        raise AuditInputError(
            "scores", str(spec.scores), "arm packages or the embedded arms",
            "multimodal_triage scores every arm with notes removed and fits its review score on "
            "the arms' outputs; pass a folder of arm packages (--model DIR), not a scores file",
        )  # fmt: skip
    if spec.threshold is not None or spec.thresholds:
        raise AuditInputError(
            "threshold", repr(spec.threshold or spec.thresholds),
            "no operating threshold: the category is the most probable one and the deferral "
            "threshold is certified by the audit", "unset --threshold / --thresholds",
        )  # fmt: skip


def _arm_dirs(root: Path) -> dict[str, Path]:
    if (root / CARD_FILE).is_file():
        arm = json.loads((root / CARD_FILE).read_text())["arm"]
        return {str(arm): root}
    return {p.name: p for p in sorted(root.iterdir()) if (p / CARD_FILE).is_file()}


def model_fingerprint(spec: ModelSpec) -> tuple[str, dict[str, Any]]:
    """Data version of what ``spec`` points at (see ``Study.model_fingerprint``)."""
    _refuse(spec)
    if spec.mode == "package":
        root = Path(str(spec.package_dir)).resolve()
        arms = {a: multimodal_package_sha256(p) for a, p in _arm_dirs(root).items()}
        doc = json.dumps(arms, sort_keys=True)
        meta = {"mode": spec.mode, "package_dir": str(root), "arms": arms}
        return hashlib.sha256(doc.encode()).hexdigest(), meta
    doc = json.dumps({"training": _settings(spec), "seed": spec.seed}, sort_keys=True)
    meta = {"mode": spec.mode, "training": json.loads(doc)}
    return "embedded-spec:" + hashlib.sha256(doc.encode()).hexdigest(), meta


class VerifiedRgbLoader:
    """Read a landed photo, refuse it if its bytes changed since ingest, decode it as RGB."""

    def __init__(self, expected_sha256: dict[str, str]) -> None:
        self.expected = expected_sha256

    def __call__(self, path: Any) -> np.ndarray:
        data = Path(path).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != self.expected[str(path)]:
            raise ValueError(
                f"{path}: sha256 {digest[:12]} differs from the ingested "
                f"{self.expected[str(path)][:12]}; landed data was changed after ingest - "
                "re-land the batch as a new batch and re-materialize validated"
            )
        return decode_rgb(data, name=Path(path).name)


def _pairs(
    table: pd.DataFrame,
    dirs: RunDirs,
    tokenizer: Any,
    config: MultimodalConfig,
    *,
    with_labels: bool = True,
) -> PairedData:
    files = image_paths(table, dirs.landing, LANDING_DIR)
    loader = VerifiedRgbLoader(dict(zip(map(str, files), table["sha256"], strict=True)))
    codes = table["category"].map({c: i for i, c in enumerate(config.labels)})
    return prepare_pairs(
        [str(f) for f in files], table["note"].tolist(), tokenizer, config,
        labels=codes.to_numpy(np.int64) if with_labels else None, loader=loader,
    )  # fmt: skip


def _data_sha256(table: pd.DataFrame) -> str:
    cols = ["sha256", "category", "split", "note"]
    body = table[cols].sort_values(["sha256", "split"], kind="stable").to_csv(index=False)
    return hashlib.sha256(body.encode()).hexdigest()


def development_table(reference: pd.DataFrame, policy: MultimodalPolicy) -> pd.DataFrame:
    """The development clinics' pairs with their ``split`` (held-out clinic rows dropped);
    refuses categories the policy does not list."""
    s = policy.splits
    table = reference.assign(
        split=assign_splits(
            reference,
            held_out=policy.held_out_clinic,
            shares=(s.train, s.validation, s.calibration),
        )
    )
    table = table[table["split"] != "held_out"].reset_index(drop=True)
    stray = sorted(set(table["category"]) - set(policy.labels))
    if stray:
        raise AuditInputError(
            "category", repr(stray), f"one of the policy's categories {list(policy.labels)}",
            "add the categories to categories.labels in the policy, or land only those",
        )  # fmt: skip
    return table


def _load_arms(
    dirs_by_arm: dict[str, Path], needed: Sequence[str], labels: Sequence[str]
) -> dict[str, LoadedMultimodal]:
    missing = [a for a in needed if a not in dirs_by_arm]
    if missing:
        raise FileNotFoundError(
            f"arm packages {missing} are missing (found {sorted(dirs_by_arm)}); the policy's "
            "deployed arm and baselines must each be a package <dir>/<arm>/model_card.json "
            "(docs/model_package.md), or set model.baselines in the policy to the arms supplied"
        )
    return {a: load_multimodal_package(dirs_by_arm[a], expected_labels=labels) for a in needed}


def _identity(loaded: dict[str, LoadedMultimodal]) -> str:
    doc = json.dumps({a: p.sha256 for a, p in sorted(loaded.items())}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()


def _train(
    table: pd.DataFrame, spec: ModelSpec, policy: MultimodalPolicy, dirs: RunDirs, log: Callable
) -> tuple[Path, bool, float]:
    """Train (or reuse) every arm the policy needs; returns the folder, reuse, seconds."""
    s, cfg = _settings(spec), train_config(spec)
    train, val = table[table["split"] == "train"], table[table["split"] == "validation"]
    if len(train) < 2 * cfg.batch_size or len(val) < len(policy.labels):
        raise AuditInputError(
            "development pairs", f"{len(train)} train / {len(val)} validation",
            f">= {2 * cfg.batch_size} train and >= {len(policy.labels)} validation pairs",
            "land more development clinics' pairs, or lower the batch size",
        )  # fmt: skip
    doc = json.dumps(
        {
            "settings": s,
            "config": dataclasses.asdict(cfg),
            "arms": policy.model.arms,
            "labels": policy.labels,
            "data": _data_sha256(pd.concat([train, val])),
        },
        sort_keys=True,
        default=str,
    )
    root = dirs.artifacts / "models" / LANDING_DIR / hashlib.sha256(doc.encode()).hexdigest()[:16]
    if all((root / a / CARD_FILE).is_file() for a in policy.model.arms):
        log(f"reusing the arms trained with the same settings and data: {root}")
        return root, True, 0.0
    t0 = time.perf_counter()
    tokenizer = train_note_tokenizer(train["note"].tolist(), vocab_size=s["vocab_size"])
    config = MultimodalConfig.for_tokenizer(tokenizer, policy.labels, image_size=s["image_size"])
    train_pairs, val_pairs = (_pairs(t, dirs, tokenizer, config) for t in (train, val))
    log(
        f"training {list(policy.model.arms)} on {len(train)} pairs ({len(val)} validation), "
        f"{cfg.epochs} epochs x {cfg.batch_size} pairs, {s['image_size']} px"
    )
    results = train_arms(
        train_pairs, val_pairs, config, cfg, arms=policy.model.arms,
        progress=lambda arm, e: log(f"{arm} epoch {e.epoch}: val loss {e.val_loss:.3f}"),
    )  # fmt: skip
    created = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    lineage = {
        "trained_on": "development clinics, train split (validation: epochs, late fusion)",
        "clinics": sorted(map(str, train["site"].unique())),
        "n_train": len(train),
        "n_validation": len(val),
        "data_sha256": json.loads(doc)["data"],
    }
    for arm in policy.model.arms:
        save_multimodal_package(
            root / arm, arm, results[arm].model, config, tokenizer,
            MultimodalCard(
                vendor="clinaudit (embedded, trained here)", intended_use=_INTENDED_USE,
                description=f"{arm} arm of the multimodal_triage audit", created_utc=created,
                training=training_summary(results[arm]), lineage=lineage,
            ),
            overwrite=True,
        )  # fmt: skip
    return root, False, time.perf_counter() - t0


def resolve_model(
    spec: ModelSpec,
    *,
    reference: pd.DataFrame | None,
    dirs: RunDirs,
    log: Callable[[str], None],
    policy: Any,
) -> ModelRef:
    """Verify the arm packages, or train (or reuse) the embedded arms (module docstring)."""
    _refuse(spec)
    if not isinstance(policy, MultimodalPolicy):
        raise AuditInputError("policy", type(policy).__name__, "a MultimodalPolicy", "configure it")
    needed, labels = policy.model.arms, policy.labels
    reused, seconds = False, 0.0
    if spec.mode == "package":
        root = Path(str(spec.package_dir)).resolve()
        source = f"the arm packages supplied at {root}"
    else:
        if reference is None or not len(reference):
            raise FileNotFoundError(
                "no development clinic is ingested; land the development clinics' pairs "
                "(docs/formats.md) and materialize multimodal_triage/validated, or audit arm "
                "packages (--model DIR)"
            )
        table = development_table(reference, policy)
        root, reused, seconds = _train(table, spec, policy, dirs, log)
        source = "arms trained here on the development clinics (same budget per arm)"
    loaded = _load_arms(_arm_dirs(root), needed, labels)
    identity = _identity(loaded)
    cards = {a: p.card for a, p in loaded.items()}
    training = {a: dict(c.training) for a, c in cards.items() if c.training}
    log(f"arms {list(loaded)} ({identity[:12]}): {source}")
    return ModelRef(
        study=LANDING_DIR,
        kind=KIND,
        mode="embedded" if spec.mode == "embedded" else "package",
        identity=identity,
        source=str(root),
        targets=(),
        thresholds={},
        threshold_source=(
            "none: the output is the most probable category; the deferral threshold is "
            "certified by the audit"
        ),
        card={
            "model": f"{policy.model.deployed_arm} (deployed) with baselines "
            + ", ".join(policy.model.baselines),
            "categories": ", ".join(labels),
            "source": source,
            "vendor": cards[policy.model.deployed_arm].vendor,
        },
        facts={
            "arms": {a: {"sha256": p.sha256, "path": str(p.path)} for a, p in loaded.items()},
            "deployed_arm": policy.model.deployed_arm,
            "config": loaded[policy.model.deployed_arm].config.to_dict(),
            "training": training,
            "settings": _settings(spec) if spec.mode == "embedded" else {},
            "lineage": dict(cards[policy.model.deployed_arm].lineage or {}),
            "note_removal": [0.0, *policy.model.note_removal],
            "reused": reused,
            "train_seconds_total": round(seconds, 1),
            "seed": spec.seed,
        },
    )


def predict_clinic(
    model: ModelRef,
    table: pd.DataFrame,
    *,
    clinic: str,
    spec: ModelSpec,
    dirs: RunDirs,
    log: Callable[[str], None],
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Category probabilities of every pair of one clinic, per arm and share of notes removed.

    Returns a long table: ``image_id, arm, notes_removed, p_<category>..., model_sha256``
    (``notes_removed`` 0 is the pairs as landed; the others blank a seeded, nested share of the
    present notes, :func:`~clinaudit.models.multimodal_data.remove_notes`).
    """
    arms = model.facts["arms"]
    loaded = {a: load_multimodal_package(Path(v["path"])) for a, v in arms.items()}
    changed = [a for a, p in loaded.items() if p.sha256 != arms[a]["sha256"]]
    if changed or _identity(loaded) != model.identity:
        raise ValueError(
            f"arm packages {changed or list(arms)} differ from the audited ones "
            f"({model.identity[:12]}); re-materialize multimodal_triage/model"
        )
    fractions = [float(f) for f in model.facts["note_removal"]]
    frames, t0 = [], time.perf_counter()
    pairs_by_tokenizer: dict[str, PairedData] = {}
    for arm, pkg in loaded.items():
        labels = pkg.config.labels
        if pkg.tokenizer_sha256 not in pairs_by_tokenizer:
            pairs_by_tokenizer[pkg.tokenizer_sha256] = _pairs(
                table, dirs, pkg.tokenizer, pkg.config, with_labels=False
            )
        data = pairs_by_tokenizer[pkg.tokenizer_sha256]
        for f in fractions:
            probs = predict_proba(
                pkg.model, remove_notes(data, f, seed=spec.seed) if f else data, pkg.config,
                device=spec.device,  # type: ignore[arg-type]
                batch_size=spec.batch_size or 256,
            )  # fmt: skip
            frame = pd.DataFrame(probs, columns=[f"{PROB_PREFIX}{c}" for c in labels])
            frame.insert(0, "notes_removed", f)
            frame.insert(0, "arm", arm)
            frame.insert(0, "image_id", table["image_id"].to_numpy())
            frames.append(frame)
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    out["model_sha256"] = model.identity
    seconds = time.perf_counter() - t0
    log(f"{clinic}: {len(table)} pairs x {len(loaded)} arms x {len(fractions)} note shares "
        f"scored in {seconds:.1f} s")  # fmt: skip
    return out, {
        "clinic": clinic,
        "n_pairs": len(table),
        "arms": list(loaded),
        "seconds": round(seconds, 1),
        "seconds_per_pair_per_arm": round(seconds / max(1, len(table) * len(loaded)), 5),
    }
