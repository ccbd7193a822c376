"""The model card's content: the vendor's statements and the summary of the development data.

:class:`ModelCard` is what a vendor states about a model (who supplies it, intended use, operating
thresholds, held-out AUROC); :func:`summarize_training_data` builds its
:class:`TrainingDataSummary` from the ingest output. :func:`clinaudit.models.package.save_package`
writes both into ``model_card.json`` (format described in :mod:`clinaudit.models.package`) and
:func:`~clinaudit.models.package.load_package` reads them back.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from clinaudit.sources.cxr_labels import FINDINGS


@dataclass(frozen=True)
class TrainingDataSummary:
    """Description of a model's development data, as written into the model card."""

    sites: tuple[str, ...]
    n_images: int
    n_patients: int
    images_per_site: Mapping[str, int]
    prevalence: Mapping[str, float]
    n_labelled: Mapping[str, int]
    demographics: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    quality: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        out = dataclasses.asdict(self)
        out["sites"] = list(self.sites)
        return json_safe(out)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingDataSummary:
        """Inverse of :meth:`to_dict` (``null`` numbers become NaN)."""
        return cls(
            sites=tuple(data["sites"]),
            n_images=int(data["n_images"]),
            n_patients=int(data["n_patients"]),
            images_per_site={str(k): int(v) for k, v in data["images_per_site"].items()},
            prevalence=floats_or_nan(data["prevalence"]),
            n_labelled={str(k): int(v) for k, v in data["n_labelled"].items()},
            demographics={k: floats_or_nan(v) for k, v in data.get("demographics", {}).items()},
            quality={k: floats_or_nan(v) for k, v in data.get("quality", {}).items()},
        )


@dataclass(frozen=True)
class ModelCard:
    """The human part of the model card; ``save_package`` adds adapter, config and weights hash.

    Parameters
    ----------
    vendor : str
        Who supplies the model.
    intended_use : str
        Intended use and population.
    operating_thresholds : mapping of str to float
        Probability threshold per label (every label of the adapter config, values in [0, 1]).
    training_data : TrainingDataSummary, optional
        Development data summary (see :func:`summarize_training_data`).
    validation_auroc : mapping of str to float
        The vendor's held-out AUROC per label (NaN where undefined).
    description : str
        Free text.
    created_utc : str
        ISO-8601 timestamp; empty means "now" when the package is saved.
    lineage : mapping, optional
        For a model derived from another package (e.g. focused re-training): the parent's
        ``package_sha256``, the method and the data used. ``None`` for an original model.
    """

    vendor: str
    intended_use: str
    operating_thresholds: Mapping[str, float]
    training_data: TrainingDataSummary | None = None
    validation_auroc: Mapping[str, float] = field(default_factory=dict)
    description: str = ""
    created_utc: str = ""
    lineage: Mapping[str, Any] | None = None


def json_safe(value: Any) -> Any:
    """Replace NaN/inf by None and numpy scalars by Python ones, recursively.

    Parameters
    ----------
    value : Any
        A number, string, mapping, list or tuple (nested).

    Returns
    -------
    Any
        The same structure, ready for ``json.dumps(..., allow_nan=False)``.
    """
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def floats_or_nan(data: Mapping[str, Any]) -> dict[str, float]:
    """Mapping of str to float with JSON ``null`` read back as NaN (undoes :func:`json_safe`)."""
    return {str(k): (math.nan if v is None else float(v)) for k, v in data.items()}


def _numeric_summary(values: pd.Series) -> dict[str, float]:
    x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    ok = x[np.isfinite(x)]
    stats = {"missing_fraction": float(1 - ok.size / x.size) if x.size else math.nan}
    if ok.size:
        p05, med, p95 = np.percentile(ok, [5, 50, 95])
        stats |= {
            "mean": float(ok.mean()),
            "std": float(ok.std()),
            "p05": float(p05),
            "median": float(med),
            "p95": float(p95),
        }
    return stats


def summarize_training_data(
    table: pd.DataFrame,
    *,
    labels: Sequence[str] = FINDINGS,
    demographic_columns: Sequence[str] = (),
    quality_columns: Sequence[str] = (),
) -> TrainingDataSummary:
    """Summarise a development table (ingest output) for the model card.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per image with ``site``, ``patient_pseudonym`` and one 0/1/NaN column per label.
    labels : sequence of str
        Label columns.
    demographic_columns : sequence of str
        Columns summarised as category fractions (numeric columns: mean/std/percentiles).
    quality_columns : sequence of str
        Image-quality feature columns summarised as mean/std/percentiles.

    Returns
    -------
    TrainingDataSummary
        The summary.

    Raises
    ------
    ValueError
        If a named column is absent (the message lists the missing ones).
    """
    needed = ["site", "patient_pseudonym", *labels, *demographic_columns, *quality_columns]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ValueError(
            f"summarize_training_data: columns {missing} are not in the table (it has "
            f"{list(table.columns)}); pass the ingest output table or adjust the column lists"
        )
    prevalence, n_labelled = {}, {}
    for label in labels:
        y = pd.to_numeric(table[label], errors="coerce")
        n_labelled[label] = int(y.notna().sum())
        prevalence[label] = float(y.mean()) if n_labelled[label] else math.nan
    demographics: dict[str, dict[str, float]] = {}
    for col in demographic_columns:
        series = table[col]
        if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            demographics[col] = _numeric_summary(series)
        else:
            fractions = series.astype("object").fillna("missing").astype(str)
            demographics[col] = {
                str(k): float(v) for k, v in fractions.value_counts(normalize=True).items()
            }
    per_site = table["site"].astype(str).value_counts().sort_index()
    return TrainingDataSummary(
        sites=tuple(per_site.index),
        n_images=len(table),
        n_patients=int(table["patient_pseudonym"].nunique()),
        images_per_site={str(k): int(v) for k, v in per_site.items()},
        prevalence=prevalence,
        n_labelled=n_labelled,
        demographics=demographics,
        quality={col: _numeric_summary(table[col]) for col in quality_columns},
    )
