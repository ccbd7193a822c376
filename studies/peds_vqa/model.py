"""peds_vqa model stage: the adult-pretrained base model, its LoRA tune on children, and the
answers of both to every question of a site.

Modes (``ModelSpec.mode``):

* embedded (default): a small vision-language model of a real Hugging Face class
  (``training.kind``: paligemma, llava or idefics3; :mod:`clinaudit.models.vlm`) is built here
  with a tokenizer trained here, pretrained on simulated ADULT chest films with yes/no questions
  and captions (:func:`~clinaudit.models.vlm.adult_data.adult_pretraining_pairs`), then LoRA-tuned
  (language model only; zero LoRA modules in the vision tower) on the reference site's
  ``train`` split. ``training.base_model`` (``--base-model PATH``) replaces the pretraining by a
  real PaliGemma / LLaVA / SmolVLM checkpoint read from a local directory (``local_files_only``;
  ``training.kind`` names its class). Both packages are kept under
  ``artifacts/models/peds_vqa/<fingerprint>/{base,tuned}/`` and reused when the settings and the
  training data are unchanged.
* ``package``: a folder with ``base/`` and ``tuned/`` VLM packages (format of
  :mod:`clinaudit.models.vlm.package`), both verified.

Vendor scores are refused: the controls, the localization maps and the latency need the model.
The answer is ``z = z_yes - z_no`` from one prefill forward (P(yes) = sigmoid(z)); the audit
recalibrates and thresholds it (evidence), so the model's own threshold is 0.5 on P(yes).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from clinaudit.audit.records import ModelRef
from clinaudit.audit.types import AuditInputError
from clinaudit.models.vlm.adult_data import adult_pretraining_pairs
from clinaudit.models.vlm.answer import score_questions
from clinaudit.models.vlm.config import CAPTION_PROMPT, VlmConfig
from clinaudit.models.vlm.package import (
    CARD_FILE,
    LoadedVlm,
    VlmCard,
    load_vlm_package,
    save_vlm_package,
    vlm_package_sha256,
)
from clinaudit.models.vlm.registry import create_vlm, load_local_vlm, local_vlm_kind
from clinaudit.models.vlm.tokenizer import train_vqa_tokenizer
from clinaudit.models.vlm.train import TrainSettings, lora_finetune, merge_lora, pretrain_base
from clinaudit.sources.peds_simulator import SITE
from clinaudit.studies.base import ModelSpec, RunDirs

from .images import image_loader
from .policy import PedsVqaPolicy
from .questions import TEMPLATES, assign_splits, scored_questions

__all__ = [
    "KIND",
    "SCALE_TRAINING",
    "TRAINING_KEYS",
    "answer_plan",
    "load_audited",
    "model_fingerprint",
    "predict_site",
    "resolve_model",
]

KIND = "vlm_yesno"
STUDY = "peds_vqa"
MODELS = ("base", "tuned")
#: Settings of the embedded model a run may change (``ModelSpec.training``).
TRAINING_KEYS = (
    "scale", "kind", "adult_images", "pretrain_epochs", "lora_epochs", "lora_rank",
    "lora_templates", "image_size", "num_threads", "base_model", "batch_images", "lr",
    "lora_lr", "patch_size", "vision_hidden", "vision_layers", "text_hidden", "text_layers",
    "lora_mlp",
)  # fmt: skip
#: Settings that size the embedded model (``VlmConfig`` fields).
_ARCH_KEYS = ("patch_size", "vision_hidden", "vision_layers", "text_hidden", "text_layers")
#: Per demo scale; anything not named takes :data:`DEFAULTS`.
SCALE_TRAINING: dict[str, dict[str, Any]] = {
    "tiny": {"adult_images": 600, "pretrain_epochs": 2, "lora_epochs": 2},
    "demo": {},
    "full": {"adult_images": 8000, "lora_epochs": 6},
}
#: The demo recipe (measured on 2 shared cores: docs/architecture.md, "Study peds_vqa"): small
#: batches for enough optimiser steps, 16-px patches (a 4 x 4 map grid at 64 px).
DEFAULTS: dict[str, Any] = {
    "kind": "paligemma",
    "adult_images": 2400,
    "pretrain_epochs": 4,
    "lora_epochs": 8,
    "lora_rank": 8,
    "lora_templates": 2,
    "lora_mlp": False,
    "image_size": 64,
    "num_threads": 2,
    "base_model": None,
    "batch_images": 8,
    "lr": 1e-3,
    "lora_lr": 3e-3,
    "patch_size": 16,
    "vision_hidden": 64,
    "vision_layers": 2,
    "text_hidden": 128,
    "text_layers": 2,
}
#: Settings of the pretraining here, unused (and not reported) with a local ``base_model``.
_PRETRAIN_KEYS = ("adult_images", "pretrain_epochs", "lr", "image_size", *_ARCH_KEYS)
_INTENDED_USE = (
    "Research evaluation of yes/no questions on pediatric chest X-rays; no clinical use. "
)


def _settings(spec: ModelSpec) -> dict[str, Any]:
    training = spec.training_settings(STUDY, TRAINING_KEYS)
    merged = {**DEFAULTS, **SCALE_TRAINING.get(str(training.get("scale")), {}), **training}
    merged.pop("scale", None)
    if merged["kind"] not in ("paligemma", "llava", "idefics3"):
        raise AuditInputError(
            "training.kind", repr(merged["kind"]), "paligemma, llava or idefics3",
            "name the Hugging Face class of the model",
        )  # fmt: skip
    if merged["base_model"]:
        merged["base_model"] = str(Path(str(merged["base_model"])).resolve())
        merged["kind"] = _checkpoint_kind(merged["base_model"], training.get("kind"))
    if merged["base_model"]:  # no pretraining here; sizes are the checkpoint's
        for key in _PRETRAIN_KEYS:
            merged.pop(key)
    for key in ("adult_images", "pretrain_epochs", "lora_epochs", "lora_rank", "lora_templates",
                "image_size", "num_threads", "batch_images", *_ARCH_KEYS):  # fmt: skip
        if key in merged:
            merged[key] = int(merged[key])
    for key in ("lr", "lora_lr"):
        if key in merged:
            merged[key] = float(merged[key])
    merged["lora_mlp"] = bool(merged["lora_mlp"])
    return merged


def _refuse(spec: ModelSpec) -> None:
    if spec.mode == "scores":
        raise AuditInputError(
            "scores", str(spec.scores), "a VLM package folder (base/ and tuned/) or the embedded "
            "model", "peds_vqa asks the model controls, paraphrases and localization questions "
            "itself; pass --model DIR, not a scores file",
        )  # fmt: skip
    if spec.threshold is not None or spec.thresholds:
        raise AuditInputError(
            "threshold", repr(spec.threshold or spec.thresholds),
            "no threshold: the audit fixes each category's threshold on the validation split",
            "unset --threshold / --thresholds",
        )  # fmt: skip


def _checkpoint_kind(path: str, asked: object) -> str:
    """The adapter kind of the local checkpoint (its config.json's model_type); a ``kind`` the
    settings name must agree with it."""
    try:
        kind = local_vlm_kind(path)
    except (FileNotFoundError, ValueError) as exc:
        raise AuditInputError(
            "training.base_model", path, "a local PaliGemma, LLaVA or Idefics3 / SmolVLM "
            "checkpoint folder (save_pretrained: config.json, weights, tokenizer)", str(exc),
        ) from None  # fmt: skip
    if asked is not None and asked != kind:
        raise AuditInputError(
            "training.kind", f"{asked!r} with a base model whose config.json says {kind!r}",
            f"kind {kind!r} (or no kind: it is read from the checkpoint)",
            "drop training.kind or give the checkpoint of that class",
        )  # fmt: skip
    return kind


def _checkpoint_files(s: dict[str, Any]) -> dict[str, list[int]]:
    """Size and modification time of every file of the local base checkpoint (cheap to read at
    every fingerprint), so that a checkpoint replaced in the same folder is not mistaken for the
    one a saved model was tuned from; empty without ``base_model``."""
    if not s["base_model"]:
        return {}
    root = Path(s["base_model"])
    return {
        str(f.relative_to(root)): [f.stat().st_size, f.stat().st_mtime_ns]
        for f in sorted(root.rglob("*"))
        if f.is_file()
    }


def model_fingerprint(spec: ModelSpec) -> tuple[str, dict[str, Any]]:
    """Data version of what ``spec`` points at (see ``Study.model_fingerprint``)."""
    _refuse(spec)
    if spec.mode == "package":
        root = Path(str(spec.package_dir)).resolve()
        shas = {m: vlm_package_sha256(root / m) for m in MODELS}
        doc = json.dumps(shas, sort_keys=True)
        return hashlib.sha256(doc.encode()).hexdigest(), {"mode": "package", "packages": shas}
    s = _settings(spec)
    doc = json.dumps({"training": s, "seed": spec.seed}, sort_keys=True)
    meta = {"mode": spec.mode, "training": json.loads(doc)}
    if s["base_model"]:
        doc += json.dumps(_checkpoint_files(s), sort_keys=True)
    return "embedded-spec:" + hashlib.sha256(doc.encode()).hexdigest(), meta


def answer_plan(policy: PedsVqaPolicy) -> dict[str, Any]:
    """What the predictions stage needs of the policy (splits and question families), recorded
    in the model's facts; the evidence stage refuses answers made under another plan."""
    ev = policy.evaluation_set
    return {
        "shares": policy.splits.shares(),
        "salt": policy.splits.salt,
        "categories": list(policy.categories),
        "paraphrases": int(ev.paraphrases),
        "blanks": int(ev.blank_controls),
    }


def _split_table(table: pd.DataFrame, plan: dict[str, Any]) -> pd.DataFrame:
    return table.assign(split=assign_splits(table, plan["shares"], plan["salt"]))


def _threads(n: int) -> Callable[[], None]:
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    return lambda: torch.set_num_threads(before)


def _lora_pairs(
    train: pd.DataFrame, categories: list[str], n_templates: int, seed: int
) -> tuple[list[list[str]], list[list[str]]]:
    """One question per image and category, its wording drawn from the first ``n_templates``
    templates (the others stay unseen in tuning, for the paraphrase check)."""
    rng = np.random.default_rng([seed, 0x10A])
    questions, answers = [], []
    for _, row in train.iterrows():
        qs, ans = [], []
        for cat in categories:
            family = TEMPLATES[cat][: max(1, min(n_templates, len(TEMPLATES[cat])))]
            qs.append(family[int(rng.integers(len(family)))])
            ans.append("yes" if int(row[cat]) else "no")
        questions.append(qs)
        answers.append(ans)
    return questions, answers


def _data_sha256(train: pd.DataFrame, categories: list[str]) -> str:
    body = train[["image_sha256", *categories]].sort_values("image_sha256").to_csv(index=False)
    return hashlib.sha256(body.encode()).hexdigest()


def _card(
    description: str, lineage: dict[str, Any], checkpoint: str | None, **training: Any
) -> VlmCard:
    import datetime as dt

    origin = (
        f"Read from the local checkpoint {checkpoint}"
        + ("; LoRA-tuned here on the pediatric split" if training.get("lora") else "")
        if checkpoint
        else "Trained here by clinaudit on simulated data"
    )
    return VlmCard(
        vendor="clinaudit (embedded, trained here)"
        if checkpoint is None
        else f"local checkpoint {checkpoint} (tuned by clinaudit)",
        intended_use=_INTENDED_USE + origin,
        description=description,
        created_utc=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        lineage=lineage,
        **training,
    )


def _train(
    table: pd.DataFrame, spec: ModelSpec, policy: PedsVqaPolicy, dirs: RunDirs, log: Callable
) -> tuple[Path, bool, dict[str, float]]:
    s, plan = _settings(spec), answer_plan(policy)
    cats = list(policy.categories)
    train = _split_table(table, plan)
    train = train[train["split"] == "train"].reset_index(drop=True)
    if len(train) < 8 or any(train[c].nunique() < 2 for c in cats):
        raise AuditInputError(
            "training images", f"{len(train)} in the train split",
            ">= 8 images with both answers of every category",
            "land more pediatric images at the reference site, or raise splits.train",
        )  # fmt: skip
    what = {"settings": s, "seed": spec.seed, "categories": cats,
            "data": _data_sha256(train, cats), "plan": plan}  # fmt: skip
    if s["base_model"]:
        what["checkpoint"] = _checkpoint_files(s)
    doc = json.dumps(what, sort_keys=True)
    root = dirs.artifacts / "models" / STUDY / hashlib.sha256(doc.encode()).hexdigest()[:16]
    if all((root / m / CARD_FILE).is_file() for m in MODELS):
        log(f"reusing the base and tuned models trained with the same settings and data: {root}")
        return root, True, {}
    restore = _threads(s["num_threads"])
    seconds: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        if s["base_model"]:
            adapter, model = load_local_vlm(s["kind"], s["base_model"])
            pretraining: dict[str, Any] = {"source": s["base_model"], "local_files_only": True}
            log(f"base model {s['kind']} read from {s['base_model']} (no pretraining here)")
        else:
            images, qs, ans, caps = adult_pretraining_pairs(
                s["adult_images"], size=s["image_size"], seed=spec.seed, workers=1
            )
            texts = [q for fam in TEMPLATES.values() for q in fam]
            texts += [q for row in qs for q in row] + caps + [CAPTION_PROMPT, "yes", "no"]
            tokenizer = train_vqa_tokenizer(texts, vocab_size=512)
            config = VlmConfig(
                s["kind"], vocab_size=len(tokenizer), image_size=s["image_size"],
                **{k: s[k] for k in _ARCH_KEYS},
            )  # fmt: skip
            adapter, model = create_vlm(s["kind"], config, tokenizer, seed=spec.seed)
            log(f"pretraining a {s['kind']} model on {len(images)} simulated adult films "
                f"({s['pretrain_epochs']} epochs)")  # fmt: skip
            settings = TrainSettings(
                epochs=s["pretrain_epochs"], batch_images=s["batch_images"], lr=s["lr"]
            )
            result = pretrain_base(
                adapter, model, tokenizer, images, qs, ans, captions=caps, settings=settings,
                seed=spec.seed, log=log,
            )  # fmt: skip
            pretraining = {**result.summary(), "data": "simulated adult chest films (clinaudit "
                           "renderer), yes/no questions and captions"}  # fmt: skip
        seconds["pretrain"] = time.perf_counter() - t0
        lineage = {"pretrained_on": pretraining.get("data", pretraining.get("source"))}
        save_vlm_package(
            root / "base", adapter, model,
            _card("base model (adult pretraining), zero-shot on children" if not s["base_model"]
                  else "base model (local checkpoint, as read), zero-shot on children", lineage,
                  s["base_model"], pretraining=pretraining),
            overwrite=True,
        )  # fmt: skip
        t1 = time.perf_counter()
        load = image_loader(dirs.landing / STUDY, SITE, adapter.config.image_size)
        pixels = np.stack([load(r) for r in train.itertuples()])
        qs, ans = _lora_pairs(train, cats, s["lora_templates"], spec.seed)
        log(f"LoRA-tuning on {len(train)} pediatric training images ({s['lora_epochs']} epochs, "
            f"rank {s['lora_rank']})")  # fmt: skip
        tuned, lora = lora_finetune(
            adapter, model, adapter.tokenizer, pixels, qs, ans, rank=s["lora_rank"],
            alpha=2.0 * s["lora_rank"], mlp=s["lora_mlp"],
            settings=TrainSettings(epochs=s["lora_epochs"], batch_images=s["batch_images"],
                                   lr=s["lora_lr"]),
            seed=spec.seed, log=log,
        )  # fmt: skip
        merged = merge_lora(tuned)
        seconds["lora"] = time.perf_counter() - t1
        save_vlm_package(
            root / "tuned", adapter, merged,
            _card("LoRA-tuned on the pediatric training split (merged)",
                  {**lineage, "tuned_on": "pediatric train split", "n_train": len(train),
                   "data_sha256": json.loads(doc)["data"]},
                  s["base_model"], pretraining=pretraining, lora=lora.summary()),
            overwrite=True,
        )  # fmt: skip
    finally:
        restore()
    return root, False, seconds


def load_audited(model: ModelRef) -> dict[str, LoadedVlm]:
    """The base and tuned packages of ``model``, verified against the audited hashes."""
    loaded = {m: load_vlm_package(Path(model.facts["packages"][m]["path"])) for m in MODELS}
    changed = [m for m, p in loaded.items() if p.sha256 != model.facts["packages"][m]["sha256"]]
    if changed:
        raise ValueError(
            f"VLM packages {changed} differ from the audited ones ({model.identity[:12]}); "
            "re-materialize peds_vqa/model"
        )
    return loaded


def resolve_model(
    spec: ModelSpec,
    *,
    reference: pd.DataFrame | None,
    dirs: RunDirs,
    log: Callable[[str], None],
    policy: PedsVqaPolicy,
) -> ModelRef:
    """Verify the packages, or train (or reuse) the embedded base and tuned models."""
    _refuse(spec)
    reused, seconds = False, {}
    if spec.mode == "package":
        root = Path(str(spec.package_dir)).resolve()
        source = f"the VLM packages supplied at {root}"
    else:
        if reference is None or not len(reference):
            raise FileNotFoundError(
                "the reference site has no ingested images; land its pediatric batches "
                "(docs/formats.md, layout peds_vindr) and materialize peds_vqa/validated, or "
                "audit VLM packages (--model DIR with base/ and tuned/)"
            )
        root, reused, seconds = _train(reference, spec, policy, dirs, log)
        base_model = _settings(spec)["base_model"]
        source = (
            f"base read from the local checkpoint {base_model}, LoRA here on the pediatric "
            "train split"
            if base_model
            else "trained here: adult pretraining (simulated), LoRA on the pediatric train split"
        )
    loaded = {m: load_vlm_package(root / m) for m in MODELS}
    shas = {m: p.sha256 for m, p in loaded.items()}
    identity = hashlib.sha256(json.dumps(shas, sort_keys=True).encode()).hexdigest()
    tuned = loaded["tuned"]
    log(f"base {shas['base'][:12]} and tuned {shas['tuned'][:12]} models: {source}")
    return ModelRef(
        study=STUDY,
        kind=KIND,
        mode="embedded" if spec.mode == "embedded" else "package",
        identity=identity,
        source=str(root),
        targets=tuple(policy.categories),
        thresholds={c: 0.5 for c in policy.categories},
        threshold_source=(
            "the model's own answer is yes when P(yes) >= 0.5; the audit recalibrates P(yes) "
            "and fixes each category's operating threshold on the validation split"
        ),
        card={
            "model": f"{type(tuned.model).__name__} ({tuned.config.kind}), LoRA-tuned",
            "vendor": tuned.card.vendor,
            "intended use": tuned.card.intended_use,
            "categories": ", ".join(policy.categories),
            "source": source,
            "image size": f"{tuned.config.image_size} px, patch {tuned.config.patch_size}",
        },
        facts={
            "packages": {m: {"sha256": p.sha256, "path": str(p.path)} for m, p in loaded.items()},
            "config": tuned.config.to_dict(),
            "pretraining": dict(tuned.card.pretraining or {}),
            "lora": dict(tuned.card.lora or {}),
            "settings": _settings(spec) if spec.mode == "embedded" else {},
            "plan": answer_plan(policy),
            "policy_sha256": policy.sha256,
            "reused": reused,
            "seconds": {k: round(v, 1) for k, v in seconds.items()},
            "seed": spec.seed,
        },
    )


def predict_site(
    model: ModelRef,
    table: pd.DataFrame,
    *,
    site: str,
    spec: ModelSpec,
    dirs: RunDirs,
    log: Callable[[str], None],
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``z = z_yes - z_no`` of the base and the tuned model for every question of one site.

    Returns a long table: the columns of :func:`~.questions.scored_questions`, then ``model``
    (``base`` | ``tuned``), ``z`` and ``model_sha256``.
    """
    plan = model.facts["plan"]
    loaded = load_audited(model)
    split = _split_table(table, plan)
    questions = scored_questions(
        split, plan["categories"], paraphrases=plan["paraphrases"], blanks=plan["blanks"]
    )
    size = loaded["tuned"].config.image_size
    load = image_loader(dirs.landing / STUDY, site, size)
    rows = split.set_index(split["batch"].astype(str) + "/" + split["file"].astype(str))
    images = {}
    for key in questions["image_key"].unique():
        images[key] = load(rows.loc[key]) if key in rows.index else load.blank(key)
    items = list(zip(questions["image_key"], questions["question"], strict=True))
    frames, t0 = [], time.perf_counter()
    restore = _threads(int(model.facts.get("settings", {}).get("num_threads", 2) or 2))
    try:
        for name in MODELS:
            pkg = loaded[name]
            z = score_questions(
                pkg.adapter, pkg.model, images, items, batch_size=spec.batch_size or 64,
                device="cpu" if spec.device == "auto" else spec.device,
            )  # fmt: skip
            frames.append(questions.assign(model=name, z=z))
    finally:
        restore()
    out = pd.concat(frames, ignore_index=True)
    out["model_sha256"] = model.identity
    seconds = time.perf_counter() - t0
    log(f"{site}: {len(questions)} questions x {len(MODELS)} models in {seconds:.1f} s")
    return out, {
        "site": site,
        "n_images": len(images),
        "n_questions": len(questions),
        "seconds": round(seconds, 1),
    }
