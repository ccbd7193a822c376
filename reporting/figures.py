"""Figures of the audit (matplotlib, Agg backend): PNG bytes, deterministic for the same data.

Used by the Dagster metadata (small inline PNGs) and, later, by the PDF report.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

_SIMULATED_NOTE = "SIMULATED DATA"


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    # No timestamp or software tag in the file: the same data gives the same bytes.
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def markdown_image(png: bytes, alt: str) -> str:
    """An inline markdown image (data URI), for Dagster's markdown metadata."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


def auroc_heatmap(
    table: pd.DataFrame, *, targets: Sequence[str], simulated: bool, title: str = "AUROC"
) -> bytes:
    """Group x target AUROC heatmap; each cell shows the AUROC and its 95% CI, or "n/a".

    Parameters
    ----------
    table : DataFrame
        Discrimination table (``group``, ``target``, ``status``, ``auroc``, ``auroc_ci_low``,
        ``auroc_ci_high``).
    targets : sequence of str
        Column order.
    simulated : bool
        Adds a "SIMULATED DATA" note to the title.
    """
    groups = sorted(table["group"].unique())
    grid = np.full((len(groups), len(targets)), np.nan)
    text = [["n/a"] * len(targets) for _ in groups]
    idx = table.set_index(["group", "target"])
    for i, g in enumerate(groups):
        for j, t in enumerate(targets):
            if (g, t) not in idx.index:
                continue
            row = idx.loc[(g, t)]
            if row["status"] == "ok":
                grid[i, j] = row["auroc"]
                text[i][j] = (
                    f"{row['auroc']:.2f}\n[{row['auroc_ci_low']:.2f},{row['auroc_ci_high']:.2f}]"
                )
    fig, ax = plt.subplots(figsize=(1.0 * len(targets) + 2, 0.6 * len(groups) + 1.6))
    im = ax.imshow(grid, vmin=0.5, vmax=1.0, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(targets)), labels=targets, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(groups)), labels=groups, fontsize=8)
    for i in range(len(groups)):
        for j in range(len(targets)):
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=6)
    fig.colorbar(im, ax=ax, fraction=0.02)
    ax.set_title(
        f"{title} (95% CI; n/a = insufficient data)"
        + (f" - {_SIMULATED_NOTE}" if simulated else ""),
        fontsize=9,
    )
    return _png(fig)


def reliability_diagrams(
    reliability: pd.DataFrame,
    cells: Sequence[tuple[str, str]],
    *,
    simulated: bool,
    binning: str = "width",
) -> bytes:
    """Reliability diagrams (observed rate with Wilson CI vs mean predicted) for some cells."""
    n = max(1, len(cells))
    fig, axes = plt.subplots(1, n, figsize=(3.0 * n, 3.0), squeeze=False)
    for ax, (group, target) in zip(axes[0], cells, strict=False):
        part = reliability[
            (reliability["group"] == group)
            & (reliability["target"] == target)
            & (reliability["binning"] == binning)
            & (reliability["count"] > 0)
        ]
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        err = np.vstack(
            [
                part["observed_rate"] - part["observed_ci_low"],
                part["observed_ci_high"] - part["observed_rate"],
            ]
        )
        # The Wilson interval contains the observed rate; at rates of 0 or 1 its bound can land a
        # rounding error on the wrong side, which matplotlib rejects as a negative error bar.
        if (err < -1e-9).any():
            raise ValueError(f"{group}/{target}: observed rate outside its Wilson interval")
        err = np.clip(err, 0.0, None)
        ax.errorbar(part["mean_predicted"], part["observed_rate"], yerr=err, fmt="o-", ms=3)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{group} / {target}", fontsize=8)
        ax.set_xlabel("mean predicted", fontsize=7)
        ax.set_ylabel("observed rate", fontsize=7)
    if simulated:
        fig.suptitle(_SIMULATED_NOTE, fontsize=8)
    return _png(fig)


def drift_bars(
    drift: pd.DataFrame, *, simulated: bool, psi_moderate: float, psi_major: float
) -> bytes:
    """PSI per (site, numeric feature) as grouped bars with the moderate/major thresholds."""
    numeric = drift[drift["kind"] == "numeric"]
    features = list(dict.fromkeys(numeric["feature"]))
    groups = sorted(numeric["group"].unique())
    width = min(14.0, max(6.0, 0.25 * len(features) * max(1, len(groups))))
    fig, ax = plt.subplots(figsize=(width, 3.6))
    width = 0.8 / max(1, len(groups))
    for k, g in enumerate(groups):
        part = numeric[numeric["group"] == g].set_index("feature").reindex(features)
        ax.bar(np.arange(len(features)) + k * width, part["psi"].clip(upper=2.0), width, label=g)
    ax.axhline(psi_moderate, color="orange", lw=0.8, ls="--", label=f"PSI {psi_moderate}")
    ax.axhline(psi_major, color="red", lw=0.8, ls="--", label=f"PSI {psi_major}")
    ax.set_xticks(
        np.arange(len(features)) + 0.4 - width / 2,
        labels=features,
        rotation=45,
        ha="right",
        fontsize=7,
    )
    ax.set_ylabel("PSI (clipped at 2)")
    ax.legend(fontsize=6, ncol=4)
    ax.set_title(
        "Input drift vs reference site" + (f" - {_SIMULATED_NOTE}" if simulated else ""), fontsize=9
    )
    return _png(fig)
