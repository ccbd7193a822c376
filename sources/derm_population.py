"""Patients, lesions and images of one simulated dermatology clinic (hidden clinical metadata).

A patient has a Fitzpatrick type (the clinic's skin mix), an ITA drawn for that type, a sex and
one lesion (20 % two); a lesion has a category (the clinic's prevalence), a clinical history
drawn from the category's history profile (:data:`HISTORY`), a diameter and one photo (30 % two,
taken in separate sessions). The history is what the free-text note is written from
(:mod:`~clinaudit.sources.derm_notes`); which lesions have no note is drawn here (MCAR at the
clinic's ``note_missing`` rate). Two simulated annotators label every photo's Fitzpatrick type
with their own error distributions (:data:`ANNOTATOR_ERRORS`, about half agree exactly, most
within one type; Fitzpatrick17k's two labelling vendors agreed exactly on 47.9 %).

The three image-informative categories (MEL, NEV, SEK) share the ``pigmented`` history profile:
their age, sex, body site and symptoms are identically distributed, so text cannot separate them.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from clinaudit.sources.derm_sites import CATEGORY_BY_CODE, FITZPATRICK_ITA, ClinicProfile

__all__ = [
    "ANNOTATOR_ERRORS",
    "HISTORY",
    "POPULATION_COLUMNS",
    "SYMPTOMS",
    "HistoryProfile",
    "annotate_fitzpatrick",
    "sample_clinic_population",
]

#: Yes/no findings of the clinical history (PAD-UFES-20 names, plus the skin-cancer history).
SYMPTOMS: tuple[str, ...] = (
    "itch", "grew", "hurt", "changed", "bleed", "elevation", "skin_cancer_history",
)  # fmt: skip


@dataclass(frozen=True)
class HistoryProfile:
    """Distribution of the clinical history of lesions of one profile.

    ``symptoms``: probability of each of :data:`SYMPTOMS`; ``age``: mean and sd in years;
    ``duration_months``: median of a log-normal (sigma 0.8); ``regions``: body-site weights
    (PAD-UFES-20 region names); ``male``: share of men.
    """

    symptoms: tuple[float, ...]
    age: tuple[float, float]
    duration_months: float
    regions: tuple[tuple[str, float], ...]
    male: float = 0.5


HISTORY: dict[str, HistoryProfile] = {
    "ACK": HistoryProfile(
        symptoms=(0.72, 0.15, 0.10, 0.10, 0.06, 0.22, 0.30),
        age=(64.0, 11.0),
        duration_months=18.0,
        male=0.55,
        regions=(
            ("FACE", 0.3),
            ("FOREARM", 0.25),
            ("HAND", 0.15),
            ("SCALP", 0.1),
            ("NOSE", 0.1),
            ("EAR", 0.05),
            ("ARM", 0.05),
        ),
    ),  # fmt: skip
    "BCC": HistoryProfile(
        symptoms=(0.20, 0.60, 0.10, 0.35, 0.70, 0.75, 0.50),
        age=(65.0, 12.0),
        duration_months=14.0,
        male=0.55,
        regions=(
            ("FACE", 0.3),
            ("NOSE", 0.2),
            ("BACK", 0.12),
            ("CHEST", 0.1),
            ("NECK", 0.1),
            ("EAR", 0.08),
            ("SCALP", 0.05),
            ("ARM", 0.05),
        ),
    ),  # fmt: skip
    "SCC": HistoryProfile(
        symptoms=(0.30, 0.90, 0.80, 0.45, 0.40, 0.90, 0.35),
        age=(71.0, 11.0),
        duration_months=3.0,
        male=0.6,
        regions=(
            ("HAND", 0.2),
            ("FOREARM", 0.2),
            ("FACE", 0.2),
            ("LIP", 0.1),
            ("EAR", 0.1),
            ("SCALP", 0.1),
            ("NOSE", 0.1),
        ),
    ),  # fmt: skip
    "pigmented": HistoryProfile(
        symptoms=(0.28, 0.35, 0.10, 0.30, 0.12, 0.45, 0.20),
        age=(52.0, 16.0),
        duration_months=24.0,
        regions=(
            ("BACK", 0.25),
            ("CHEST", 0.15),
            ("ARM", 0.12),
            ("FACE", 0.12),
            ("THIGH", 0.1),
            ("ABDOMEN", 0.1),
            ("NECK", 0.08),
            ("FOREARM", 0.08),
        ),
    ),  # fmt: skip
}

#: Probability that an annotator writes true type + d, for d = -2 .. +2 (clipped to I-VI).
#: Annotator B reads a little darker than annotator A, as labelling vendors differ.
ANNOTATOR_ERRORS: dict[str, tuple[float, ...]] = {
    "a": (0.02, 0.15, 0.66, 0.15, 0.02),
    "b": (0.02, 0.10, 0.64, 0.20, 0.04),
}
#: Share of photos an annotator left unlabelled (blank in the CSV).
ANNOTATOR_BLANK = 0.02

#: Columns of :func:`sample_clinic_population`, in order.
POPULATION_COLUMNS: tuple[str, ...] = (
    "patient_idx", "lesion_idx", "image_in_lesion", "diagnostic", "fitzpatrick_true",
    "ita_target", "age", "sex", "region", "duration_months", *SYMPTOMS, "diameter_mm",
    "note_missing", "fitzpatrick_a", "fitzpatrick_b",
)  # fmt: skip

#: Lesion diameter (mm): log-normal median and sigma per look.
_DIAMETER: dict[str, tuple[float, float]] = {
    "nevus": (5.0, 0.3),
    "melanoma": (10.0, 0.35),
    "seborrheic": (9.0, 0.35),
    "pink_keratotic": (8.0, 0.35),
}


def _pick(rng: np.random.Generator, weights: Sequence[float]) -> int:
    """Index drawn with probability proportional to ``weights`` (one uniform draw)."""
    cum = list(itertools.accumulate(weights))
    return min(bisect.bisect_right(cum, rng.random() * cum[-1]), len(cum) - 1)


def _clip(value: float, lo: float, hi: float) -> float:
    return min(max(value, lo), hi)


def _history(rng: np.random.Generator, profile: HistoryProfile) -> dict[str, object]:
    out: dict[str, object] = {
        "region": profile.regions[_pick(rng, [w for _, w in profile.regions])][0],
        "duration_months": round(
            _clip(profile.duration_months * math.exp(0.8 * rng.standard_normal()), 0.25, 240.0), 2
        ),
    }
    for name, p in zip(SYMPTOMS, profile.symptoms, strict=True):
        out[name] = bool(rng.random() < p)
    return out


def annotate_fitzpatrick(
    true_type: np.ndarray, rng: np.random.Generator, errors: tuple[float, ...]
) -> np.ndarray:
    """One annotator's Fitzpatrick labels (1-6; 0 = left blank) of photos of ``true_type``.

    Parameters
    ----------
    true_type : ndarray of int
        True types 1-6.
    rng : numpy.random.Generator
        Source of randomness.
    errors : tuple of float
        Probabilities of an error of -2, -1, 0, +1, +2 types (clipped to 1-6).

    Returns
    -------
    ndarray of int
        Labels, 0 where the annotator left the photo unlabelled (:data:`ANNOTATOR_BLANK`).
    """
    t = np.asarray(true_type, dtype=int)
    shift = rng.choice(np.arange(-2, 3), size=len(t), p=np.asarray(errors) / sum(errors))
    label = np.clip(t + shift, 1, 6)
    blank = rng.random(len(t)) < ANNOTATOR_BLANK
    return np.where(blank, 0, label)


def _ita(rng: np.random.Generator, fitz: int) -> float:
    lo, hi = FITZPATRICK_ITA[fitz]
    return float(rng.uniform(lo, hi) + 4.0 * rng.standard_normal())


def sample_clinic_population(
    clinic: ClinicProfile, n_images: int, rng: np.random.Generator
) -> pd.DataFrame:
    """Draw the hidden metadata of ``n_images`` photos of one clinic.

    Parameters
    ----------
    clinic : ClinicProfile
        Skin mix, category prevalence and note missingness.
    n_images : int
        Photos to draw (patients are added until there are enough; the last lesion may lose
        its second photo).
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    DataFrame
        One row per photo, columns :data:`POPULATION_COLUMNS`; photos of one lesion share every
        column but ``image_in_lesion`` and the annotators' labels.
    """
    if n_images < 1:
        raise ValueError(f"n_images={n_images}; expected at least 1")
    prev = clinic.prevalence()
    codes = list(prev)
    p_cat = [prev[c] for c in codes]
    mix = clinic.skin_mix
    rows: list[dict[str, object]] = []
    patient = lesion = 0
    while len(rows) < n_images:
        fitz = _pick(rng, mix) + 1
        ita = round(_ita(rng, fitz), 3)
        n_lesions = 2 if rng.random() < 0.2 else 1
        first: HistoryProfile | None = None
        age = sex = history = None
        for _ in range(n_lesions):
            cat = CATEGORY_BY_CODE[codes[_pick(rng, p_cat)]]
            prof = HISTORY[cat.history]
            if first is None:
                first = prof
                age = int(_clip(round(prof.age[0] + prof.age[1] * rng.standard_normal()), 18, 95))
                sex = "MALE" if rng.random() < prof.male else "FEMALE"
                history = bool(rng.random() < prof.symptoms[-1])
            hist = _history(rng, prof)
            hist["skin_cancer_history"] = history
            med, sig = _DIAMETER[cat.look]
            diameter = round(_clip(med * math.exp(sig * rng.standard_normal()), 2.0, 30.0), 2)
            missing = bool(rng.random() < clinic.note_missing)
            n_photos = 2 if rng.random() < 0.3 else 1
            for k in range(n_photos):
                rows.append(
                    {
                        "patient_idx": patient, "lesion_idx": lesion, "image_in_lesion": k,
                        "diagnostic": cat.code, "fitzpatrick_true": fitz, "ita_target": ita,
                        "age": age, "sex": sex, **hist, "diameter_mm": diameter,
                        "note_missing": missing,
                    }
                )  # fmt: skip
            lesion += 1
        patient += 1
    df = pd.DataFrame(rows[:n_images])
    true_type = df["fitzpatrick_true"].to_numpy()
    df["fitzpatrick_a"] = annotate_fitzpatrick(true_type, rng, ANNOTATOR_ERRORS["a"])
    df["fitzpatrick_b"] = annotate_fitzpatrick(true_type, rng, ANNOTATOR_ERRORS["b"])
    return df[list(POPULATION_COLUMNS)]
