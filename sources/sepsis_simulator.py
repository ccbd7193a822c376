"""Deterministic simulator of the ``sepsis_ews`` cohorts: the audited network and the vendor's data.

:func:`simulate_network` draws ICU stays of the four network hospitals over twelve admission
months (``tiny`` ~600, ``demo`` ~6,000, ``full`` ~18,000 stays); :func:`simulate_vendor_population`
draws the vendor's development population (other hospitals, few Black patients, other lab-ordering
practice), with a ``split`` column (``train``/``test``) for the vendor model. Both return a
:class:`SepsisCohort`: the stays table (format of :mod:`clinaudit.sources.sepsis_tables`, every row
``simulated=True``), the latent truth per stay (true SaO2, oximetry bias, acuity, sepsis
probability, which lab panels were ordered) and the ``truth`` sidecar dict naming the disadvantaged
group and the mechanisms (generative model: :mod:`clinaudit.sources.sepsis_population`).

Randomness: each (population, hospital, month) chunk has its own stream
``derive_rng(seed, "sepsis/<population>/<hospital>/<month>")``, and the sepsis intercept is solved
once per population on a fixed calibration sample, so a cohort does not depend on which other
months are drawn: month 13 (``2025-01``) can be added later without changing months 1-12.

:func:`write_sepsis_batch` lands one hospital's batch as ``<landing>/sepsis_ews/<hospital>/<batch>/
stays.parquet`` (or ``stays.csv``) + ``manifest.json`` (written last, ``simulated`` from the
table); :func:`land_network` lands one batch per hospital and month and writes the truth sidecar
(``<truth>/sepsis_ews/truth.json`` and ``latent.parquet``) outside the landing area.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy.special import expit

from clinaudit.audit.bootstrap import derive_rng
from clinaudit.sources.landing import LandingError, validate_name, write_manifest
from clinaudit.sources.sepsis_population import (
    GROUP_ORDER_OFFSET,
    NETWORK_HOSPITALS,
    OTHER_OXIMETRY_BIAS,
    OXIMETRY_BIAS,
    OXIMETRY_GROUP,
    OXIMETRY_SLOPE,
    PANELS,
    VENDOR_HOSPITALS,
    HospitalProfile,
    hospital_counts,
    order_labs,
    oximetry_bias,
    physiology,
    sample_patients,
    sepsis_logit_parts,
    solve_intercept,
    split_counts,
)
from clinaudit.sources.sepsis_tables import FEATURES, STAY_COLUMNS, STUDY

#: Fixed manifest timestamp: simulated batches are byte-identical across runs.
CREATED_UTC = "2024-01-01T00:00:00Z"
#: ``label_layout`` recorded in the manifest: one stays table (CSV or Parquet) per batch.
MANIFEST_LAYOUT = "sepsis_stays"
TRUTH_FORMAT = "clinaudit.sepsis_truth/v1"
_CALIBRATION_STAYS = 20_000
_VITAL_MISSING = {"temperature_c": 0.03, "gcs": 0.06}
_DEFAULT_VITAL_MISSING = 0.005
_LATENT_COLUMNS = (
    "stay_id",
    "sao2",
    "spo2_bias",
    "acuity",
    "sepsis_intensity",
    "sepsis_probability",
    *(f"ordered_{p}" for p in PANELS),
)


@dataclass(frozen=True)
class SepsisScale:
    """Stays per 12 months in the network and in the vendor's development population."""

    name: str
    network_stays: int
    vendor_stays: int


SCALES: dict[str, SepsisScale] = {
    "tiny": SepsisScale("tiny", 600, 1_000),
    "demo": SepsisScale("demo", 6_000, 10_000),
    "full": SepsisScale("full", 18_000, 24_000),
}


@dataclass(frozen=True)
class Population:
    """A simulated population: its hospitals, first admission year and target prevalence."""

    name: str
    hospitals: dict[str, HospitalProfile]
    first_year: int
    prevalence: float
    test_fraction: float = 0.0


NETWORK = Population("network", NETWORK_HOSPITALS, 2024, 0.08)
VENDOR = Population("vendor", VENDOR_HOSPITALS, 2021, 0.075, test_fraction=0.25)


@dataclass(frozen=True)
class SepsisCohort:
    """Stays table, per-stay latent truth (for tests) and the truth sidecar dict."""

    stays: pd.DataFrame
    latent: pd.DataFrame
    truth: dict[str, Any] = field(default_factory=dict)


def month_label(first_year: int, month: int) -> str:
    """``YYYY-MM`` of month index ``month`` (1 = January of ``first_year``; 13 = next January)."""
    if month < 1:
        raise ValueError(f"month={month}: month indices start at 1 (January of {first_year})")
    year, m0 = divmod(month - 1, 12)
    return f"{first_year + year:04d}-{m0 + 1:02d}"


def _resolve_scale(scale: str | SepsisScale) -> SepsisScale:
    if isinstance(scale, SepsisScale):
        return scale
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r} is not one of {sorted(SCALES)}; pass a SepsisScale")
    return SCALES[scale]


def _intercept(pop: Population, seed: int) -> float:
    """Sepsis intercept of ``pop``, solved on a fixed-size calibration sample over 12 months."""
    rng = derive_rng(seed, f"sepsis/{pop.name}/calibration")
    counts = hospital_counts(pop.hospitals, _CALIBRATION_STAYS)
    parts = []
    for name in sorted(pop.hospitals):
        profile = pop.hospitals[name]
        patients = sample_patients(profile, counts[name], rng)
        z = rng.normal(size=len(patients))
        parts.append(sepsis_logit_parts(patients, z, np.full(len(z), profile.prevalence_offset)))
    return solve_intercept(np.concatenate(parts), pop.prevalence)


def _chunk(
    pop: Population, profile: HospitalProfile, month: int, n: int, b0: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stays and latent truth of one hospital in one admission month."""
    rng = derive_rng(seed, f"sepsis/{pop.name}/{profile.name}/{month}")
    patients = sample_patients(profile, n, rng)
    patients["month"] = (month - 1) % 12 + 1
    z = rng.normal(size=n)
    offset = np.full(n, profile.prevalence_offset)
    p_sepsis = expit(b0 + sepsis_logit_parts(patients, z, offset))
    sepsis = rng.random(n) < p_sepsis
    r = np.where(sepsis, profile.sepsis_intensity * rng.gamma(2.0, 0.5, n), 0.0)
    acuity = 0.5 * z + profile.mimic_sd * rng.normal(size=n)
    true = physiology(acuity, r, patients, rng)
    bias = oximetry_bias(patients["race_ethnicity"].to_numpy(), true["sao2"].to_numpy(), rng)
    measured = true.drop(columns="sao2")
    measured["spo2"] = np.clip(np.round(true["sao2"].to_numpy() + bias), 50.0, 100.0)
    ordered = order_labs(measured, patients["race_ethnicity"].to_numpy(), profile, rng)
    for panel, features in PANELS.items():
        for feature in features:
            measured.loc[~ordered[panel], feature] = np.nan
    for feature in ("heart_rate", "resp_rate", "temperature_c", "sbp", "map", "spo2", "gcs"):
        rate = _VITAL_MISSING.get(feature, _DEFAULT_VITAL_MISSING)
        measured.loc[rng.random(n) < rate, feature] = np.nan
    ids = [
        f"{profile.code}-{month_label(pop.first_year, month).replace('-', '')}-{i:05d}"
        for i in range(n)
    ]
    stays = pd.DataFrame(
        {
            "stay_id": ids,
            "hospital": profile.name,
            "admit_month": month_label(pop.first_year, month),
            "window_hours": profile.window_hours,
            "window_end_hour": np.round(rng.uniform(6.0, 72.0, n), 1),
            "sex": patients["sex"].to_numpy(),
            "race_ethnicity": patients["race_ethnicity"].to_numpy(),
            "age_band": patients["age_band"].to_numpy(),
            **{f: _rounded(f, measured, patients) for f in FEATURES},
            "sepsis": sepsis.astype(np.int64),
            "simulated": True,
        }
    )
    if pop.test_fraction:
        stays["split"] = np.where(rng.random(n) < pop.test_fraction, "test", "train")
    latent = pd.DataFrame(
        {
            "stay_id": ids,
            "sao2": true["sao2"].round(2).to_numpy(),
            "spo2_bias": bias.round(2),
            "acuity": acuity.round(4),
            "sepsis_intensity": r.round(4),
            "sepsis_probability": p_sepsis.round(6),
            **{f"ordered_{p}": ordered[p] for p in PANELS},
        }
    )
    return stays, latent


_DECIMALS = {"temperature_c": 1, "wbc": 1, "lactate": 1, "creatinine": 2, "bilirubin": 1}


def _rounded(feature: str, measured: pd.DataFrame, patients: pd.DataFrame) -> np.ndarray:
    values = patients[feature] if feature in patients.columns else measured[feature]
    return values.to_numpy(dtype=float).round(_DECIMALS.get(feature, 0))


def _simulate(
    pop: Population, n_stays: int, seed: int, months: tuple[int, ...]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    b0 = _intercept(pop, seed)
    stays, latent = [], []
    for name, n_h in hospital_counts(pop.hospitals, n_stays).items():
        per_month = split_counts({f"{m:02d}": 1.0 for m in range(1, 13)}, n_h)
        for month in months:
            n = per_month[f"{(month - 1) % 12 + 1:02d}"]
            s, lat = _chunk(pop, pop.hospitals[name], month, n, b0, seed)
            stays.append(s)
            latent.append(lat)
    columns = [c for c in (*STAY_COLUMNS, "split") if c in stays[0].columns]
    return (
        pd.concat(stays, ignore_index=True).loc[:, columns],
        pd.concat(latent, ignore_index=True).loc[:, list(_LATENT_COLUMNS)],
    )


def _check_months(months: tuple[int, ...] | None) -> tuple[int, ...]:
    out = tuple(range(1, 13)) if months is None else tuple(sorted(set(months)))
    if not out or any(not isinstance(m, int | np.integer) or m < 1 for m in out):
        raise ValueError(f"months={months!r}: pass month indices >= 1 (1 = first January)")
    return out


def simulate_network(
    scale: str | SepsisScale = "demo", *, seed: int = 0, months: tuple[int, ...] | None = None
) -> SepsisCohort:
    """Simulate the audited network's ICU stays (four hospitals, one row per stay).

    Parameters
    ----------
    scale : {"tiny", "demo", "full"} or SepsisScale
        Stays per 12 months (~600 / ~6,000 / ~18,000).
    seed : int
        Seed of every random draw (same seed, same cohort).
    months : tuple of int, optional
        Admission months to draw (1 = January 2024, 13 = January 2025); default 1-12. Each month
        is drawn independently of the others.

    Returns
    -------
    SepsisCohort
        ``stays`` with the columns of ``sepsis_tables.STAY_COLUMNS`` except ``source_row``,
        ``latent`` and ``truth`` (see :func:`cohort_truth`).

    Examples
    --------
    >>> cohort = simulate_network("tiny", seed=0)
    >>> cohort.truth["disadvantaged"]["group"]
    'Black'
    """
    sc = _resolve_scale(scale)
    stays, latent = _simulate(NETWORK, sc.network_stays, seed, _check_months(months))
    return SepsisCohort(stays, latent, cohort_truth(NETWORK, stays, latent, seed=seed, scale=sc))


def simulate_vendor_population(scale: str | SepsisScale = "demo", *, seed: int = 0) -> SepsisCohort:
    """Simulate the vendor's development population (training data of the vendor model).

    Two other hospitals (``vendor_north``, ``vendor_south``; admissions 2021), 3-4 % Black
    patients instead of ~20 %, fewer sepsis mimics, windows closer to onset and lactate ordered
    mainly on suspicion of sepsis. ``stays`` has an extra ``split`` column: ``test`` for ~25 % of
    stays (the vendor's held-out set), else ``train``.

    Parameters
    ----------
    scale : {"tiny", "demo", "full"} or SepsisScale
        Stays (~1,000 / ~10,000 / ~24,000).
    seed : int
        Seed of every random draw.

    Returns
    -------
    SepsisCohort
    """
    sc = _resolve_scale(scale)
    stays, latent = _simulate(VENDOR, sc.vendor_stays, seed, tuple(range(1, 13)))
    return SepsisCohort(stays, latent, cohort_truth(VENDOR, stays, latent, seed=seed, scale=sc))


def _rates(frame: pd.DataFrame, by: str, column: str) -> dict[str, float]:
    return {str(k): round(float(v), 4) for k, v in frame.groupby(by)[column].mean().items()}


def _share(hospitals: dict[str, HospitalProfile], race: str) -> float:
    total = sum(p.share for p in hospitals.values())
    return round(sum(p.share * p.race_share(race) for p in hospitals.values()) / total, 4)


def cohort_truth(
    pop: Population,
    stays: pd.DataFrame,
    latent: pd.DataFrame,
    *,
    seed: int,
    scale: SepsisScale,
) -> dict[str, Any]:
    """The ground-truth sidecar: disadvantaged group, mechanisms and their measured sizes.

    Returns
    -------
    dict
        JSON-ready. ``disadvantaged`` = ``{"attribute": "race_ethnicity", "group": "Black",
        "metric": "tpr", ...}``; ``mechanisms`` lists ``pulse_oximetry_bias``,
        ``lactate_ordering`` and ``vendor_underrepresentation`` with their parameters and the
        sizes measured in this cohort.
    """
    both = stays.merge(latent, on="stay_id")
    both["lactate_measured"] = both["lactate"].notna()
    low = min(pop.hospitals.values(), key=lambda p: dict(p.order_base)["lactate"])
    return {
        "format": TRUTH_FORMAT,
        "simulated": True,
        "population": pop.name,
        "seed": int(seed),
        "scale": scale.name,
        "n_stays": len(stays),
        "prevalence": round(float(stays["sepsis"].mean()), 4),
        "prevalence_by_hospital": _rates(stays, "hospital", "sepsis"),
        "hospitals": {h: p.description for h, p in sorted(pop.hospitals.items())},
        "disadvantaged": {
            "attribute": "race_ethnicity",
            "group": OXIMETRY_GROUP,
            "metric": "tpr",
            "direction": "lower",
            "why": "hidden hypoxemia lowers the score and the chance that lactate is ordered",
        },
        "mechanisms": [
            {
                "name": "pulse_oximetry_bias",
                "attribute": "race_ethnicity",
                "group": OXIMETRY_GROUP,
                "feature": "spo2",
                "design_bias_points": OXIMETRY_BIAS,
                "design_bias_points_other": OTHER_OXIMETRY_BIAS,
                "design_extra_points_per_point_below_94": OXIMETRY_SLOPE,
                "measured_bias_by_race": _rates(both, "race_ethnicity", "spo2_bias"),
                "reference": "Sjoding MW et al. Racial bias in pulse oximetry measurement. "
                "N Engl J Med 2020;383:2477-8",
            },
            {
                "name": "lactate_ordering",
                "hospital": low.name,
                "feature": "lactate",
                "design_group_logit_offset": GROUP_ORDER_OFFSET,
                "measured_rate_by_hospital": _rates(both, "hospital", "lactate_measured"),
                "measured_rate_by_race": _rates(both, "race_ethnicity", "lactate_measured"),
            },
            {
                "name": "vendor_underrepresentation",
                "attribute": "race_ethnicity",
                "group": OXIMETRY_GROUP,
                "vendor_share": _share(VENDOR_HOSPITALS, OXIMETRY_GROUP),
                "network_share": _share(NETWORK_HOSPITALS, OXIMETRY_GROUP),
            },
        ],
    }


def write_sepsis_batch(
    landing_root: str | os.PathLike[str],
    frame: pd.DataFrame,
    batch_id: str,
    *,
    site: str | None = None,
    fmt: Literal["parquet", "csv"] = "parquet",
    created_utc: str = CREATED_UTC,
) -> Path:
    """Land one batch: ``<landing_root>/sepsis_ews/<site>/<batch_id>/stays.<fmt>`` + manifest.

    Parameters
    ----------
    landing_root : path
        Root of the landing area.
    frame : pandas.DataFrame
        The stays of the batch (``source_row`` is dropped if present).
    batch_id : str
        Batch directory name (safe name, e.g. ``"2024-01"``); must not exist yet.
    site : str, optional
        Site directory; default the single ``hospital`` of ``frame``.
    fmt : {"parquet", "csv"}
        File format of the stays table.
    created_utc : str
        Timestamp recorded in the manifest (fixed by default: reproducible bytes).

    Returns
    -------
    Path
        The batch directory. ``manifest.json`` is written last and records
        ``simulated = all(frame["simulated"])`` (False without that column).

    Raises
    ------
    LandingError
        If a name is unsafe or the batch directory exists (landed batches are immutable).
    ValueError
        If ``site`` is not given and ``frame`` holds several hospitals, or ``fmt`` is unknown.
    """
    if fmt not in ("parquet", "csv"):
        raise ValueError(f"fmt={fmt!r} is not one of ['parquet', 'csv']")
    if site is None:
        hospitals = sorted(set(frame["hospital"].astype(str)))
        if len(hospitals) != 1:
            raise ValueError(
                f"frame holds hospitals {hospitals}; pass site=... or write one hospital per batch"
            )
        site = hospitals[0]
    batch_dir = Path(landing_root) / STUDY / validate_name("site", site)
    batch_dir = batch_dir / validate_name("batch", batch_id)
    if batch_dir.exists():
        raise LandingError(batch_dir, "batch already exists", "use a new batch id")
    batch_dir.mkdir(parents=True)
    table = frame.drop(columns=["source_row"], errors="ignore").reset_index(drop=True)
    name = f"stays.{fmt}"
    if fmt == "parquet":
        table.to_parquet(batch_dir / name, index=False)
    else:
        table.to_csv(batch_dir / name, index=False, lineterminator="\n")
    simulated = bool("simulated" in table.columns and table["simulated"].astype(bool).all())
    write_manifest(
        batch_dir,
        study=STUDY,
        site=site,
        batch=batch_id,
        label_file=name,
        label_layout=MANIFEST_LAYOUT,
        simulated=simulated,
        created_utc=created_utc,
    )
    return batch_dir


def land_network(
    landing_root: str | os.PathLike[str],
    truth_root: str | os.PathLike[str],
    *,
    scale: str | SepsisScale = "demo",
    seed: int = 0,
    months: tuple[int, ...] | None = None,
    fmt: Literal["parquet", "csv"] = "parquet",
) -> SepsisCohort:
    """Simulate the network and land one batch per hospital and admission month.

    Batches are ``<landing_root>/sepsis_ews/<hospital>/<YYYY-MM>/``. The truth sidecar goes to
    ``<truth_root>/sepsis_ews/truth.json`` (and the latent per-stay truth to ``latent.parquet``),
    never into the landing area.

    Returns
    -------
    SepsisCohort
        The cohort that was landed.
    """
    cohort = simulate_network(scale, seed=seed, months=months)
    for (hospital, month), part in cohort.stays.groupby(["hospital", "admit_month"], sort=True):
        write_sepsis_batch(landing_root, part, str(month), site=str(hospital), fmt=fmt)
    truth_dir = Path(truth_root) / STUDY
    truth_dir.mkdir(parents=True, exist_ok=True)
    doc = json.dumps(cohort.truth, indent=1, sort_keys=True, allow_nan=False) + "\n"
    (truth_dir / "truth.json").write_text(doc, encoding="utf-8")
    cohort.latent.to_parquet(truth_dir / "latent.parquet", index=False)
    return cohort
