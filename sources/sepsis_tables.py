"""The stays table of study ``sepsis_ews``: its columns, allowed values, and the CSV/Parquet reader.

One row per ICU stay (the prediction window of an early-warning score). The full format, with
units and examples, is in ``docs/sepsis_formats.md``; this module is its single source of truth:

* identifiers: ``stay_id`` (unique), ``hospital``, ``admit_month`` (``YYYY-MM``),
  ``window_hours`` (length of the prediction window), ``window_end_hour`` (hours from ICU
  admission to the end of the window);
* protected attributes: ``sex``, ``race_ethnicity``, ``age_band`` (values in
  :data:`CATEGORIES`);
* model features :data:`FEATURES`, each summarised over the window (:data:`FEATURE_SPECS` gives
  unit, summary statistic and the physically possible range); labs may be missing (blank / NaN);
* the outcome ``sepsis`` (0/1) and, optionally, ``simulated`` (true for simulator output).

:data:`REQUIRED_COLUMNS` is what every table must have (what a scores-only audit needs);
:data:`OPTIONAL_COLUMNS` may be left out (the model features but ``age``, the window end).
``docs/sepsis_formats.md`` lists the same two sets (``tests/test_sepsis_contract.py`` checks it).

:func:`summarize_stays` describes a table (size, prevalence, per-feature quantiles and missing rate,
group composition): the training-data summary of a vendor model card.

:func:`read_stays` reads a user's CSV (text kept verbatim, so the validator can name a value it
cannot parse) or Parquet file and adds ``source_row``: the 1-based line of the row in a CSV (header
= line 1), and for Parquet the data-row position + 1 on the same scale. Row-level checks live in
:mod:`clinaudit.studies.sepsis_ews.schema`.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

STUDY = "sepsis_ews"
#: Name of the stays table inside a landed batch (``stays.csv`` is accepted as well).
STAYS_FILE = "stays.parquet"
STAYS_SUFFIXES: tuple[str, ...] = (".csv", ".parquet")


@dataclass(frozen=True)
class FeatureSpec:
    """One model feature: unit, how it is summarised over the window, possible range."""

    name: str
    unit: str
    summary: str
    low: float
    high: float
    unit_hint: str = ""


#: Model features in the order the vendor model expects them.
FEATURE_SPECS: tuple[FeatureSpec, ...] = (
    FeatureSpec("heart_rate", "beats/min", "max", 0, 300),
    FeatureSpec("resp_rate", "breaths/min", "max", 0, 80),
    FeatureSpec(
        "temperature_c", "degrees C", "most extreme", 25, 45, "values 77-113 are Fahrenheit"
    ),
    FeatureSpec("sbp", "mmHg", "min", 0, 300),
    FeatureSpec("map", "mmHg", "min", 0, 250),
    FeatureSpec("spo2", "%", "min", 0, 100, "values 0-1 are fractions: multiply by 100"),
    FeatureSpec("wbc", "10^9/L", "max", 0, 500),
    FeatureSpec("lactate", "mmol/L", "max", 0, 40, "mg/dL divided by 9.01 gives mmol/L"),
    FeatureSpec("creatinine", "mg/dL", "max", 0, 30, "umol/L divided by 88.4 gives mg/dL"),
    FeatureSpec("bilirubin", "mg/dL", "max", 0, 80, "umol/L divided by 17.1 gives mg/dL"),
    FeatureSpec("platelets", "10^9/L", "min", 0, 2000),
    FeatureSpec("gcs", "points", "min", 3, 15),
    FeatureSpec("age", "years", "at admission", 0, 120),
    FeatureSpec("comorbidity_index", "points (Charlson)", "at admission", 0, 40),
)
FEATURES: tuple[str, ...] = tuple(s.name for s in FEATURE_SPECS)
SPEC_BY_NAME: dict[str, FeatureSpec] = {s.name: s for s in FEATURE_SPECS}
#: Features that must be present on every row (the others may be blank: not measured).
REQUIRED_VALUES: tuple[str, ...] = ("age",)
#: Laboratory features (ordered by clinicians, so missing not at random).
LAB_FEATURES: tuple[str, ...] = (
    "wbc",
    "lactate",
    "creatinine",
    "bilirubin",
    "platelets",
)

SEX_VALUES: tuple[str, ...] = ("F", "M")
RACE_VALUES: tuple[str, ...] = ("Asian", "Black", "Hispanic", "Other", "Unknown", "White")
AGE_BANDS: tuple[str, ...] = ("18-44", "45-64", "65-79", "80+")
#: Lower age limit of each band (the upper limit is the next band's lower limit).
AGE_BAND_LOWER: dict[str, int] = {"18-44": 18, "45-64": 45, "65-79": 65, "80+": 80}
#: Allowed values of every categorical (protected-attribute) column.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "sex": SEX_VALUES,
    "race_ethnicity": RACE_VALUES,
    "age_band": AGE_BANDS,
}
ATTRIBUTES: tuple[str, ...] = tuple(CATEGORIES)

ID_COLUMNS: tuple[str, ...] = ("stay_id", "hospital", "admit_month")
WINDOW_COLUMNS: tuple[str, ...] = ("window_hours", "window_end_hour")
LABEL = "sepsis"
#: Canonical column order of the format (required and optional columns).
FORMAT_COLUMNS: tuple[str, ...] = (
    *ID_COLUMNS,
    *WINDOW_COLUMNS,
    *ATTRIBUTES,
    *FEATURES,
    LABEL,
)
#: Columns every stays table must have: what a scores-only audit needs (ids, hospital, month,
#: window, protected groups, the outcome and ``age``, which defines the age band). A table
#: without one of them is refused whole.
REQUIRED_COLUMNS: tuple[str, ...] = (
    *ID_COLUMNS,
    "window_hours",
    *ATTRIBUTES,
    *REQUIRED_VALUES,
    LABEL,
)
#: Columns a table may leave out: the window end (blank = not recorded), every model feature but
#: ``age`` (absent = not available; a model-package audit needs its card's features) and
#: ``simulated``. A present optional column is validated like any other.
OPTIONAL_COLUMNS: tuple[str, ...] = (
    *(c for c in FORMAT_COLUMNS if c not in REQUIRED_COLUMNS),
    "simulated",
)
#: Canonical column order of a validated stays table (an absent optional column stays absent).
STAY_COLUMNS: tuple[str, ...] = (*FORMAT_COLUMNS, "simulated", "source_row")
#: Quantiles of each feature recorded in a training-data summary.
QUANTILES: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


class StaysFileError(ValueError):
    """A stays file that cannot be read at all, with the path, the problem and the fix."""

    def __init__(self, path: str | os.PathLike[str], message: str, fix: str) -> None:
        self.path = str(path)
        self.message = message
        self.fix = fix
        super().__init__(f"{self.path}: {message}. Fix: {fix}")


def age_band(age: pd.Series) -> pd.Series:
    """Age band label of each age in years (``""`` below 18 or when missing).

    Examples
    --------
    >>> age_band(pd.Series([18.0, 44.9, 45.0, 80.0])).tolist()
    ['18-44', '18-44', '45-64', '80+']
    """
    lower = list(AGE_BAND_LOWER.values())
    bins = [*lower, float("inf")]
    cut = pd.cut(age, bins=bins, labels=list(AGE_BAND_LOWER), right=False)
    return cut.astype(object).where(cut.notna(), "").astype(str)


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(
            path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8-sig"
        )
    except UnicodeDecodeError as err:
        raise StaysFileError(path, f"not UTF-8 text ({err})", "export the CSV as UTF-8") from err
    except pd.errors.EmptyDataError as err:
        raise StaysFileError(
            path, "the file is empty", "export the stays table with its header line"
        ) from err
    except pd.errors.ParserError as err:
        raise StaysFileError(
            path,
            f"not a readable comma-separated table ({err})",
            "export one header line and one comma-separated row per stay",
        ) from err


def _csv_header(path: Path) -> list[str]:
    """Header names as written (pandas would rename a repeated ``x`` to ``x.1``)."""
    with open(path, encoding="utf-8-sig", newline="") as fh:
        return [name.strip() for name in next(csv.reader(fh), [])]


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise StaysFileError(
            path,
            f"not a readable Parquet file ({type(err).__name__}: {err})",
            "write the table with pandas.DataFrame.to_parquet or pyarrow.parquet.write_table",
        ) from err


def read_stays(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a stays table from CSV or Parquet, unvalidated, with ``source_row`` added.

    Parameters
    ----------
    path : path
        ``*.csv`` (UTF-8, comma-separated, one header line; a byte-order mark is accepted) or
        ``*.parquet``.

    Returns
    -------
    pandas.DataFrame
        The file's columns (names stripped of surrounding spaces; CSV values as text, exactly as
        written) plus ``source_row``. Pass it to
        :func:`clinaudit.studies.sepsis_ews.schema.validate_stays`.

    Raises
    ------
    StaysFileError
        If the file is absent, has another suffix, is empty or cannot be parsed, or has a column
        name twice.

    Examples
    --------
    >>> raw = read_stays("my_icu_stays.csv")  # doctest: +SKIP
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in STAYS_SUFFIXES:
        raise StaysFileError(
            path,
            f"unknown file type {suffix or '(none)'!r}; expected one of {list(STAYS_SUFFIXES)}",
            "export the stays table as .csv or .parquet",
        )
    if not path.is_file():
        raise StaysFileError(path, "file does not exist", "pass the path of the stays table")
    frame = _read_csv(path) if suffix == ".csv" else _read_parquet(path)
    names = _csv_header(path) if suffix == ".csv" else [str(c).strip() for c in frame.columns]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise StaysFileError(
            path, f"column(s) {repeated} appear more than once", "keep one column of each name"
        )
    frame.columns = names
    if "source_row" in frame.columns:
        raise StaysFileError(
            path, "column 'source_row' is reserved (clinaudit adds it)", "rename or drop it"
        )
    frame = frame.reset_index(drop=True)
    frame["source_row"] = range(2, len(frame) + 2)
    return frame


def _quantiles(values: pd.Series) -> dict[str, Any]:
    x = values.to_numpy(dtype=float)
    ok = x[np.isfinite(x)]
    out: dict[str, Any] = {
        "n": int(x.size),
        "missing_fraction": float(1 - ok.size / max(x.size, 1)),
    }
    if ok.size:
        out |= {"mean": float(ok.mean()), "std": float(ok.std())}
        out["quantiles"] = {
            f"{q:g}": float(v) for q, v in zip(QUANTILES, np.quantile(ok, QUANTILES), strict=True)
        }
    return out


def summarize_stays(train: pd.DataFrame, features: Sequence[str] = FEATURES) -> dict[str, Any]:
    """Training-data summary of the card: size, prevalence, features, group composition.

    Parameters
    ----------
    train : pandas.DataFrame
        The training stays (features, ``sepsis``, ``hospital``, ``admit_month`` and the
        protected attributes where present).
    features : sequence of str
        Features to summarise.

    Returns
    -------
    dict
        ``n_stays``, ``prevalence``, ``hospitals`` (name -> stays), ``admit_months`` (first, last),
        ``features`` (name -> ``n``, ``missing_fraction``, ``mean``, ``std``, ``quantiles``),
        ``groups`` (attribute -> category -> fraction) and ``prevalence_by_group``.
    """
    y = train[LABEL].astype(float)
    out: dict[str, Any] = {"n_stays": len(train), "prevalence": float(y.mean())}
    if "hospital" in train.columns:
        counts = train["hospital"].astype(str).value_counts().sort_index()
        out["hospitals"] = {str(k): int(v) for k, v in counts.items()}
    if "admit_month" in train.columns:
        months = train["admit_month"].astype(str)
        out["admit_months"] = [months.min(), months.max()]
    out["features"] = {f: _quantiles(pd.to_numeric(train[f], errors="coerce")) for f in features}
    groups, prevalence = {}, {}
    for attr in (a for a in ATTRIBUTES if a in train.columns):
        labels = train[attr].astype(str)
        groups[attr] = {
            str(k): float(v) for k, v in labels.value_counts(normalize=True).sort_index().items()
        }
        prevalence[attr] = {
            str(k): float(v) for k, v in y.groupby(labels).mean().sort_index().items()
        }
    out["groups"], out["prevalence_by_group"] = groups, prevalence
    if "simulated" in train.columns:
        out["simulated"] = bool(train["simulated"].astype(bool).any())
    return out
