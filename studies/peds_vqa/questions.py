"""Questions of study ``peds_vqa``: templates, patient-disjoint splits and the evaluation set.

Every question is a yes/no question about one finding category of one image. Each category has a
family of templates; template 0 is the canonical wording, the others are its paraphrases (same
meaning, different words and structure), so paraphrase consistency can be measured.

Built deterministically from the validated table and the policy (:func:`question_plan`):

- ``split`` of every image: a salted hash of its patient's first landed image (never of the
  pseudonym, which depends on the home's secret key), so a patient's images never straddle two
  splits and the same data splits the same way in every home (:func:`assign_splits`).
- the *pooled* set: every non-training image x category x paraphrase (calibration, validation and
  test splits; the pooled test set is the test split's canonical questions);
- the *evaluation set*: per category ``per_category`` questions on test images, ``yes_share`` of
  them answered yes, at most one per image and category, drawn with the policy's seed
  (:func:`evaluation_set`); the brief's 200 questions are 4 x 50 with 25 yes / 25 no;
- *controls*: blank images (uniform grey with noise; the correct answer is "no") and shuffled
  images (an evaluation question asked about a test image whose answer is the opposite; a model
  that answers from the words alone gets these wrong).

Answers are ``1`` (yes) or ``0`` (no), read from the validated table's category columns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from clinaudit.audit.types import AuditInputError
from clinaudit.models.vendor_model import patient_uniform

__all__ = [
    "BLANK_PREFIX",
    "TEMPLATES",
    "assign_splits",
    "blank_image",
    "evaluation_set",
    "question_text",
    "scored_questions",
    "shuffled_controls",
]

#: Question templates per category: index 0 is canonical, the rest are paraphrases.
TEMPLATES: Mapping[str, tuple[str, ...]] = {
    "consolidation": (
        "is there consolidation?",
        "does this chest x-ray show an area of airspace consolidation?",
        "can you see a dense consolidated lung segment?",
        "is any part of either lung consolidated?",
    ),
    "interstitial_opacity": (
        "are there interstitial opacities?",
        "does this film show peribronchial or interstitial opacity?",
        "can you see streaky perihilar interstitial markings?",
        "is there increased interstitial opacity around the bronchi?",
    ),
    "cardiomegaly": (
        "is the heart enlarged?",
        "does this chest x-ray show cardiomegaly?",
        "is the cardiac silhouette larger than normal for age?",
        "is the cardiothoracic ratio increased?",
    ),
    "effusion": (
        "is there a pleural effusion?",
        "does this chest x-ray show fluid in the pleural space?",
        "is a costophrenic angle blunted by an effusion?",
        "can you see pleural fluid on either side?",
    ),
}

#: Image key prefix of the blank control images (never a landed image's key).
BLANK_PREFIX = "blank:"


def question_text(category: str, template: int) -> str:
    """The wording of ``template`` of ``category`` (0 = canonical).

    Raises
    ------
    AuditInputError
        For an unknown category or template index.
    """
    if category not in TEMPLATES:
        raise AuditInputError(
            "category", repr(category), f"one of {sorted(TEMPLATES)}", "use a policy category"
        )
    family = TEMPLATES[category]
    if not 0 <= template < len(family):
        raise AuditInputError(
            "template", str(template), f"0..{len(family) - 1}", "lower evaluation_set.paraphrases"
        )
    return family[template]


def assign_splits(table: pd.DataFrame, shares: Mapping[str, float], salt: str) -> pd.Series:
    """Split of each image by a salted hash of its patient's first landed image (patient-disjoint
    by construction; see :func:`~clinaudit.models.vendor_model.patient_uniform`).

    Parameters
    ----------
    table : pandas.DataFrame
        Validated images: columns ``patient`` (pseudonym), ``batch`` and ``image_id``. The split
        does not depend on the pseudonymisation key, so the same landed data gives the same
        splits in every home.
    shares : mapping of str to float
        Split name -> share, in order; the shares sum to 1.
    salt : str
        Key of the hash: another salt gives another, equally valid, partition of patients.

    Returns
    -------
    pandas.Series
        Split name per row, same index as ``table``.
    """
    missing = [c for c in ("patient", "batch", "image_id") if c not in table.columns]
    if missing:
        raise AuditInputError(
            "images table", f"no columns {missing}", "columns patient, batch and image_id",
            "pass the validated table of the site",
        )  # fmt: skip
    names = list(shares)
    edges = np.cumsum([float(shares[n]) for n in names])
    keys = table["batch"].astype(str) + "/" + table["image_id"].astype(str)
    u = patient_uniform(table["patient"].astype(str).to_numpy(), keys.to_numpy(), salt)
    idx = np.minimum(np.searchsorted(edges, u, side="right"), len(names) - 1)
    return pd.Series(np.asarray(names, dtype=object)[idx], index=table.index, name="split")


def scored_questions(
    table: pd.DataFrame, categories: Sequence[str], *, paraphrases: int, blanks: int
) -> pd.DataFrame:
    """Every question the predictions stage answers for one partition.

    Non-training images get every category x ``paraphrases`` templates; ``blanks`` blank images
    get every category x template 0. ``table`` carries ``split`` (see :func:`assign_splits`).

    Returns
    -------
    pandas.DataFrame
        ``image_key, image_id, split, category, template, question, answer, control`` where
        ``image_key`` is ``<batch>/<file>`` (or ``blank:<k>``), ``answer`` is 0/1 (blank: 0) and
        ``control`` is ``"none"`` or ``"blank"``.
    """
    rows = table.loc[table["split"] != "train"]
    parts = []
    for cat in categories:
        for t in range(paraphrases):
            text = question_text(cat, t)
            parts.append(
                pd.DataFrame(
                    {
                        "image_key": (rows["batch"].astype(str) + "/" + rows["file"].astype(str)),
                        "image_id": rows["image_id"].astype(str),
                        "split": rows["split"].astype(str),
                        "category": cat,
                        "template": t,
                        "question": text,
                        "answer": rows[cat].astype(int),
                        "control": "none",
                    }
                )
            )
        if blanks:
            keys = [f"{BLANK_PREFIX}{k}" for k in range(blanks)]
            parts.append(
                pd.DataFrame(
                    {
                        "image_key": keys,
                        "image_id": keys,
                        "split": "control",
                        "category": cat,
                        "template": 0,
                        "question": question_text(cat, 0),
                        "answer": 0,
                        "control": "blank",
                    }
                )
            )
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    return out.sort_values(["image_key", "category", "template"], kind="stable").reset_index(
        drop=True
    )


def blank_image(key: str, size: int) -> np.ndarray:
    """The blank control image ``key`` (``blank:<k>``): a uniform grey level with faint noise,
    deterministic per key; float32 in [0, 1]."""
    k = int(key.removeprefix(BLANK_PREFIX))
    rng = np.random.default_rng([0xB1A4C, k])
    level = 0.15 + 0.7 * (k % 7) / 6.0
    img = level + 0.02 * rng.standard_normal((size, size))
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def evaluation_set(
    table: pd.DataFrame,
    categories: Sequence[str],
    *,
    per_category: int,
    yes_share: float,
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The fixed evaluation questions on test images, and how complete each category is.

    Per category: ``round(per_category * yes_share)`` images answered yes and the rest no, drawn
    without replacement from the test split with ``seed`` (sorted by image id first, so the draw
    depends only on the table's content). When the test split has fewer images of one answer than
    asked, all of them are taken and the shortfall is recorded, never filled from other splits.

    Returns
    -------
    (pandas.DataFrame, pandas.DataFrame)
        Questions ``question_id, image_key, image_id, category, template (0), question, answer``
        and the completeness ``category, answer, wanted, available, taken``.
    """
    test = table.loc[table["split"] == "test"].sort_values("image_id", kind="stable")
    n_yes = round(per_category * yes_share)
    questions, complete = [], []
    for c_index, cat in enumerate(categories):
        for answer, wanted in ((1, n_yes), (0, per_category - n_yes)):
            pool = test.loc[test[cat].astype(int) == answer]
            rng = np.random.default_rng([seed, c_index, answer])
            take = min(wanted, len(pool))
            picked = pool.iloc[np.sort(rng.choice(len(pool), size=take, replace=False))]
            complete.append(
                {"category": cat, "answer": answer, "wanted": wanted, "available": len(pool),
                 "taken": take}
            )  # fmt: skip
            for _, r in picked.iterrows():
                questions.append(
                    {
                        "image_key": f"{r['batch']}/{r['file']}",
                        "image_id": str(r["image_id"]),
                        "category": cat,
                        "template": 0,
                        "question": question_text(cat, 0),
                        "answer": answer,
                    }
                )
    out = pd.DataFrame(
        questions,
        columns=["image_key", "image_id", "category", "template", "question", "answer"],
    )
    out = out.sort_values(["category", "answer", "image_id"], ascending=[True, False, True])
    out.insert(0, "question_id", [f"q{i:03d}" for i in range(1, len(out) + 1)])
    return out.reset_index(drop=True), pd.DataFrame(complete)


def shuffled_controls(
    eval_set: pd.DataFrame, table: pd.DataFrame, *, n: int, seed: int
) -> pd.DataFrame:
    """``n`` evaluation questions asked about a different test image with the opposite answer.

    The question text is unchanged; the image is drawn (with ``seed``) from the test images whose
    answer to that category is the opposite of the original's, so the correct answer flips. A
    model that reads the image gets them right as often as the originals; one that answers from
    the question's words gets them wrong.

    Returns
    -------
    pandas.DataFrame
        ``question_id, original_image_id, image_key, image_id, category, template, question,
        answer`` (``answer`` is the new image's truth).
    """
    if n <= 0 or eval_set.empty:
        return pd.DataFrame(
            columns=["question_id", "original_image_id", "image_key", "image_id", "category",
                     "template", "question", "answer"]
        )  # fmt: skip
    test = table.loc[table["split"] == "test"].sort_values("image_id", kind="stable")
    rng = np.random.default_rng([seed, 0x5FF1E])
    chosen = eval_set.iloc[np.sort(rng.choice(len(eval_set), size=min(n, len(eval_set)),
                                              replace=False))]  # fmt: skip
    rows = []
    for _, q in chosen.iterrows():
        pool = test.loc[
            (test[q["category"]].astype(int) != int(q["answer"]))
            & (test["image_id"].astype(str) != q["image_id"])
        ]
        if pool.empty:
            continue
        r = pool.iloc[int(rng.integers(len(pool)))]
        rows.append(
            {
                "question_id": f"{q['question_id']}s",
                "original_image_id": q["image_id"],
                "image_key": f"{r['batch']}/{r['file']}",
                "image_id": str(r["image_id"]),
                "category": q["category"],
                "template": int(q["template"]),
                "question": q["question"],
                "answer": int(r[q["category"]]),
            }
        )
    return pd.DataFrame(rows)
