"""Simulated ADULT chest films with yes/no questions and captions, for VLM pretraining.

These are renderings of :func:`clinaudit.sources.cxr_render.render_cxr` (ages 20-85), not real
radiographs. The four adult findings stand in for the pediatric categories of the ``peds_vqa``
study: Consolidation or Pneumonia -> ``consolidation``, Infiltration -> ``interstitial_opacity``,
Cardiomegaly -> ``cardiomegaly``, Effusion -> ``effusion``. Each category is present with
probability 1/2 independently (balanced yes/no in expectation); every image gets one question per
category from :data:`QUESTION_TEMPLATES` and a short caption (the second pretraining task).

Every image has its own seed (``SeedSequence(seed).spawn``), so the result does not depend on
``workers``.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from clinaudit.sources.cxr_render import render_cxr

#: Pediatric category -> adult analogue findings (``clinaudit.sources.cxr_labels.FINDINGS``).
ADULT_ANALOGUES: dict[str, tuple[str, ...]] = {
    "consolidation": ("Consolidation", "Pneumonia"),
    "interstitial_opacity": ("Infiltration",),
    "cardiomegaly": ("Cardiomegaly",),
    "effusion": ("Effusion",),
}
CATEGORIES: tuple[str, ...] = tuple(ADULT_ANALOGUES)
QUESTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "consolidation": (
        "is there consolidation?",
        "is there a focal airspace opacity?",
        "is there lobar pneumonia?",
    ),
    "interstitial_opacity": (
        "are there interstitial opacities?",
        "is there an infiltrate?",
        "is there a diffuse reticular pattern?",
    ),
    "cardiomegaly": (
        "is the heart enlarged?",
        "is there cardiomegaly?",
        "is the cardiac silhouette enlarged?",
    ),
    "effusion": (
        "is there a pleural effusion?",
        "is there fluid in the pleural space?",
        "is a costophrenic angle blunted?",
    ),
}
_PHRASES = {
    "consolidation": "consolidation",
    "interstitial_opacity": "interstitial opacity",
    "cardiomegaly": "cardiomegaly",
    "effusion": "effusion",
}
__all__ = [
    "ADULT_ANALOGUES",
    "CATEGORIES",
    "QUESTION_TEMPLATES",
    "adult_pretraining_pairs",
    "caption",
]


def caption(present: list[str]) -> str:
    """Short caption of the present categories, e.g. ``'frontal chest radiograph with
    cardiomegaly and effusion'``; ``'frontal chest radiograph with no acute findings'`` if none."""
    if not present:
        return "frontal chest radiograph with no acute findings"
    words = [_PHRASES[c] for c in CATEGORIES if c in present]
    body = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    return f"frontal chest radiograph with {body}"


def _one(args: tuple[np.random.SeedSequence, int]) -> tuple[np.ndarray, list[str], list[str], str]:
    ss, size = args
    rng = np.random.default_rng(ss)
    present = [c for c in CATEGORIES if rng.random() < 0.5]
    findings: dict[str, float] = {}
    for c in present:
        name = ADULT_ANALOGUES[c][int(rng.integers(len(ADULT_ANALOGUES[c])))]
        findings[name] = float(rng.uniform(0.5, 1.0))
    age = float(rng.uniform(20, 85))
    sex = "F" if rng.random() < 0.5 else "M"
    img = render_cxr(rng, findings=findings, age=age, sex=sex, size=2 * size)
    img = np.asarray(img, dtype=np.float32).reshape(size, 2, size, 2).mean(axis=(1, 3))
    questions = [QUESTION_TEMPLATES[c][int(rng.integers(3))] for c in CATEGORIES]
    answers = ["yes" if c in present else "no" for c in CATEGORIES]
    return np.clip(img, 0.0, 1.0), questions, answers, caption(present)


def adult_pretraining_pairs(
    n_images: int, *, size: int = 64, seed: int = 0, workers: int = 1
) -> tuple[np.ndarray, list[list[str]], list[list[str]], list[str]]:
    """Render simulated adult films with one yes/no question per category and a caption.

    Parameters
    ----------
    n_images : int
        Films to render.
    size : int
        Output side in pixels (rendered at ``2 * size`` and averaged over 2x2 blocks).
    seed : int
        Seed of everything (per-image seeds are spawned from it).
    workers : int
        Processes; the result is the same for any value.

    Returns
    -------
    images : numpy.ndarray
        ``(n_images, size, size)`` float32 in [0, 1].
    questions, answers : list of list of str
        Per image, one question and its ``"yes"`` / ``"no"`` per category of :data:`CATEGORIES`.
    captions : list of str
        Per image (:func:`caption`).

    Examples
    --------
    >>> imgs, qs, ans, caps = adult_pretraining_pairs(2, size=32)
    >>> imgs.shape, len(qs[0]), ans[0][0] in ("yes", "no")
    ((2, 32, 32), 4, True)
    """
    if n_images < 1 or size < 8 or workers < 1:
        raise ValueError(f"n_images={n_images} >= 1, size={size} >= 8, workers={workers} >= 1")
    jobs: list[Any] = [(ss, size) for ss in np.random.SeedSequence(seed).spawn(n_images)]
    if workers == 1:
        rows = [_one(j) for j in jobs]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            rows = list(pool.map(_one, jobs, chunksize=64))
    images = np.stack([r[0] for r in rows])
    return images, [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows]
