"""Skin-tone groupings of the audit: Fitzpatrick types, grouped types and ITA bands.

>>> fitzpatrick_group(pd.Series([1.0, 4.0, 6.0, None])).tolist()
['I-II', 'III-IV', 'V-VI', 'not recorded']
>>> ita_band(pd.Series([60.0, 30.0, -40.0])).tolist()
['very light (>55)', 'intermediate (28-41)', 'dark (<-30)']
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["ITA_BANDS", "ROMAN", "annotator_agreement", "fitzpatrick_group", "fitzpatrick_type",
           "ita_band"]  # fmt: skip

ROMAN = {1: "I", 2: "II", 3: "III", 4: "IV", 5: "V", 6: "VI"}
_GROUP = {1: "I-II", 2: "I-II", 3: "III-IV", 4: "III-IV", 5: "V-VI", 6: "V-VI"}
#: Individual typology angle bands (Chardon et al. 1991; degrees, lower edge inclusive).
ITA_BANDS: tuple[tuple[str, float], ...] = (
    ("very light (>55)", 55.0),
    ("light (41-55)", 41.0),
    ("intermediate (28-41)", 28.0),
    ("tan (10-28)", 10.0),
    ("brown (-30-10)", -30.0),
    ("dark (<-30)", -np.inf),
)
NOT_RECORDED = "not recorded"


def fitzpatrick_type(values: pd.Series) -> pd.Series:
    """Fitzpatrick type as a Roman numeral (``not recorded`` when missing)."""
    return values.map(lambda v: ROMAN.get(int(v), NOT_RECORDED) if pd.notna(v) else NOT_RECORDED)


def fitzpatrick_group(values: pd.Series) -> pd.Series:
    """I-II / III-IV / V-VI (``not recorded`` when missing)."""
    return values.map(lambda v: _GROUP.get(int(v), NOT_RECORDED) if pd.notna(v) else NOT_RECORDED)


def ita_band(values: pd.Series) -> pd.Series:
    """ITA band of each photo's measured ITA (``not measured`` when NaN)."""

    def band(v: float) -> str:
        if not np.isfinite(v):
            return "not measured"
        return next(name for name, low in ITA_BANDS if v > low or low == -np.inf)

    return values.astype(float).map(band)


def annotator_agreement(a: pd.Series, b: pd.Series) -> dict[str, float]:
    """Exact and within-one-type agreement of two annotators, and Cohen's kappa (exact)."""
    both = pd.DataFrame({"a": a, "b": b}).dropna()
    n = len(both)
    if not n:
        return {"n": 0, "exact": np.nan, "within_one": np.nan, "kappa": np.nan}
    exact = float((both["a"] == both["b"]).mean())
    within = float(((both["a"] - both["b"]).abs() <= 1).mean())
    pa = both["a"].value_counts(normalize=True)
    pb = both["b"].value_counts(normalize=True)
    chance = float(sum(pa.get(k, 0.0) * pb.get(k, 0.0) for k in set(pa.index) | set(pb.index)))
    kappa = (exact - chance) / (1.0 - chance) if chance < 1 else np.nan
    return {"n": n, "exact": exact, "within_one": within, "kappa": kappa}
