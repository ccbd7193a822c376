"""peds_vqa localization evidence: where the tuned model looks when it answers yes correctly.

For every true-positive answer of the evaluation set (answer yes, recalibrated P(yes) at or above
the category's threshold, a ground-truth box present) two maps are made on the tuned model:
Grad-CAM of ``z_yes - z_no`` on the vision tower's last layer, and attention rollout over the
vision tower (question-agnostic: where the encoder mixes information, a weaker check). Each is
scored against the category's union box (pointing hit, energy in box, box IoU;
:mod:`clinaudit.audit.localization`). A Grad-CAM map can be empty (every patch lowers z_yes -
z_no): it counts as a miss with no energy in the box and IoU 0, and is counted (``empty_maps``).
The first ``faithfulness_answers`` also get RISE deletion
/ insertion curves of P(yes) (mean-grey baseline), the first ``randomization_answers`` the
model-randomisation sanity check (Adebayo et al. 2018: maps of a copy with redrawn weights must
differ); ``report_maps`` examples are kept (image, both maps, box) for the report's figure.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd

from clinaudit.audit.calibration_fit import expit
from clinaudit.audit.localization import (
    box_area,
    deletion_insertion,
    localization_table,
    randomization_sanity,
    summarize_localization,
)
from clinaudit.audit.types import AuditInputError
from clinaudit.models.vlm.answer import score_questions
from clinaudit.models.vlm.explain import attention_rollout_map, gradcam_map, randomized_copy
from clinaudit.studies.base import AuditData

from .images import image_loader
from .policy import PedsVqaPolicy

__all__ = ["MAP_FILE", "METHODS", "localization_tables", "true_positives"]

METHODS = ("gradcam", "rollout")
#: Evidence file with the example maps and images (the report's figure).
MAP_FILE = "map_examples.npz"
_BOX = ("x0", "y0", "x1", "y1")


def true_positives(ev: pd.DataFrame, thr: pd.DataFrame, images: pd.DataFrame) -> pd.DataFrame:
    """The tuned model's true-positive answers of the evaluation set with their box and image
    row (``site``, ``batch``, ``file``, ``image_sha256``), in question order."""
    th = thr[thr["model"] == "tuned"].set_index("category")["threshold"]
    tuned = ev[(ev["model"] == "tuned") & (ev["answer"] == 1)]
    tp = tuned[tuned["p"].to_numpy() >= tuned["category"].map(th).to_numpy()]
    img = images.set_index("image_key")
    rows = []
    for _, q in tp.sort_values("question_id").iterrows():
        r = img.loc[q["image_key"]]
        box = tuple(float(r[f"{q['category']}_{k}"]) for k in _BOX)
        if not all(np.isfinite(box)):
            continue
        rows.append({"question_id": q["question_id"], "category": q["category"],
                     "question": q["question"], "p": float(q["p"]), "box": box,
                     "site": r["site"], "batch": r["batch"], "file": r["file"],
                     "image_sha256": r["image_sha256"]})  # fmt: skip
    return pd.DataFrame(rows)


def localization_tables(
    data: AuditData,
    ev: pd.DataFrame,
    thr: pd.DataFrame,
    images: pd.DataFrame,
    policy: PedsVqaPolicy,
    *,
    seed: int,
) -> tuple[dict[str, pd.DataFrame], dict[str, bytes]]:
    """Tables ``localization`` (per answer and method), ``localization_summary``,
    ``faithfulness``, ``randomization`` and ``map_examples`` (see the module docstring), and the
    file :data:`MAP_FILE` (npz: ``pixels_<k>``, ``gradcam_<k>``, ``rollout_<k>`` of example k).

    Raises
    ------
    AuditInputError
        When the evidence stage was not given the landing area (the maps need the pixels).
    """
    from .model import load_audited

    if data.landing is None:
        raise AuditInputError(
            "landing", "None", "the landing root", "run the evidence stage through the pipeline"
        )
    cfg = policy.localization
    tps = true_positives(ev, thr, images)
    tuned = load_audited(data.model)["tuned"]
    adapter, model, size = tuned.adapter, tuned.model, tuned.config.image_size
    loaders: dict[str, Any] = {}
    maps: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
    pixels = []
    for r in tps.itertuples():
        load = loaders.setdefault(r.site, image_loader(data.landing / "peds_vqa", r.site, size))
        img = load(r)
        pixels.append(img)
        maps["gradcam"].append(gradcam_map(adapter, model, img, r.question))
        maps["rollout"].append(attention_rollout_map(adapter, model, img))
    per_answer = []
    for method in METHODS:
        if not len(tps):
            break
        full = np.array([m.max() > 0 for m in maps[method]])
        parts = []
        if full.any():
            parts.append(localization_table(
                [m for m, f in zip(maps[method], full, strict=True) if f],
                list(tps.loc[full, "box"]), categories=list(tps.loc[full, "category"]),
                ids=list(tps.loc[full, "question_id"]), quantile=cfg.map_quantile,
                tolerance_cells=0.0,
            ).assign(empty=False))  # fmt: skip
        if not full.all():  # no patch supports "yes": a miss with no mass in the box
            empty = tps.loc[~full]
            parts.append(pd.DataFrame({
                "id": empty["question_id"].to_numpy(), "category": empty["category"].to_numpy(),
                "hit": False, "energy": 0.0, "iou": 0.0, "empty": True,
                "box_area": [box_area(b) for b in empty["box"]],
            }))  # fmt: skip
        per_answer.append(pd.concat(parts, ignore_index=True).assign(method=method))
    loc = pd.concat(per_answer, ignore_index=True) if per_answer else pd.DataFrame(
        columns=["id", "category", "hit", "energy", "box_area", "iou", "empty", "method"]
    )  # fmt: skip
    summary = pd.concat(
        [summarize_localization(loc[loc["method"] == m].drop(columns=["method", "empty"]),
                                seed=seed)
         .assign(method=m, empty_maps=int(loc.loc[loc["method"] == m, "empty"].sum()))
         for m in METHODS if (loc["method"] == m).any()],
        ignore_index=True,
    ) if len(loc) else pd.DataFrame()  # fmt: skip
    faithful = []
    for i, r in enumerate(tps.head(cfg.faithfulness_answers).itertuples()):

        def score(batch: np.ndarray, q: str = r.question) -> np.ndarray:
            keys = {f"x{k}": im for k, im in enumerate(batch)}
            z = score_questions(adapter, model, keys, [(k, q) for k in keys])
            return expit(z)

        for method in METHODS:
            di = deletion_insertion(score, pixels[i], maps[method][i],
                                    steps=cfg.faithfulness_steps, baseline="mean")  # fmt: skip
            faithful.append({"question_id": r.question_id, "category": r.category,
                             "method": method, "deletion_auc": di.deletion_auc,
                             "insertion_auc": di.insertion_auc})  # fmt: skip
        rand = np.random.default_rng([seed, i]).permutation(maps["gradcam"][i].ravel())
        di = deletion_insertion(score, pixels[i], rand.reshape(maps["gradcam"][i].shape),
                                steps=cfg.faithfulness_steps, baseline="mean")  # fmt: skip
        faithful.append({"question_id": r.question_id, "category": r.category,
                         "method": "random map", "deletion_auc": di.deletion_auc,
                         "insertion_auc": di.insertion_auc})  # fmt: skip
    n_rand = min(cfg.randomization_answers, len(tps))
    rand_rows = []
    if n_rand:
        random_model = randomized_copy(model, seed)
        for method in METHODS:
            other = [
                gradcam_map(adapter, random_model, pixels[i], tps.iloc[i]["question"])
                if method == "gradcam" else attention_rollout_map(adapter, random_model, pixels[i])
                for i in range(n_rand)
            ]  # fmt: skip
            s = randomization_sanity(maps[method][:n_rand], other)
            rand_rows.append({"method": method, "n": s.n, "n_undefined": s.n_undefined,
                              "median_rho": s.median, "q25": s.q25, "q75": s.q75,
                              "max_similarity": s.max_similarity, "fails": s.fails})  # fmt: skip
    examples = tps.head(cfg.report_maps).reset_index(drop=True)
    arrays: dict[str, np.ndarray] = {}
    for i in range(len(examples)):
        arrays[f"pixels_{i}"] = pixels[i].astype(np.float32)
        for method in METHODS:
            arrays[f"{method}_{i}"] = np.asarray(maps[method][i], dtype=np.float32)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    boxes = pd.DataFrame(list(examples["box"]), columns=list(_BOX)) if len(examples) else None
    example_table = pd.DataFrame({
        "example": np.arange(len(examples)),
        "category": examples["category"] if len(examples) else [],
        "p": examples["p"] if len(examples) else [],
        **({k: boxes[k] for k in _BOX} if boxes is not None else {k: [] for k in _BOX}),
        "size": size,
    })  # fmt: skip
    return {
        "localization": loc,
        "localization_summary": summary,
        "faithfulness": pd.DataFrame(faithful),
        "randomization": pd.DataFrame(rand_rows),
        "map_examples": example_table,
    }, {MAP_FILE: buf.getvalue()}
