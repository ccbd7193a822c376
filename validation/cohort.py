"""Cohort and data-quality summaries across sites (feeds the UI and the report)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from clinaudit.sources.cxr_labels import FINDINGS


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
        Sorted by site; prevalence columns are named ``prev_<finding>`` (0-1).
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
            row[f"prev_{f}"] = float(prev.loc[f, "prevalence"]) if prev is not None else np.nan
        rows.append(row)
    return pd.DataFrame(rows)
