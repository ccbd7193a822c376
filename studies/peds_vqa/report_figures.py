"""Figures of the peds_vqa evaluation report (deterministic SVG, marked SIMULATED when so)."""

from __future__ import annotations

import io

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from clinaudit.reporting.report_figures import PAGE_WIDTH_IN, svg_bytes

__all__ = ["auroc_svg", "maps_svg", "reliability_counts_svg"]

_SIM = "SIMULATED DATA"


def _title(text: str, simulated: bool) -> str:
    return f"{text} - {_SIM}" if simulated else text


def reliability_counts_svg(reliability: pd.DataFrame, ece_text: dict[str, str], *,
                           simulated: bool) -> bytes:  # fmt: skip
    """Reliability diagram per evaluation set: observed rate (Wilson 95% CI) against mean
    P(yes) per bin, the diagonal, and each bin's count printed above it."""
    sets = [s for s in ("evaluation_set", "pooled_test") if (reliability["set"] == s).any()]

    def build() -> plt.Figure:
        fig, axes = plt.subplots(1, len(sets), figsize=(PAGE_WIDTH_IN * 0.9, 3.1), squeeze=False)
        for ax, name in zip(axes[0], sets, strict=True):
            t = reliability[(reliability["set"] == name) & (reliability["n"] > 0)]
            ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--")
            err = np.vstack([t["frac_pos"] - t["frac_pos_ci_low"],
                             t["frac_pos_ci_high"] - t["frac_pos"]])  # fmt: skip
            ax.errorbar(t["mean_p"], t["frac_pos"], yerr=err, fmt="o", ms=3, lw=0.8,
                        color="#1f4e79", capsize=2)  # fmt: skip
            for x, y, n in zip(t["mean_p"], t["frac_pos_ci_high"], t["n"], strict=True):
                ax.annotate(str(int(n)), (x, min(1.0, y) + 0.02), ha="center", fontsize=5.5)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.1)
            ax.set_xlabel("mean recalibrated P(yes) in bin")
            ax.set_ylabel("observed share of yes")
            label = "200-question evaluation set" if name == "evaluation_set" else "pooled test"
            ax.set_title(f"{label}\n{ece_text.get(name, '')}", fontsize=7)
        fig.suptitle(_title("Reliability of P(yes), tuned model (bin counts above)", simulated),
                     fontsize=7.5)  # fmt: skip
        fig.tight_layout()
        return fig

    return svg_bytes(build)


def auroc_svg(operating: pd.DataFrame, *, simulated: bool) -> bytes:
    """AUROC (DeLong 95% CI) per category on the pooled test set: the base model (pretrained
    on adult films, or a local checkpoint) zero-shot against the LoRA-tuned model."""
    pooled = operating[operating["set"] == "pooled_test"]
    cats = sorted(pooled["group"].unique())

    def build() -> plt.Figure:
        fig, ax = plt.subplots(figsize=(PAGE_WIDTH_IN * 0.7, 2.2))
        for k, (model, colour) in enumerate((("base", "#9e9e9e"), ("tuned", "#1f4e79"))):
            t = pooled[pooled["model"] == model].set_index("group").loc[cats]
            x = np.arange(len(cats)) + (k - 0.5) * 0.35
            err = np.vstack([t["auroc"] - t["auroc_ci_low"], t["auroc_ci_high"] - t["auroc"]])
            label = "base, zero-shot" if model == "base" else "LoRA-tuned on children"
            ax.bar(x, t["auroc"], width=0.35, color=colour, label=label)
            ax.errorbar(x, t["auroc"], yerr=np.nan_to_num(err), fmt="none", ecolor="black",
                        lw=0.7, capsize=2)  # fmt: skip
        ax.axhline(0.5, color="0.5", lw=0.6, ls=":")
        ax.set_xticks(np.arange(len(cats)), [c.replace("_", " ") for c in cats])
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("AUROC (95% CI)")
        ax.legend(fontsize=6, loc="lower right")
        ax.set_title(_title("Base zero-shot vs LoRA-tuned on children", simulated), fontsize=7.5)
        fig.tight_layout()
        return fig

    return svg_bytes(build)


def _overlay(ax: plt.Axes, pixels: np.ndarray, saliency: np.ndarray | None, box: tuple) -> None:
    n = pixels.shape[0]
    ax.imshow(pixels, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    if saliency is not None:
        k = n // saliency.shape[0]
        ax.imshow(np.kron(saliency, np.ones((k, k))), cmap="inferno", alpha=0.45, vmin=0,
                  vmax=1, interpolation="bilinear")  # fmt: skip
    x0, y0, x1, y1 = (v * n for v in box)
    ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                               edgecolor="#00e676", lw=0.9))  # fmt: skip
    ax.set_xticks([])
    ax.set_yticks([])


def maps_svg(examples: pd.DataFrame, arrays: bytes, *, simulated: bool) -> bytes:
    """Example true-positive answers: the image with the ground-truth box, the Grad-CAM map and
    the attention-rollout map (two examples per row); ``arrays``: the evidence's npz file."""
    rows = (len(examples) + 1) // 2
    npz = np.load(io.BytesIO(arrays))

    def build() -> plt.Figure:
        fig, axes = plt.subplots(rows, 6, figsize=(PAGE_WIDTH_IN, 1.25 * rows + 0.4),
                                 squeeze=False)  # fmt: skip
        for ax in axes.ravel():
            ax.axis("off")
        for i, r in enumerate(examples.itertuples()):
            k = int(r.example)
            pixels = npz[f"pixels_{k}"].astype(float)
            box = (r.x0, r.y0, r.x1, r.y1)
            row, col = divmod(i, 2)
            for j, (name, sal) in enumerate((
                ("image + box", None),
                ("Grad-CAM", npz[f"gradcam_{k}"].astype(float)),
                ("rollout", npz[f"rollout_{k}"].astype(float)),
            )):  # fmt: skip
                ax = axes[row, 3 * col + j]
                ax.axis("on")
                _overlay(ax, pixels, sal, box)
                title = f"{r.category.replace('_', ' ')} p={r.p:.2f}" if j == 0 else name
                ax.set_title(title, fontsize=5.5)
        fig.suptitle(_title("Where the tuned model looks (green: ground-truth box)", simulated),
                     fontsize=7.5)  # fmt: skip
        fig.tight_layout()
        return fig

    return svg_bytes(build)
