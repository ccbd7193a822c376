"""Hospital profiles and the latent physiology model of the simulated sepsis cohorts.

Every stay is drawn from one generative story (no group is penalised on a score):

1. **Patient.** Sex, race/ethnicity and age from the hospital's mix; a Charlson-like comorbidity
   index rising with age; the admission month.
2. **Illness.** A latent severity ``z ~ N(0, 1)``; sepsis is Bernoulli with logit
   ``b0 + 0.6 z + 0.25 comorbidity_z + 0.2 age_z + hospital offset + winter season``, ``b0``
   solved so the population's expected prevalence equals its target. A septic stay has a
   derangement intensity ``r ~ intensity * Gamma(2, 0.5)`` (windows far from onset: small ``r``);
   half of septic stays have a respiratory source (``RESPIRATORY_SOURCE``), whose main sign is
   hypoxemia.
3. **Physiology** (true window summaries): every vital and lab moves with the non-infectious
   acuity ``0.5 z + mimic_sd * e`` (``e ~ N(0, 1)``: sepsis mimics such as cardiogenic shock,
   trauma, post-operative states) and with ``r``, plus noise. True arterial oxygen saturation
   (SaO2) falls with both, most in respiratory sepsis.
4. **Measurement.** Pulse oximetry overestimates SaO2 in Black patients (Sjoding et al., NEJM
   2020): ``SpO2 = SaO2 + bias`` with bias mean ``OXIMETRY_BIAS`` (+3 points) plus
   ``OXIMETRY_SLOPE`` (0.5) per point of SaO2 below 94, against +0.2 in other groups; SpO2 is
   rounded and capped at 100. Hypoxemia is hidden, so the stay looks less sick to the model and
   to the clinician. The size sits at the strong end of published estimates so that the
   resulting gap is visible at demo scale (~120 septic Black stays); it is a design choice.
5. **Lab ordering (missing not at random).** Clinicians order each panel (CBC: WBC + platelets;
   chemistry: creatinine; liver: bilirubin; lactate) with probability
   ``sigmoid(base[hospital, panel] + suspicion[hospital] * perceived + group offset)``, where
   ``perceived`` is computed from the *measured* vitals. Sicker-looking stays get more labs; a
   stay whose hypoxemia is hidden gets fewer; each hospital orders at its own rates (``hosp_d``
   rarely orders lactate) and ``GROUP_ORDER_OFFSET`` lowers lactate ordering for Black patients
   (a simulated assumption).

The vendor's development hospitals (:data:`VENDOR_HOSPITALS`) differ from the audited network
(:data:`NETWORK_HOSPITALS`): few Black patients, fewer sepsis mimics, windows closer to onset
(stronger derangement) and lactate ordered mainly when sepsis is suspected.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import expit

from clinaudit.sources.sepsis_tables import LAB_FEATURES, RACE_VALUES, age_band

#: Race/ethnicity categories the simulator draws (``Unknown`` is accepted in user data only).
SIM_RACES: tuple[str, ...] = ("White", "Black", "Hispanic", "Asian", "Other")
#: Lab panels and the features each one measures.
PANELS: dict[str, tuple[str, ...]] = {
    "cbc": ("wbc", "platelets"),
    "chemistry": ("creatinine",),
    "liver": ("bilirubin",),
    "lactate": ("lactate",),
}
#: Group whose pulse oximetry overestimates SaO2, and the mean bias (SpO2 points) at SaO2 >= 94.
OXIMETRY_GROUP = "Black"
OXIMETRY_BIAS = 3.0
OTHER_OXIMETRY_BIAS = 0.2
#: Extra overestimation per point of SaO2 below 94 in the affected group.
OXIMETRY_SLOPE = 0.5
#: Ordering-logit offsets per race/ethnicity and panel, applied at every hospital (a simulated
#: assumption: lactate is ordered less often for Black patients who look equally sick).
GROUP_ORDER_OFFSET: dict[str, dict[str, float]] = {"Black": {"lactate": -0.6}}
#: Share of septic stays with a respiratory source (pneumonia): hypoxemia is their main sign.
RESPIRATORY_SOURCE = 0.5
_PERCEIVED_CENTER = 2.5
_PERCEIVED_SCALE = 1.5

assert set(SIM_RACES) <= set(RACE_VALUES)
assert sorted(f for p in PANELS.values() for f in p) == sorted(LAB_FEATURES)


@dataclass(frozen=True)
class HospitalProfile:
    """Population, case mix and practice of one simulated hospital.

    ``race_mix`` gives probabilities in :data:`SIM_RACES` order. ``order_base`` gives the
    ordering logit of each panel of :data:`PANELS` for an average-looking stay; ``suspicion`` is
    how strongly perceived illness drives ordering.
    """

    name: str
    code: str
    description: str
    share: float
    race_mix: tuple[float, float, float, float, float]
    frac_female: float = 0.44
    age_mean: float = 63.0
    age_sd: float = 16.0
    comorbidity_rate: float = 1.0
    prevalence_offset: float = 0.0
    mimic_sd: float = 1.0
    sepsis_intensity: float = 1.0
    order_base: tuple[tuple[str, float], ...] = (
        ("cbc", 2.0),
        ("chemistry", 2.2),
        ("liver", 0.0),
        ("lactate", 0.0),
    )
    suspicion: float = 1.0
    window_hours: float = 6.0

    def __post_init__(self) -> None:
        if len(self.race_mix) != len(SIM_RACES) or abs(sum(self.race_mix) - 1.0) > 1e-9:
            raise ValueError(
                f"HospitalProfile {self.name!r}: race_mix={self.race_mix} must hold "
                f"{len(SIM_RACES)} probabilities ({SIM_RACES}) summing to 1"
            )
        unknown = sorted(set(dict(self.order_base)) ^ set(PANELS))
        if unknown:
            raise ValueError(
                f"HospitalProfile {self.name!r}: order_base must name exactly the panels "
                f"{list(PANELS)}; mismatched: {unknown}"
            )

    def race_share(self, race: str) -> float:
        """Probability of ``race`` in this hospital's mix."""
        return float(self.race_mix[SIM_RACES.index(race)])


def _orders(cbc: float, chemistry: float, liver: float, lactate: float) -> tuple:
    return (("cbc", cbc), ("chemistry", chemistry), ("liver", liver), ("lactate", lactate))


#: The audited hospital network (the deployment sites).
NETWORK_HOSPITALS: dict[str, HospitalProfile] = {
    "hosp_a": HospitalProfile(
        "hosp_a",
        "HA",
        "academic tertiary centre; broad lab protocols, many post-operative mimics",
        share=0.33,
        race_mix=(0.54, 0.20, 0.13, 0.08, 0.05),
        mimic_sd=1.6,
        sepsis_intensity=0.33,
        order_base=_orders(2.6, 2.8, 0.6, 0.9),
        suspicion=0.8,
    ),
    "hosp_b": HospitalProfile(
        "hosp_b",
        "HB",
        "urban safety-net hospital; younger, more comorbidity",
        share=0.27,
        race_mix=(0.25, 0.46, 0.20, 0.05, 0.04),
        age_mean=57.0,
        comorbidity_rate=1.25,
        mimic_sd=1.5,
        sepsis_intensity=0.33,
        order_base=_orders(2.2, 2.4, 0.1, 0.3),
        suspicion=1.0,
    ),
    "hosp_c": HospitalProfile(
        "hosp_c",
        "HC",
        "suburban community hospital; older patients, 4-hour prediction windows",
        share=0.22,
        race_mix=(0.72, 0.08, 0.09, 0.08, 0.03),
        age_mean=67.0,
        mimic_sd=1.4,
        sepsis_intensity=0.36,
        order_base=_orders(2.0, 2.2, -0.2, 0.0),
        suspicion=1.0,
        window_hours=4.0,
    ),
    "hosp_d": HospitalProfile(
        "hosp_d",
        "HD",
        "community hospital that rarely orders lactate",
        share=0.18,
        race_mix=(0.46, 0.36, 0.10, 0.03, 0.05),
        age_mean=61.0,
        comorbidity_rate=1.15,
        mimic_sd=1.5,
        sepsis_intensity=0.33,
        order_base=_orders(1.8, 2.0, -0.6, -1.8),
        suspicion=1.0,
    ),
}

#: The vendor's development hospitals (training population of the vendor model).
VENDOR_HOSPITALS: dict[str, HospitalProfile] = {
    "vendor_north": HospitalProfile(
        "vendor_north",
        "VN",
        "vendor development site: academic centre, lactate ordered on suspicion of sepsis",
        share=0.6,
        race_mix=(0.82, 0.03, 0.06, 0.06, 0.03),
        age_mean=64.0,
        mimic_sd=0.8,
        sepsis_intensity=0.5,
        order_base=_orders(2.4, 2.6, 0.0, -0.6),
        suspicion=1.6,
    ),
    "vendor_south": HospitalProfile(
        "vendor_south",
        "VS",
        "vendor development site: private hospital",
        share=0.4,
        race_mix=(0.79, 0.04, 0.09, 0.05, 0.03),
        age_mean=62.0,
        mimic_sd=0.8,
        sepsis_intensity=0.5,
        order_base=_orders(2.2, 2.4, -0.2, -0.8),
        suspicion=1.6,
    ),
}


def split_counts(shares: dict[str, float], n: int) -> dict[str, int]:
    """``n`` split in proportion to ``shares`` (largest remainders, exact total, sorted keys).

    Examples
    --------
    >>> split_counts({"a": 1.0, "b": 1.0, "c": 1.0}, 10)
    {'a': 4, 'b': 3, 'c': 3}
    """
    names = sorted(shares)
    weights = np.array([shares[k] for k in names], dtype=float)
    raw = n * weights / weights.sum()
    counts = np.floor(raw).astype(int)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return {k: int(c) for k, c in zip(names, counts, strict=True)}


def hospital_counts(hospitals: dict[str, HospitalProfile], n_stays: int) -> dict[str, int]:
    """Stays per hospital: ``n_stays`` split by ``share``."""
    return split_counts({h: p.share for h, p in hospitals.items()}, n_stays)


def sample_patients(profile: HospitalProfile, n: int, rng: np.random.Generator) -> pd.DataFrame:
    age = np.clip(rng.normal(profile.age_mean, profile.age_sd, n), 18.0, 99.0).round(0)
    lam = profile.comorbidity_rate * (0.6 + 0.045 * (age - 18.0))
    return pd.DataFrame(
        {
            "sex": np.where(rng.random(n) < profile.frac_female, "F", "M"),
            "race_ethnicity": rng.choice(np.array(SIM_RACES), size=n, p=profile.race_mix),
            "age": age,
            "age_band": age_band(pd.Series(age)).to_numpy(),
            "comorbidity_index": np.minimum(rng.poisson(lam), 20).astype(float),
            "month": rng.integers(1, 13, n),
        }
    )


def sepsis_logit_parts(patients: pd.DataFrame, z: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Sepsis logit without the intercept ``b0`` (acuity, comorbidity, age, hospital, season)."""
    season = 0.25 * np.cos(2.0 * np.pi * (patients["month"].to_numpy() - 1) / 12.0)
    comorb = (patients["comorbidity_index"].to_numpy() - 3.0) / 2.0
    age = (patients["age"].to_numpy() - 63.0) / 16.0
    return 0.6 * z + 0.25 * comorb + 0.2 * age + offset + season


def solve_intercept(parts: np.ndarray, prevalence: float) -> float:
    """Intercept ``b0`` with ``mean(expit(b0 + parts)) == prevalence`` (deterministic bisection)."""
    lo, hi = -20.0, 20.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if expit(mid + parts).mean() < prevalence:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _lognormal(rng: np.random.Generator, median: float, shift: np.ndarray, sd: float) -> np.ndarray:
    return np.exp(np.log(median) + shift + rng.normal(0.0, sd, shift.shape))


def physiology(
    acuity: np.ndarray,
    r: np.ndarray,
    patients: pd.DataFrame,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """True window summaries of vitals and labs (``sao2`` = true arterial saturation).

    Parameters
    ----------
    acuity : ndarray
        Non-infectious acuity (``mimic_sd * z``).
    r : ndarray
        Sepsis derangement intensity (0 for non-septic stays).
    patients : DataFrame
        ``age`` and ``comorbidity_index`` per stay.
    rng : numpy.random.Generator
        The stream.
    """
    n = len(r)
    a_pos = np.maximum(acuity, 0.0)
    fever = np.where(rng.random(n) < 0.15, -0.6, 0.8) * r
    lung = np.where(rng.random(n) < RESPIRATORY_SOURCE, r, 0.0)
    leuko = np.where(rng.random(n) < 0.1, -1.0, 1.0) * r
    sbp = (
        118 - 7 * acuity - 15 * r + 0.15 * (patients["age"].to_numpy() - 63) + rng.normal(0, 13, n)
    )
    sbp = np.clip(sbp, 45, 230)
    comorb = patients["comorbidity_index"].to_numpy()
    return pd.DataFrame(
        {
            "heart_rate": np.clip(88 + 9 * acuity + 18 * r + rng.normal(0, 11, n), 30, 220),
            "resp_rate": np.clip(
                19 + 2.5 * acuity + 4.0 * r + 4.0 * lung + rng.normal(0, 3.5, n), 6, 60
            ),
            "temperature_c": np.clip(
                37.3 + 0.15 * acuity + fever + rng.normal(0, 0.45, n), 32.0, 42.0
            ),
            "sbp": sbp,
            "map": np.clip(0.69 * sbp + rng.normal(0, 4.0, n), 30, sbp),
            "sao2": np.clip(
                96.5 - 1.3 * a_pos - 1.5 * r - 12.0 * lung + rng.normal(0, 1.8, n), 70.0, 100.0
            ),
            "wbc": _lognormal(rng, 9.5, 0.08 * acuity + 0.35 * leuko, 0.3),
            "lactate": _lognormal(rng, 1.4, 0.15 * acuity + 1.2 * r, 0.3),
            "creatinine": _lognormal(rng, 1.0, 0.1 * acuity + 0.25 * r + 0.04 * comorb, 0.35),
            "bilirubin": _lognormal(rng, 0.7, 0.06 * acuity + 0.3 * r, 0.45),
            "platelets": _lognormal(rng, 220.0, -0.06 * acuity - 0.22 * r, 0.33),
            "gcs": np.clip(
                np.round(15 - 1.0 * a_pos - 1.2 * r - np.abs(rng.normal(0, 1.0, n))), 3, 15
            ),
        }
    )


def oximetry_bias(race: np.ndarray, sao2: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pulse-oximetry overestimation (SpO2 - SaO2, points) per stay; see the module docstring."""
    affected = race == OXIMETRY_GROUP
    mean = np.where(
        affected, OXIMETRY_BIAS + OXIMETRY_SLOPE * np.maximum(94.0 - sao2, 0.0), OTHER_OXIMETRY_BIAS
    )
    return mean + rng.normal(0.0, 1.0, len(sao2))


def perceived_illness(measured: pd.DataFrame) -> np.ndarray:
    """How sick a stay looks from its *measured* vitals (standardised; drives lab ordering)."""
    temp = measured["temperature_c"].to_numpy()
    score = (
        0.035 * (measured["heart_rate"].to_numpy() - 90)
        + 0.12 * (measured["resp_rate"].to_numpy() - 20)
        + 0.8 * np.maximum(temp - 38.0, 0.0)
        + 0.8 * np.maximum(36.0 - temp, 0.0)
        + 0.03 * (100 - measured["sbp"].to_numpy())
        + 0.5 * np.maximum(95.0 - measured["spo2"].to_numpy(), 0.0)
        + 0.3 * (15 - measured["gcs"].to_numpy())
    )
    return (score - _PERCEIVED_CENTER) / _PERCEIVED_SCALE


def order_labs(
    measured: pd.DataFrame,
    race: np.ndarray,
    profile: HospitalProfile,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Whether each panel of :data:`PANELS` was ordered for each stay (bool arrays)."""
    perceived = perceived_illness(measured) + rng.normal(0.0, 0.7, len(measured))
    base = dict(profile.order_base)
    out = {}
    for panel in PANELS:
        logit = base[panel] + profile.suspicion * perceived
        for group, offsets in GROUP_ORDER_OFFSET.items():
            logit = logit + np.where(race == group, offsets.get(panel, 0.0), 0.0)
        out[panel] = rng.random(len(measured)) < expit(logit)
    return out
