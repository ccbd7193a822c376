"""Figures of the printed report: print-size matplotlib figures saved as deterministic SVG files.

The builders live in :mod:`clinaudit.reporting.figures` (shared with the Dagster metadata); this
module sizes them for an A4 page (fonts given at the size they print), marks them simulated, and
saves them as SVG bytes that depend only on the data: fixed hash salt, no date, no creator tag,
text drawn as paths with the DejaVu Sans font that matplotlib ships.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from clinaudit.reporting.figures import (
    auroc_heatmap_figure,
    drift_bars_figure,
    reliability_diagrams_figure,
)

#: Folder of the figure files, relative to the report HTML.
FIGURE_DIR = "figures"
#: Text width of the A4 report page in inches (210 mm - 2 x 15 mm margins).
PAGE_WIDTH_IN = 7.0

_RC = {
    "svg.hashsalt": "clinaudit-report",
    "svg.fonttype": "none",
    "font.family": "DejaVu Sans",
    "path.simplify": True,
}


@dataclass(frozen=True)
class FigureFile:
    """One figure of the report: its file name, bytes and the text that goes with it.

    Attributes
    ----------
    name : str
        File name inside :data:`FIGURE_DIR` (``"auroc_heatmap.svg"``).
    data : bytes
        The SVG file's bytes.
    alt : str
        Alternative text.
    caption : str
        Caption printed under the figure.
    width : str
        CSS width on the page (``"100%"``).
    """

    name: str
    data: bytes
    alt: str
    caption: str
    width: str = "100%"

    @property
    def path(self) -> str:
        """Path relative to the report HTML (``figures/<name>``)."""
        return f"{FIGURE_DIR}/{self.name}"


def svg_bytes(build: Callable[[], plt.Figure]) -> bytes:
    """Build a figure under the report's fixed rc settings and return deterministic SVG bytes.

    Parameters
    ----------
    build : callable
        Zero-argument function returning a matplotlib ``Figure``.
    """
    with plt.rc_context(_RC):
        fig = build()
        buf = io.BytesIO()
        try:
            fig.savefig(
                buf,
                format="svg",
                bbox_inches="tight",
                metadata={"Date": None, "Creator": None},
            )
        finally:
            plt.close(fig)
    return buf.getvalue()


def heatmap_svg(metrics: pd.DataFrame, *, targets: Sequence[str], simulated: bool) -> bytes:
    """Findings (rows) x groups (columns) AUROC heatmap with CIs, sized for the page width."""
    n_groups = metrics["group"].nunique()
    height = 0.28 * len(targets) + 1.0
    return svg_bytes(
        lambda: auroc_heatmap_figure(
            metrics,
            targets=targets,
            simulated=simulated,
            targets_as_rows=True,
            show_n_pos=True,
            figsize=(min(PAGE_WIDTH_IN, 1.4 + 0.95 * n_groups), height),
            fontsize=6.0,
        )
    )


def reliability_svg(
    reliability: pd.DataFrame,
    cells: Sequence[tuple[str, str]],
    subtitles: Sequence[str],
    *,
    simulated: bool,
    panel_height: float = PAGE_WIDTH_IN / 4 + 0.35,
) -> bytes:
    """Reliability diagrams of some cells, four panels per row across the page.

    Parameters
    ----------
    reliability : DataFrame
        Reliability table (``group``, ``target``, ``binning``, ``count``, ``mean_predicted``,
        ``observed_rate``, ``observed_ci_low``, ``observed_ci_high``).
    cells : sequence of (group, target)
        The panels, in order.
    subtitles : sequence of str
        Second title line of each panel (e.g. its ECE).
    simulated : bool
        Marks the figure SIMULATED DATA.
    panel_height : float
        Inches; each panel is a quarter of the page width wide.
    """
    ncols = min(4, max(1, len(cells)))
    return svg_bytes(
        lambda: reliability_diagrams_figure(
            reliability,
            cells,
            simulated=simulated,
            ncols=ncols,
            panel_size=PAGE_WIDTH_IN / 4,
            panel_height=panel_height,
            fontsize=6.5,
            subtitles=subtitles,
        )
    )


def drift_svg(
    drift: pd.DataFrame,
    *,
    features: Sequence[str],
    simulated: bool,
    psi_moderate: float,
    psi_major: float,
) -> bytes:
    """PSI per site for the given numeric features, with the moderate / major thresholds."""
    return svg_bytes(
        lambda: drift_bars_figure(
            drift,
            simulated=simulated,
            psi_moderate=psi_moderate,
            psi_major=psi_major,
            features=features,
            figsize=(PAGE_WIDTH_IN, 2.1),
            fontsize=7.0,
        )
    )


def write_figures(figures: Iterable[FigureFile], out_dir: Path | str) -> list[Path]:
    """Write the figure files under ``out_dir/figures/`` and return their paths (sorted).

    Parameters
    ----------
    figures : iterable of FigureFile
        Usually ``view.figures`` of a report view model.
    out_dir : path
        The folder the report HTML is rendered from (its ``base_url``).
    """
    folder = Path(out_dir) / FIGURE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for fig in figures:
        path = folder / fig.name
        path.write_bytes(fig.data)
        paths.append(path)
    return sorted(paths)
