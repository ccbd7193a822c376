"""Figures of the audit (matplotlib, Agg backend): PNG bytes, deterministic for the same data.

Each figure has a builder (``*_figure``, returns a matplotlib ``Figure`` with print-size options)
and a wrapper returning PNG bytes for the Dagster metadata (small inline PNGs). The PDF report
saves the builders' figures as files (:mod:`clinaudit.reporting.report_figures`).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

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


def _heatmap_cells(
    table: pd.DataFrame, groups: list[str], targets: Sequence[str], show_n_pos: bool
) -> tuple[np.ndarray, list[list[str]]]:
    """AUROC grid (groups x targets) and the text of each cell."""
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
            elif show_n_pos:
                text[i][j] = f"insufficient\n(n_pos={int(row['n_pos'])})"
    return grid, text


def auroc_heatmap_figure(
    table: pd.DataFrame,
    *,
    targets: Sequence[str],
    simulated: bool,
    title: str = "AUROC",
    targets_as_rows: bool = False,
    show_n_pos: bool = False,
    figsize: tuple[float, float] | None = None,
    fontsize: float = 6.0,
) -> plt.Figure:
    """Group x target AUROC heatmap; each cell shows the AUROC and its 95% CI.

    Parameters
    ----------
    table : DataFrame
        Discrimination table (``group``, ``target``, ``status``, ``n_pos``, ``auroc``,
        ``auroc_ci_low``, ``auroc_ci_high``).
    targets : sequence of str
        Target order.
    simulated : bool
        Adds a "SIMULATED DATA" note to the title.
    title : str
        Title prefix.
    targets_as_rows : bool
        Targets down the rows and groups across the columns (fits a portrait page).
    show_n_pos : bool
        Cells with too few cases say "insufficient (n_pos=k)" instead of "n/a".
    figsize : (float, float), optional
        Inches; by default sized from the number of cells.
    fontsize : float
        Cell text size (points at the figure's own size).
    """
    groups = sorted(table["group"].unique())
    grid, text = _heatmap_cells(table, groups, targets, show_n_pos)
    rows, cols = (list(targets), groups) if targets_as_rows else (groups, list(targets))
    if targets_as_rows:
        grid, text = grid.T, [list(col) for col in zip(*text, strict=True)]
    if figsize is None:
        figsize = (1.0 * len(cols) + 2, 0.6 * len(rows) + 1.6)
    fig, ax = plt.subplots(figsize=figsize)
    im = ax.imshow(grid, vmin=0.5, vmax=1.0, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(
        range(len(cols)),
        labels=cols,
        rotation=45 if not targets_as_rows else 0,
        ha="right" if not targets_as_rows else "center",
        fontsize=fontsize + 2,
    )
    ax.set_yticks(range(len(rows)), labels=rows, fontsize=fontsize + 2)
    if targets_as_rows:
        ax.xaxis.tick_top()
    for i in range(len(rows)):
        for j in range(len(cols)):
            # Light text on the dark ends of the colour map, dark text elsewhere.
            dark = np.isfinite(grid[i, j]) and not 0.6 <= grid[i, j] <= 0.93
            ax.text(
                j,
                i,
                text[i][j],
                ha="center",
                va="center",
                fontsize=fontsize,
                color="white" if dark else "black",
            )
    cbar = fig.colorbar(im, ax=ax, fraction=0.03)
    cbar.ax.tick_params(labelsize=fontsize + 1)
    missing = (
        "insufficient = too few positives or negatives" if show_n_pos else "n/a = insufficient data"
    )
    ax.set_title(
        f"{title} (95% CI; {missing})" + (f" - {_SIMULATED_NOTE}" if simulated else ""),
        fontsize=fontsize + 3,
    )
    return fig


def auroc_heatmap(
    table: pd.DataFrame, *, targets: Sequence[str], simulated: bool, title: str = "AUROC"
) -> bytes:
    """PNG of :func:`auroc_heatmap_figure` (groups as rows, "n/a" for insufficient cells)."""
    return _png(auroc_heatmap_figure(table, targets=targets, simulated=simulated, title=title))


def reliability_diagrams_figure(
    reliability: pd.DataFrame,
    cells: Sequence[tuple[str, str]],
    *,
    simulated: bool,
    binning: str = "width",
    ncols: int | None = None,
    panel_size: float = 3.0,
    panel_height: float | None = None,
    fontsize: float = 7.0,
    subtitles: Sequence[str] | None = None,
) -> plt.Figure:
    """Reliability diagrams (observed rate with Wilson CI vs mean predicted) for some cells.

    ``ncols`` panels per row (default: all in one row), each ``panel_size`` inches wide and
    ``panel_height`` high (default square); ``subtitles`` adds a second title line per cell
    (e.g. its ECE).
    """
    n = max(1, len(cells))
    ncols = n if ncols is None else max(1, min(ncols, n))
    nrows = -(-n // ncols)
    height = panel_size if panel_height is None else panel_height
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(panel_size * ncols, height * nrows), squeeze=False
    )
    for k, ax in enumerate(axes.flat):
        if k >= len(cells):
            ax.set_axis_off()
            continue
        group, target = cells[k]
        _reliability_panel(ax, reliability, group, target, binning, fontsize)
        if subtitles is not None:
            ax.set_title(f"{group} / {target}\n{subtitles[k]}", fontsize=fontsize + 1)
    if simulated:
        fig.suptitle(_SIMULATED_NOTE, fontsize=fontsize + 1, color="#b00000")
    fig.tight_layout()
    return fig


def _reliability_panel(
    ax: plt.Axes, reliability: pd.DataFrame, group: str, target: str, binning: str, fontsize: float
) -> None:
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
    ax.set_title(f"{group} / {target}", fontsize=fontsize + 1)
    ax.set_xlabel("mean predicted", fontsize=fontsize)
    ax.set_ylabel("observed rate", fontsize=fontsize)
    ax.tick_params(labelsize=fontsize - 1)


def reliability_diagrams(
    reliability: pd.DataFrame,
    cells: Sequence[tuple[str, str]],
    *,
    simulated: bool,
    binning: str = "width",
) -> bytes:
    """PNG of :func:`reliability_diagrams_figure` (one row of 3-inch panels)."""
    return _png(
        reliability_diagrams_figure(reliability, cells, simulated=simulated, binning=binning)
    )


def drift_bars_figure(
    drift: pd.DataFrame,
    *,
    simulated: bool,
    psi_moderate: float,
    psi_major: float,
    features: Sequence[str] | None = None,
    figsize: tuple[float, float] | None = None,
    fontsize: float = 7.0,
) -> plt.Figure:
    """PSI per (site, numeric feature) as grouped bars with the moderate/major thresholds.

    ``features`` restricts and orders the features shown (default: every numeric feature).
    """
    numeric = drift[drift["kind"] == "numeric"]
    if features is None:
        features = list(dict.fromkeys(numeric["feature"]))
    else:
        features = list(features)
        numeric = numeric[numeric["feature"].isin(features)]
    groups = sorted(numeric["group"].unique())
    if figsize is None:
        figsize = (min(14.0, max(6.0, 0.25 * len(features) * max(1, len(groups)))), 3.6)
    fig, ax = plt.subplots(figsize=figsize)
    psi_bars(
        ax,
        numeric,
        features,
        groups,
        clip=2.0,
        levels=(
            (psi_moderate, "orange", f"PSI {psi_moderate}"),
            (psi_major, "red", f"PSI {psi_major}"),
        ),
        rotation=45,
        fontsize=fontsize,
        legend_fontsize=fontsize - 1,
    )
    ax.set_ylabel("PSI (clipped at 2)", fontsize=fontsize + 1)
    ax.set_title(
        "Input drift vs reference site" + (f" - {_SIMULATED_NOTE}" if simulated else ""),
        fontsize=fontsize + 2,
        pad=fontsize * 2.6,
    )
    return fig


def psi_bars(
    ax: plt.Axes,
    numeric: pd.DataFrame,
    features: Sequence[str],
    groups: Sequence[str],
    *,
    clip: float,
    levels: Sequence[tuple[float, str, str]],
    rotation: float,
    fontsize: float,
    legend_fontsize: float,
    labels: Mapping[str, str] | None = None,
    colors: Mapping[str, str] | None = None,
) -> None:
    """Draw PSI as grouped bars (one bar per group within each feature) on ``ax``.

    Parameters
    ----------
    ax : matplotlib Axes
        Where to draw.
    numeric : DataFrame
        Drift rows with ``group``, ``feature`` and ``psi``.
    features, groups : sequence of str
        Bar groups along the x axis, and the bars within each (in this order).
    clip : float
        PSI values above are drawn at ``clip``.
    levels : sequence of (value, colour, label)
        Dashed horizontal lines (the drift levels), listed in the legend.
    rotation, fontsize : float
        Feature labels' angle and size (the y tick labels share the size).
    legend_fontsize : float
        Legend text size; the legend sits in one row above the axes.
    labels, colors : mapping, optional
        Legend label / bar colour of some groups (default: the group name / the colour cycle).
    """
    labels, colors = labels or {}, colors or {}
    x = np.arange(len(features))
    width = 0.8 / max(1, len(groups))
    for k, g in enumerate(groups):
        part = numeric[numeric["group"] == g].set_index("feature").reindex(list(features))
        ax.bar(
            x + k * width,
            part["psi"].clip(upper=clip),
            width,
            label=labels.get(g, g),
            color=colors.get(g),
        )
    for value, colour, label in levels:
        ax.axhline(value, color=colour, lw=0.8, ls="--", label=label)
    ax.set_xticks(
        x + 0.4 - width / 2, labels=list(features), rotation=rotation, ha="right", fontsize=fontsize
    )
    ax.tick_params(axis="y", labelsize=fontsize)
    ax.legend(
        fontsize=legend_fontsize,
        ncol=len(groups) + 2,
        loc="lower left",
        bbox_to_anchor=(0.0, 1.0),
        frameon=False,
    )


def drift_bars(
    drift: pd.DataFrame, *, simulated: bool, psi_moderate: float, psi_major: float
) -> bytes:
    """PNG of :func:`drift_bars_figure` (every numeric feature)."""
    return _png(
        drift_bars_figure(
            drift, simulated=simulated, psi_moderate=psi_moderate, psi_major=psi_major
        )
    )
