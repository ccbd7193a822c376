"""Figures of the ``cxr_triage`` operations memo, as deterministic SVG bytes (report kit)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from clinaudit.reporting.report_figures import PAGE_WIDTH_IN, reliability_svg, svg_bytes

__all__ = ["POLICY_LABELS", "queue_svg", "calibration_svg"]

#: Reading policy -> its name in the memo.
POLICY_LABELS = {
    "fifo": "FIFO (arrival order)",
    "priority": "priority order",
    "priority_autoclear": "priority + auto-clear",
}
_COLORS = {"fifo": "#777777", "priority": "#1f5fa8", "priority_autoclear": "#2e7d32"}
_FONT = 7.0


def queue_svg(curves: pd.DataFrame, *, first_days: int, simulated: bool) -> bytes:
    """Expected abnormal studies read (left) and backlog left (right) per working day."""

    def build() -> plt.Figure:
        fig, (left, right) = plt.subplots(1, 2, figsize=(PAGE_WIDTH_IN, 2.3))
        for policy, part in curves.groupby("policy", sort=False):
            kw = {"color": _COLORS.get(str(policy), "black"), "lw": 1.2}
            left.plot(part["day"], part["abnormal_read"], label=POLICY_LABELS[str(policy)], **kw)
            right.plot(part["day"], part["pile_left"], **kw)
        for ax, title in (
            (left, "Expected abnormal studies read"),
            (right, "Backlog studies still unread"),
        ):
            ax.axvline(first_days, color="#b0302a", lw=0.7, ls="--")
            ax.set_xlabel("working day", fontsize=_FONT)
            ax.set_title(title, fontsize=_FONT + 1, loc="left")
            ax.tick_params(labelsize=_FONT)
            ax.grid(alpha=0.3, lw=0.5)
        left.legend(fontsize=_FONT - 0.5, frameon=False)
        if simulated:
            fig.suptitle("SIMULATED DATA", fontsize=_FONT + 1, color="#b00000")
        fig.tight_layout()
        return fig

    return svg_bytes(build)


def calibration_svg(
    reliability: pd.DataFrame, calibration: pd.DataFrame, *, simulated: bool
) -> bytes:
    """Reliability of P(abnormal) on the test split before and after temperature scaling."""
    groups = list(calibration["group"])
    subtitles = [f"ECE {float(e):.3f}" for e in calibration["ece_width"]]
    return reliability_svg(
        reliability, [(g, "abnormal") for g in groups], subtitles, simulated=simulated
    )
