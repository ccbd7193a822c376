"""Cohort and data-quality summaries across sites (feeds the UI and the report)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from clinaudit.audit.schemas import (
    OutputSchema,
    count_field,
    probability_field,
    schema_columns,
    validate_table,
)
from clinaudit.sources.cxr_labels import FINDINGS

#: Prefix of the prevalence columns of the cohort summary (``prev_<finding>``).
PREVALENCE_PREFIX = "prev_"


class CohortSummary(OutputSchema):
    """The cohort summary: one row per site (``NaN`` statistics for a site without images)."""

    site: Series[str] = pa.Field(unique=True)
    n_images: Series[int] = count_field()
    n_patients: Series[int] = count_field()
    n_quarantined: Series[int] = count_field()
    age_median: Series[float] = pa.Field(nullable=True, ge=0.0)
    female_share: Series[float] = probability_field()
    ap_share: Series[float] = probability_field()
    #: One column per finding (``prev_Effusion``, ...): positives / labelled images.
    prevalence: Series[float] = pa.Field(
        alias=rf"^{PREVALENCE_PREFIX}", regex=True, nullable=True, ge=0.0, le=1.0
    )


def prevalence_table(table: pd.DataFrame, findings: tuple[str, ...] = FINDINGS) -> pd.DataFrame:
    """Labelled count, positives and prevalence (0-1) per finding; NaN labels are not counted."""
    rows = []
    for f in findings:
        col = table[f] if f in table.columns else pd.Series(dtype=float)
        labelled = int(col.notna().sum())
        pos = int((col == 1).sum())
        rows.append(
            {
                "finding": f,
                "labelled": labelled,
                "positives": pos,
                "prevalence": round(pos / labelled, 4) if labelled else np.nan,
            }
        )
    return pd.DataFrame(rows).set_index("finding")


def cohort_summary(
    tables: Mapping[str, pd.DataFrame],
    quarantines: Mapping[str, pd.DataFrame],
    findings: tuple[str, ...] = FINDINGS,
) -> pd.DataFrame:
    """One row per site: images, patients, demographics, views, quarantine and prevalence.

    Parameters
    ----------
    tables : mapping
        Site -> validated image table.
    quarantines : mapping
        Site -> quarantine records.

    Returns
    -------
    DataFrame
        :class:`CohortSummary`, sorted by site; prevalence columns are named ``prev_<finding>``
        (0-1).
    """
    rows = []
    for site in sorted(tables):
        t = tables[site]
        q = quarantines.get(site, pd.DataFrame())
        row: dict[str, object] = {
            "site": site,
            "n_images": len(t),
            "n_patients": int(t["patient_pseudonym"].nunique()) if len(t) else 0,
            "n_quarantined": len(q),
            "age_median": float(t["age"].median()) if len(t) else np.nan,
            "female_share": float((t["sex"] == "F").mean()) if len(t) else np.nan,
            "ap_share": float((t["view_position"] == "AP").mean()) if len(t) else np.nan,
        }
        prev = prevalence_table(t, findings) if len(t) else None
        for f in findings:
            row[PREVALENCE_PREFIX + f] = (
                float(prev.loc[f, "prevalence"]) if prev is not None else np.nan
            )
        rows.append(row)
    # The columns also when there is no site (a table of no rows still has its columns).
    columns = [*schema_columns(CohortSummary), *(PREVALENCE_PREFIX + f for f in findings)]
    return validate_table(pd.DataFrame(rows, columns=columns), CohortSummary)
