"""Figures of the sepsis_ews report: print-size matplotlib figures as deterministic SVG bytes.

Each builder takes an audit table (of :class:`~clinaudit.studies.sepsis_ews.result.
SepsisAuditResult`) and returns SVG bytes through :func:`clinaudit.reporting.report_figures.
svg_bytes` (fixed hash salt, no dates, DejaVu Sans), marked SIMULATED when the data are simulated.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from clinaudit.reporting import report_figures
from clinaudit.reporting.figures import psi_bars
from clinaudit.reporting.report_figures import PAGE_WIDTH_IN, svg_bytes

_SIM = "SIMULATED DATA"
_FONT = 7.0
_BLUE, _RED, _GREY = "#1f5fa8", "#b0302a", "#777777"


def _title(ax: plt.Axes, text: str, simulated: bool) -> None:
    ax.set_title(text + (f" - {_SIM}" if simulated else ""), fontsize=_FONT + 1.5, loc="left")


def _ok(frame: pd.DataFrame, col: str) -> pd.DataFrame:
    return frame[(frame["status"] == "ok") & np.isfinite(frame[col].astype(float))]


def _err(part: pd.DataFrame, col: str) -> np.ndarray:
    lo = (part[col] - part[f"{col}_ci_low"]).clip(lower=0)
    hi = (part[f"{col}_ci_high"] - part[col]).clip(lower=0)
    return np.vstack([lo.fillna(0).to_numpy(float), hi.fillna(0).to_numpy(float)])


def _label(attribute: str, group: str) -> str:
    return "network" if attribute == "overall" else f"{attribute}: {group}"


def auroc_forest_svg(discrimination: pd.DataFrame, *, simulated: bool) -> bytes:
    """AUROC (95% CI) of the network, each hospital and each group, the vendor's claim as a line."""
    rows = _ok(discrimination[discrimination["attribute"] != "vendor_card"], "auroc")
    vendor = discrimination[discrimination["attribute"] == "vendor_card"]

    def build() -> plt.Figure:
        labels = [_label(a, g) for a, g in zip(rows["attribute"], rows["group"], strict=True)]
        fig, ax = plt.subplots(figsize=(PAGE_WIDTH_IN, 0.17 * len(rows) + 0.9))
        y = np.arange(len(rows))[::-1]
        ax.errorbar(
            rows["auroc"],
            y,
            xerr=_err(rows, "auroc"),
            fmt="o",
            ms=3,
            color=_BLUE,
            ecolor=_BLUE,
            elinewidth=0.9,
            capsize=1.5,
        )
        if len(vendor):
            v = float(vendor["auroc"].iloc[0])
            ax.axvline(v, color=_RED, lw=0.9, ls="--", label=f"vendor held-out AUROC {v:.2f}")
            ax.legend(
                fontsize=_FONT - 0.5,
                loc="lower left",
                bbox_to_anchor=(0.0, 1.0),
                frameon=False,
                borderaxespad=0.2,
            )
        ax.axvline(0.5, color=_GREY, lw=0.6)
        ax.set_yticks(y, labels=labels, fontsize=_FONT - 0.5)
        ax.set_xlim(0.45, 1.0)
        ax.set_xlabel("AUROC (95% CI)", fontsize=_FONT)
        ax.tick_params(axis="x", labelsize=_FONT - 0.5)
        ax.grid(axis="x", lw=0.3, color="#dddddd")
        ax.set_title(
            "Discrimination by hospital and group" + (f" - {_SIM}" if simulated else ""),
            fontsize=_FONT + 1.5,
            loc="right",
        )
        fig.tight_layout()
        return fig

    return svg_bytes(build)


def reliability_svg(
    reliability: pd.DataFrame,
    cells: Sequence[tuple[str, str]],
    subtitles: Sequence[str],
    *,
    simulated: bool,
) -> bytes:
    """Reliability diagrams (equal-width bins, Wilson CIs) of ``(attribute, group)`` cells."""
    part = reliability.copy()
    part["group"] = [_label(a, g) for a, g in zip(part["attribute"], part["group"], strict=True)]
    keys = [(_label(a, g), "sepsis") for a, g in cells]
    return report_figures.reliability_svg(
        part, keys, subtitles, simulated=simulated, panel_height=PAGE_WIDTH_IN / 4 + 0.3
    )


def group_rates_svg(
    rates: pd.DataFrame, attributes: Sequence[str], *, simulated: bool, threshold: float
) -> bytes:
    """TPR and FPR (95% CI) per group of each attribute at the operating threshold."""
    overall = rates[rates["attribute"] == "overall"].iloc[0]

    def build() -> plt.Figure:
        fig, axes = plt.subplots(
            1, len(attributes), figsize=(PAGE_WIDTH_IN, 2.05), sharey=True, squeeze=False
        )
        for ax, attr in zip(axes[0], attributes, strict=True):
            part = rates[(rates["attribute"] == attr) & ~rates["is_intersection"].astype(bool)]
            part = part.reset_index(drop=True)
            x = np.arange(len(part))
            ok = part["status"] == "ok"
            for metric, colour, dx in (("tpr", _BLUE, -0.12), ("fpr", _RED, 0.12)):
                sub = part[ok]
                ax.errorbar(
                    x[ok] + dx,
                    sub[metric],
                    yerr=_err(sub, metric),
                    fmt="o",
                    ms=3,
                    color=colour,
                    elinewidth=0.9,
                    capsize=1.5,
                    label=metric.upper(),
                )
            ax.axhline(overall["tpr"], color=_BLUE, lw=0.6, ls=":")
            ax.set_xticks(
                x,
                labels=[
                    f"{g}\n(n+={n})" for g, n in zip(part["group"], part["n_pos"], strict=True)
                ],
                fontsize=_FONT - 1.5,
            )
            ax.set_title(attr, fontsize=_FONT)
            ax.set_ylim(0, 1)
            ax.tick_params(axis="y", labelsize=_FONT - 1)
            ax.grid(axis="y", lw=0.3, color="#dddddd")
        axes[0][0].set_ylabel(f"rate at score >= {threshold:.3f}", fontsize=_FONT - 0.5)
        axes[0][0].legend(fontsize=_FONT - 1, frameon=False, loc="upper left")
        fig.suptitle(
            "TPR (sensitivity) and FPR per group, 95% CI; dotted: network TPR"
            + (f" - {_SIM}" if simulated else ""),
            fontsize=_FONT + 1,
            x=0.01,
            ha="left",
        )
        fig.tight_layout()
        return fig

    return svg_bytes(build)


def mitigation_svg(
    mitigation: pd.DataFrame, attribute: str, metric: str, *, simulated: bool
) -> bytes:
    """Each group's targeted rate before and after every mitigation method (out-of-fold)."""
    part = mitigation[(mitigation["quantity"] == metric) & (mitigation["attribute"] == attribute)]
    part = part[part["status"] == "ok"]
    methods = list(dict.fromkeys(part["method"]))
    groups = list(dict.fromkeys(part["group"]))

    def build() -> plt.Figure:
        fig, ax = plt.subplots(figsize=(PAGE_WIDTH_IN * 0.62, 0.24 * len(groups) + 0.8))
        y = np.arange(len(groups))[::-1]
        first = part[part["method"] == methods[0]].set_index("group").reindex(groups)
        ax.errorbar(
            first["before"],
            y,
            xerr=_err(first, "before"),
            fmt="o",
            ms=3.5,
            color=_GREY,
            capsize=1.5,
            elinewidth=0.8,
            label="vendor threshold",
        )
        for k, (method, colour) in enumerate(zip(methods, (_BLUE, _RED, "#2a8a3a"), strict=False)):
            sub = part[part["method"] == method].set_index("group").reindex(groups)
            ax.errorbar(
                sub["after"],
                y - 0.18 * (k + 1),
                xerr=_err(sub, "after"),
                fmt="s",
                ms=3,
                color=colour,
                capsize=1.5,
                elinewidth=0.8,
                label=method.replace("_", " "),
            )
        ax.set_yticks(y - 0.15, labels=groups, fontsize=_FONT - 0.5)
        ax.set_xlim(0, 1)
        ax.set_xlabel(f"{metric.upper()} (95% CI), out-of-fold", fontsize=_FONT)
        ax.tick_params(axis="x", labelsize=_FONT - 0.5)
        ax.grid(axis="x", lw=0.3, color="#dddddd")
        ax.legend(fontsize=_FONT - 1, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        _title(ax, f"{metric.upper()} by {attribute}: before and after", simulated)
        fig.tight_layout()
        return fig

    return svg_bytes(build)


def drift_svg(
    drift: pd.DataFrame, features: Sequence[str], *, simulated: bool, moderate: float, major: float
) -> bytes:
    """PSI against the card per feature, network and each hospital, with the two levels."""
    numeric = drift[(drift["kind"] == "numeric") & (drift["status"] == "ok")]
    numeric = numeric[numeric["scope"].isin(["network", "hospital"])]
    groups = list(dict.fromkeys(numeric["group"]))

    def build() -> plt.Figure:
        fig, ax = plt.subplots(figsize=(PAGE_WIDTH_IN, 1.95))
        psi_bars(
            ax,
            numeric,
            features,
            groups,
            clip=1.0,
            levels=((moderate, "orange", f"PSI {moderate:g}"), (major, _RED, f"PSI {major:g}")),
            rotation=35,
            fontsize=_FONT - 1,
            legend_fontsize=_FONT - 1.5,
            labels={"all": "network"},
            colors={"all": _BLUE},
        )
        ax.set_ylabel("PSI vs card (clipped at 1)", fontsize=_FONT - 0.5)
        ax.set_title(
            "Input drift against the vendor's training data" + (f" - {_SIM}" if simulated else ""),
            fontsize=_FONT + 1,
            loc="left",
            pad=16,
        )
        fig.tight_layout()
        return fig

    return svg_bytes(build)
