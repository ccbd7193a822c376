"""The simulated population of a site batch: patients, follow-ups, views and labels.

Labels come from a Gaussian copula: correlated latent disease factors (heart failure, infection,
COPD, neoplasm, chronic scarring, age) give realistic co-occurrence with exact marginal prevalence;
follow-up images of a patient share most of the latent (``FOLLOWUP_PERSISTENCE``) so findings
mostly persist. Label noise (``label_miss_rate``, ``label_false_rate``) is applied to the written
labels only. :func:`nih_labels_csv` writes the population as the NIH ``labels.csv`` and
:func:`patient_split` draws the patient-disjoint held-out set of the vendor site.
"""

from __future__ import annotations

import csv
import io
import math
from datetime import date, timedelta

import numpy as np
import pandas as pd
from scipy.stats import norm

from clinaudit.sources.cxr_labels import FINDINGS, NO_FINDING
from clinaudit.sources.cxr_sites import AGE_LOADING, FACTOR_LOADINGS, SiteProfile
from clinaudit.sources.nih_labels import NIH_HEADER

#: Share of a follow-up image's latent disease state carried over from the patient.
FOLLOWUP_PERSISTENCE = 0.85
_MAX_PATIENTS_PER_BATCH = 99_999


def sample_population(
    profile: SiteProfile, n_images: int, rng: np.random.Generator
) -> pd.DataFrame:
    """Patients, follow-ups, views, true labels and severities of one site batch.

    Parameters
    ----------
    profile : SiteProfile
        Demographics, prevalence, view mix and label noise of the site.
    n_images : int
        Images to sample (patients get a geometric number of follow-ups).
    rng : numpy.random.Generator
        The batch's random stream.

    Returns
    -------
    pandas.DataFrame
        One row per image: ``patient_idx``, NIH demographic/view columns, ``study_date`` and
        ``true_<f>`` / ``written_<f>`` / ``sev_<f>`` per finding.
    """
    n_f = len(FINDINGS)
    per_patient = np.minimum(rng.geometric(1.0 / (1.0 + profile.followup_mean), n_images), 12)
    ends = np.cumsum(per_patient)
    n_pat = int(np.searchsorted(ends, n_images) + 1)
    per_patient = per_patient[:n_pat].copy()
    per_patient[-1] -= int(ends[n_pat - 1] - n_images)
    if n_pat > _MAX_PATIENTS_PER_BATCH:
        raise ValueError(
            f"{n_pat} patients in one batch exceed {_MAX_PATIENTS_PER_BATCH}; split the site into "
            "several batches"
        )
    pat_idx = np.repeat(np.arange(n_pat), per_patient)
    follow_up = np.concatenate([np.arange(k) for k in per_patient])

    child = rng.random(n_pat) < 0.04
    adult_age = np.clip(np.rint(rng.normal(profile.age_mean, profile.age_sd, n_pat)), 15, 95)
    age0 = np.where(child, rng.integers(1, 15, n_pat), adult_age).astype(int)
    sex = np.where(rng.random(n_pat) < profile.frac_male, "M", "F")

    factors = list(FACTOR_LOADINGS)
    w = np.zeros((len(factors), n_f))
    for k, fac in enumerate(factors):
        for f, load in FACTOR_LOADINGS[fac].items():
            w[k, FINDINGS.index(f)] = load
    a = np.array([AGE_LOADING.get(f, 0.0) for f in FINDINGS])
    resid = 1.0 - (w**2).sum(axis=0) - a**2
    f_pat = rng.standard_normal((n_pat, len(factors)))
    age_z = np.clip((age0 - 52.0) / 18.0, -2.5, 2.5)
    z_pat = f_pat @ w + age_z[:, None] * a + np.sqrt(resid) * rng.standard_normal((n_pat, n_f))
    rho = FOLLOWUP_PERSISTENCE
    z = math.sqrt(rho) * z_pat[pat_idx] + math.sqrt(1 - rho) * rng.standard_normal((n_images, n_f))
    prev = profile.prevalence()
    thr = norm.isf(np.array([prev[f] for f in FINDINGS]))
    true = z > thr
    sev = 0.12 + 0.88 * (1.0 - np.exp(-1.3 * (z - thr))) + 0.07 * rng.standard_normal(z.shape)
    sev = np.where(true, np.clip(sev, 0.08, 1.0), 0.0)

    miss = true & (rng.random(true.shape) < profile.label_miss_rate)
    false = ~true & (rng.random(true.shape) < profile.label_false_rate)
    written = (true & ~miss) | false

    sick = (f_pat[:, factors.index("heart_failure")] + f_pat[:, factors.index("infection")]) / 2
    logit = math.log(profile.frac_ap / (1 - profile.frac_ap)) + 0.5 * sick[pat_idx]
    logit = logit + np.where(child[pat_idx], 1.0, 0.0)
    view = np.where(rng.random(n_images) < 1 / (1 + np.exp(-logit)), "AP", "PA")

    start = date(profile.study_year, 1, 1)
    first = rng.integers(0, 730, n_pat)
    gaps = np.where(follow_up == 0, 0, rng.integers(1, 120, n_images))
    starts = np.r_[0, np.cumsum(per_patient)[:-1]]
    offsets = first[pat_idx] + np.concatenate(
        [np.cumsum(gaps[s0 : s0 + k]) for s0, k in zip(starts, per_patient, strict=True)]
    )
    age = np.minimum(age0[pat_idx] + offsets // 365 - first[pat_idx] // 365, 95)
    dates = [(start + timedelta(days=int(d))).strftime("%Y%m%d") for d in offsets]

    df = pd.DataFrame(
        {
            "patient_idx": pat_idx,
            "Follow-up #": follow_up,
            "Patient Age": age.astype(int),
            "Patient Gender": sex[pat_idx],
            "View Position": view,
            "study_date": dates,
        }
    )
    for j, f in enumerate(FINDINGS):
        df[f"true_{f}"] = true[:, j].astype(int)
        df[f"written_{f}"] = written[:, j].astype(int)
        df[f"sev_{f}"] = np.round(sev[:, j], 4)
    return df


def patient_split(df: pd.DataFrame, test_images: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean test mask filled patient by patient (random order) up to ``test_images``.

    Parameters
    ----------
    df : pandas.DataFrame
        The population with its ``Patient ID`` column.
    test_images : int
        Images wanted in the test set (whole patients are added until it is reached).
    rng : numpy.random.Generator
        The batch's random stream.

    Returns
    -------
    ndarray of bool
        ``True`` for the test images.

    Raises
    ------
    ValueError
        If no training image would be left.
    """
    patients = df["Patient ID"].unique()
    counts = df.groupby("Patient ID", sort=False).size()
    test_ids: set[int] = set()
    n = 0
    for pid in rng.permutation(patients):
        if n >= test_images:
            break
        test_ids.add(int(pid))
        n += int(counts[pid])
    if n == len(df):
        raise ValueError(
            f"test_images={test_images} leaves no training image among {len(df)} images; "
            "lower test_images"
        )
    return df["Patient ID"].isin(test_ids).to_numpy()


def nih_labels_csv(
    df: pd.DataFrame, *, native_px: int, spacing_mm: float, unlabelled: bool = False
) -> str:
    """The text of ``labels.csv`` in the NIH layout: one row per image of ``df``.

    Parameters
    ----------
    df : pandas.DataFrame
        The population (:func:`sample_population`) with ``Image Index`` and ``Patient ID``.
    native_px : int
        Written as the original image width and height.
    spacing_mm : float
        Written as the original pixel spacing (x and y).
    unlabelled : bool
        Leave ``Finding Labels`` empty on every row (a pile nobody has labelled yet).

    Returns
    -------
    str
        ``NIH_HEADER``, then the rows; the written (noisy) labels, ``No Finding`` when none
        (empty when ``unlabelled``).
    """
    n_images, native, spacing = len(df), native_px, spacing_mm
    buf = io.StringIO()
    buf.write(NIH_HEADER + "\n")
    writer = csv.writer(buf, lineterminator="\n")
    written = df[[f"written_{f}" for f in FINDINGS]].to_numpy()
    for i in range(n_images):
        labels = "|".join(f for f, v in zip(FINDINGS, written[i], strict=True) if v) or NO_FINDING
        if unlabelled:
            labels = ""
        writer.writerow(
            [
                df["Image Index"].iat[i],
                labels,
                int(df["Follow-up #"].iat[i]),
                int(df["Patient ID"].iat[i]),
                int(df["Patient Age"].iat[i]),
                df["Patient Gender"].iat[i],
                df["View Position"].iat[i],
                native,
                native,
                f"{spacing:.6g}",
                f"{spacing:.6g}",
            ]
        )
    return buf.getvalue()
