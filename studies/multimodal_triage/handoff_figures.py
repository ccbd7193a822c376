"""Figures of the ``multimodal_triage`` hand-off document, as deterministic SVG bytes (report kit).

Only stored evidence is drawn: the risk-coverage curves of the review score and of the
max-softmax baseline (evidence table ``risk_coverage``) with the certified rule's coverage
marked.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from clinaudit.reporting.report_figures import PAGE_WIDTH_IN, svg_bytes

from .evidence import SCOPES

__all__ = ["risk_coverage_svg"]

_COLORS = {"review score": "#1f5fa8", "max-softmax baseline": "#777777"}
_FONT = 7.0


def risk_coverage_svg(
    curves: pd.DataFrame,
    *,
    alpha_error: float,
    coverage: dict[str, float],
    simulated: bool,
) -> bytes:
    """Selective risk (error of the accepted outputs) against coverage, one panel per scope.

    Parameters
    ----------
    curves : DataFrame
        Evidence table ``risk_coverage`` (``coverage``, ``selective_risk``, ``scope``,
        ``score``).
    alpha_error : float
        The certified limit on the error of accepted outputs (dashed horizontal line).
    coverage : dict of str to float
        Scope -> coverage the certified rule reached there (dotted vertical line; NaN: none).
    simulated : bool
        Marks the figure SIMULATED DATA.
    """

    def build() -> plt.Figure:
        scopes = [s for s in SCOPES if (curves["scope"] == s).any()]
        fig, axes = plt.subplots(1, len(scopes), figsize=(PAGE_WIDTH_IN, 1.85), squeeze=False)
        for ax, scope in zip(axes[0], scopes, strict=True):
            part = curves[curves["scope"] == scope]
            for score, rows in part.groupby("score", sort=False):
                ax.plot(
                    rows["coverage"], rows["selective_risk"], label=str(score),
                    color=_COLORS.get(str(score), "black"), lw=1.1,
                )  # fmt: skip
            ax.axhline(alpha_error, color="#b0302a", lw=0.7, ls="--", label="alpha_error")
            cov = coverage.get(scope, float("nan"))
            if cov == cov and cov > 0:
                ax.axvline(cov, color="#2e7d32", lw=0.8, ls=":", label="certified coverage")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_xlabel("coverage (share of outputs accepted)", fontsize=_FONT)
            ax.set_ylabel("error of accepted", fontsize=_FONT)
            ax.set_title(SCOPES[scope], fontsize=_FONT + 1, loc="left")
            ax.tick_params(labelsize=_FONT)
            ax.grid(alpha=0.3, lw=0.5)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=_FONT - 0.5,
                   frameon=False)  # fmt: skip
        if simulated:
            fig.suptitle("SIMULATED DATA", fontsize=_FONT + 1, color="#b00000")
        fig.tight_layout(rect=(0, 0.1, 1, 1))
        return fig

    return svg_bytes(build)
