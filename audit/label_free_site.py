"""Label-free estimates over a site's findings, and scoring frozen estimates once labels land.

:func:`estimate_site` runs :func:`~clinaudit.audit.label_free.estimate_cell` for every finding of
a multi-label model (one gate per finding, so a drifted score withholds only its own cells, and
the caller's image-level drift withholds all of them). :func:`score_estimates` compares estimates
frozen in an earlier signed package with what the site's labels show, against the baseline of
carrying the reference value forward: per cell the error, whether the interval covered, and per
metric the mean absolute error, bias and coverage of both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from .label_free import GateResult, estimate_cell, support_gate
from .types import AuditInputError

__all__ = ["SCORE_COLUMNS", "estimate_site", "realised_metrics", "score_estimates"]

SCORE_COLUMNS: tuple[str, ...] = (
    "finding", "metric", "estimate", "ci_low", "ci_high", "realised", "reference", "error",
    "baseline_error", "covered", "n_labelled",
)  # fmt: skip


def realised_metrics(y: Any, s: Any, threshold: float) -> dict[str, float]:
    """AUROC, sensitivity, specificity, accuracy and prevalence of labels ``y`` and scores ``s``.

    >>> realised_metrics([1, 1, 0, 0], [0.9, 0.4, 0.6, 0.1], 0.5)["auroc"]
    0.75
    """
    y = np.asarray(y, dtype=bool).ravel()
    s = np.asarray(s, dtype=float).ravel()
    n1, n0 = int(y.sum()), int((~y).sum())
    flagged = s >= threshold
    auroc = np.nan
    if n1 and n0:
        auroc = float((rankdata(s)[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))
    return {
        "auroc": auroc,
        "sensitivity": float(flagged[y].mean()) if n1 else np.nan,
        "specificity": float((~flagged[~y]).mean()) if n0 else np.nan,
        "accuracy": float((flagged == y).mean()) if y.size else np.nan,
        "prevalence": float(y.mean()) if y.size else np.nan,
    }


def estimate_site(
    reference: pd.DataFrame,
    target: pd.DataFrame,
    *,
    findings: Sequence[str],
    thresholds: Mapping[str, float],
    drift: Mapping[str, str] | None = None,
    n_boot: int = 500,
    ci_level: float = 0.90,
    seed: int = 0,
    site: str = "site",
    min_class: int = 10,
) -> pd.DataFrame:
    """Label-free estimates of every finding of one unlabelled site.

    Parameters
    ----------
    reference : DataFrame
        Labelled reference rows: ``score_<finding>`` and ``<finding>`` (0/1; NaN = not labelled).
    target : DataFrame
        The unlabelled site's ``score_<finding>`` columns.
    findings : sequence of str
        The model's findings.
    thresholds : mapping
        Operating threshold per finding.
    drift : mapping, optional
        Failed image-level drift checks (name -> reason): they withhold every cell.
    n_boot, ci_level, seed : int, float, int
        Of :func:`~clinaudit.audit.label_free.estimate_cell`.
    site : str
        Names the bootstrap streams.
    min_class : int
        Fewest reference positives and negatives a finding needs (as the labelled audit's
        ``min_pos`` / ``min_neg``); below it the finding's cells are withheld, saying so.

    Returns
    -------
    DataFrame
        ``finding`` and :data:`~clinaudit.audit.label_free.ESTIMATE_COLUMNS` per cell.
    """
    missing = [f for f in findings if f"score_{f}" not in target.columns or f not in thresholds]
    if missing:
        raise AuditInputError(
            "findings", repr(missing), "a score_<finding> column and a threshold each",
            "score the site with the audited model and pass its operating thresholds",
        )  # fmt: skip
    out = []
    for f in findings:
        ref = reference[[f"score_{f}", f]].dropna()
        ts = target[f"score_{f}"].to_numpy(float)
        n_pos = int((ref[f] == 1).sum())
        n_neg = len(ref) - n_pos
        if min(n_pos, n_neg) < min_class:
            reason = (
                f"not estimable: the reference has {n_pos} positives and {n_neg} negatives "
                f"(fewer than {min_class})"
            )
            gate = GateResult(False, reason, float("nan"))
        else:
            gate = support_gate(ref[f"score_{f}"], ts, drift=drift)
        cell = estimate_cell(
            ref[f"score_{f}"], ref[f], ts, threshold=float(thresholds[f]), n_boot=n_boot,
            ci_level=ci_level, gate=gate, seed=seed, key=f"label_free/{site}/{f}",
        )  # fmt: skip
        out.append(cell.assign(finding=f))
    frame = pd.concat(out, ignore_index=True)
    return frame[["finding", *[c for c in frame.columns if c != "finding"]]]


def score_estimates(
    frozen: pd.DataFrame,
    reference: pd.DataFrame,
    labelled: pd.DataFrame,
    *,
    thresholds: Mapping[str, float],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Frozen estimates vs what the landed labels show, against carrying the reference forward.

    Parameters
    ----------
    frozen : DataFrame
        :func:`estimate_site` output as signed in the earlier package (method ``cbpe`` rows are
        scored; withheld cells are listed with ``estimate`` NaN and never count as covered).
    reference : DataFrame
        The labelled reference (``score_<finding>``, ``<finding>``): the baseline's values.
    labelled : DataFrame
        The site's rows once labelled (``score_<finding>``, ``<finding>``).
    thresholds : mapping
        Operating threshold per finding.

    Returns
    -------
    cells : DataFrame
        :data:`SCORE_COLUMNS`, one row per (finding, metric).
    summary : DataFrame
        Per metric: cells, estimable cells, mean absolute error of the estimate and of the
        baseline, their ratio, mean bias and interval coverage.
    """
    rows = []
    for r in frozen[frozen["method"] == "cbpe"].itertuples():
        f = str(r.finding)
        lab = labelled[[f"score_{f}", f]].dropna()
        ref = reference[[f"score_{f}", f]].dropna()
        thr = float(thresholds[f])
        real = realised_metrics(lab[f], lab[f"score_{f}"], thr)[r.metric]
        base = realised_metrics(ref[f], ref[f"score_{f}"], thr)[r.metric]
        est = float(r.estimate)
        rows.append({
            "finding": f, "metric": r.metric, "estimate": est, "ci_low": r.ci_low,
            "ci_high": r.ci_high, "realised": real, "reference": base, "error": est - real,
            "baseline_error": base - real,
            "covered": bool(np.isfinite(est) and r.ci_low <= real <= r.ci_high),
            "n_labelled": len(lab),
        })  # fmt: skip
    cells = pd.DataFrame(rows, columns=list(SCORE_COLUMNS))
    summary = []
    for metric, g in cells.groupby("metric", sort=False):
        ok = g[np.isfinite(g["estimate"]) & np.isfinite(g["realised"])]
        mae, base = ok["error"].abs().mean(), ok["baseline_error"].abs().mean()
        summary.append({
            "metric": metric, "cells": len(g), "estimable": len(ok), "mae": mae,
            "baseline_mae": base, "ratio": mae / base if base else np.nan,
            "bias": ok["error"].mean(), "coverage": ok["covered"].mean() if len(ok) else np.nan,
        })  # fmt: skip
    return cells, pd.DataFrame(summary)
