"""Scores of explanation maps (saliency, Grad-CAM, attention) against ground-truth boxes.

Conventions
-----------
A map is a 2-D non-negative array ``(h, w)`` over the whole image; cell ``(i, j)`` covers
``x in [j / w, (j + 1) / w]``, ``y in [i / h, (i + 1) / h]`` in normalised image coordinates
(``x`` to the right, ``y`` down). A box is ``(x0, y0, x1, y1)`` with ``0 <= x0 < x1 <= 1`` and
``0 <= y0 < y1 <= 1``.

Scores
------
* :func:`pointing_hit` (pointing game, Zhang et al. 2018, "Top-down neural attention by
  excitation backprop"): the centre of the map's maximal cell lies in the box grown by
  ``tolerance_cells`` cells on each side (default 1: the maximal cell or a neighbour touches the
  box; 0.5 means the maximal cell itself overlaps the box). With several maximal cells, a hit
  needs all of them inside (a flat map points nowhere).
* :func:`energy_in_box` (energy-based pointing game, Wang et al. 2020, "Score-CAM"): share of the
  map's mass inside the box, cells counted by the fraction of their area inside it. A uniform map
  scores exactly the box's area share (:func:`box_area`), the chance baseline.
* :func:`box_iou`: cells at or above the map's ``quantile`` (strictly above when that value is
  the map's minimum), the bounding box of the largest 8-connected component
  (``scipy.ndimage.label``), and its IoU with the box. A flat map selects nothing: IoU 0.
* :func:`deletion_insertion` (Petsiuk, Das & Saenko 2018, "RISE"): remove (deletion) or reveal
  (insertion) pixels in decreasing order of the map (bilinearly upsampled to the image) and record
  the model's ``p_yes``; AUC by the trapezoidal rule over the fraction of pixels, in ``[0, 1]``
  for probabilities. A faithful map gives a low deletion and a high insertion AUC.
* :func:`randomization_sanity` (Adebayo et al. 2018, "Sanity checks for saliency maps"):
  Spearman correlation between the maps of the trained model and of a model with randomised
  weights; a high similarity means the maps do not depend on what the model learned.

:func:`localization_table` scores many maps; :func:`summarize_localization` gives per category
the hit rate with a Wilson interval and bootstrap intervals of the mean energy and IoU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.stats import spearmanr

from .bootstrap import derive_rng, percentile_ci
from .calibration import wilson_interval
from .types import AuditInputError, check_ci_level, check_positive_int

__all__ = [
    "DeletionInsertion",
    "RandomizationSanity",
    "box_area",
    "box_iou",
    "deletion_insertion",
    "energy_in_box",
    "localization_table",
    "pointing_hit",
    "randomization_sanity",
    "summarize_localization",
]

Box = tuple[float, float, float, float]


def _map(name: str, values: Any) -> np.ndarray:
    m = np.asarray(values, dtype=float)
    if m.ndim != 2 or m.size == 0:
        raise AuditInputError(
            name, f"an array of shape {m.shape}", "a non-empty 2-D map (h, w)", "squeeze it"
        )
    if not np.isfinite(m).all() or m.min() < 0.0:
        raise AuditInputError(
            name, "negative or non-finite values", "finite values >= 0", "e.g. relu, then rescale"
        )
    return m


def _box(box: Any) -> Box:
    b = np.asarray(box, dtype=float).ravel()
    if b.size != 4 or not np.isfinite(b).all():
        raise AuditInputError("box", repr(box), "(x0, y0, x1, y1)", "pass one box of 4 numbers")
    x0, y0, x1, y1 = (float(v) for v in b)
    if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
        raise AuditInputError(
            "box", repr(tuple(b)), "0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1",
            "normalise pixel boxes by the image width and height",
        )  # fmt: skip
    return x0, y0, x1, y1


def box_area(box: Any) -> float:
    """Area share of a normalised box: the uniform-map baseline of :func:`energy_in_box`."""
    x0, y0, x1, y1 = _box(box)
    return (x1 - x0) * (y1 - y0)


def pointing_hit(saliency: Any, box: Any, *, tolerance_cells: float = 1.0) -> bool:
    """Whether the map's maximum points into the box (see the module docstring).

    Examples
    --------
    >>> m = np.zeros((4, 4)); m[1, 1] = 1.0
    >>> pointing_hit(m, (0.0, 0.0, 0.5, 0.5)), pointing_hit(m, (0.75, 0.75, 1.0, 1.0))
    (True, False)
    """
    m = _map("saliency", saliency)
    x0, y0, x1, y1 = _box(box)
    if not tolerance_cells >= 0.0:
        raise AuditInputError("tolerance_cells", repr(tolerance_cells), ">= 0", "e.g. 1.0")
    h, w = m.shape
    rows, cols = np.nonzero(m == m.max())
    cx, cy = (cols + 0.5) / w, (rows + 0.5) / h
    tx, ty = tolerance_cells / w, tolerance_cells / h
    inside = (cx >= x0 - tx) & (cx <= x1 + tx) & (cy >= y0 - ty) & (cy <= y1 + ty)
    return bool(inside.all())


def _cover(n: int, lo: float, hi: float) -> np.ndarray:
    """Fraction of each of ``n`` equal cells of ``[0, 1]`` inside ``[lo, hi]``."""
    edges = np.linspace(0.0, 1.0, n + 1)
    return np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0.0, None) * n


def energy_in_box(saliency: Any, box: Any) -> float:
    """Share of the map's mass inside the box (cells weighted by their area inside it).

    Raises
    ------
    AuditInputError
        On an all-zero map (no mass to share).

    Examples
    --------
    >>> energy_in_box(np.ones((10, 10)), (0.0, 0.0, 0.5, 0.4))
    0.2
    """
    m = _map("saliency", saliency)
    x0, y0, x1, y1 = _box(box)
    total = float(m.sum())
    if total <= 0.0:
        raise AuditInputError("saliency", "an all-zero map", "some mass", "check the explainer")
    h, w = m.shape
    inside = float(_cover(h, y0, y1) @ m @ _cover(w, x0, x1))
    return round(inside / total, 12)


def box_iou(saliency: Any, box: Any, *, quantile: float = 0.8) -> float:
    """IoU of the box around the map's largest high-value region with the ground-truth box.

    Examples
    --------
    >>> m = np.zeros((8, 8)); m[2:6, 2:6] = 1.0
    >>> box_iou(m, (0.25, 0.25, 0.75, 0.75))
    1.0
    """
    m = _map("saliency", saliency)
    x0, y0, x1, y1 = _box(box)
    if not 0.0 <= quantile < 1.0:
        raise AuditInputError("quantile", repr(quantile), "a number in [0, 1)", "e.g. 0.8")
    cut = float(np.quantile(m, quantile))
    mask = m > cut if cut <= m.min() else m >= cut
    labels, k = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if k == 0:
        return 0.0
    sizes = np.bincount(labels.ravel(), minlength=k + 1)[1:]
    rows, cols = np.nonzero(labels == 1 + int(np.argmax(sizes)))
    h, w = m.shape
    px0, px1 = cols.min() / w, (cols.max() + 1) / w
    py0, py1 = rows.min() / h, (rows.max() + 1) / h
    inter = max(0.0, min(x1, px1) - max(x0, px0)) * max(0.0, min(y1, py1) - max(y0, py0))
    union = (x1 - x0) * (y1 - y0) + (px1 - px0) * (py1 - py0) - inter
    return float(inter / union)


def localization_table(
    maps: Sequence[Any],
    boxes: Sequence[Any],
    *,
    categories: Sequence[Any] | None = None,
    ids: Sequence[Any] | None = None,
    quantile: float = 0.8,
    tolerance_cells: float = 1.0,
) -> pd.DataFrame:
    """Score each map against its box.

    Returns
    -------
    DataFrame
        Columns ``id``, ``category``, ``hit`` (bool), ``energy``, ``box_area`` (the uniform
        baseline of ``energy``), ``iou``; one row per map, in input order.
    """
    n = len(maps)
    if n == 0 or len(boxes) != n:
        raise AuditInputError(
            "boxes", f"{len(boxes)} boxes for {n} maps", "one box per map (at least one)",
            "pair every explanation map with its ground-truth box",
        )  # fmt: skip
    for name, col in (("categories", categories), ("ids", ids)):
        if col is not None and len(col) != n:
            raise AuditInputError(name, f"{len(col)} values", f"{n}, one per map", "align them")
    rows = [
        {
            "id": str(ids[i]) if ids is not None else str(i),
            "category": str(categories[i]) if categories is not None else "all",
            "hit": pointing_hit(maps[i], boxes[i], tolerance_cells=tolerance_cells),
            "energy": energy_in_box(maps[i], boxes[i]),
            "box_area": box_area(boxes[i]),
            "iou": box_iou(maps[i], boxes[i], quantile=quantile),
        }
        for i in range(n)
    ]
    return pd.DataFrame(rows, columns=["id", "category", "hit", "energy", "box_area", "iou"])


def summarize_localization(
    table: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0, ci_level: float = 0.95
) -> pd.DataFrame:
    """Per category (and ``"all"``, last): hit rate with Wilson interval, mean energy, mean box
    area and mean IoU with percentile bootstrap intervals over maps
    (stream ``derive_rng(seed, category)``).

    Returns
    -------
    DataFrame
        Columns ``category, n, hits, hit_rate, hit_ci_low, hit_ci_high, energy_mean,
        energy_ci_low, energy_ci_high, box_area_mean, iou_mean, iou_ci_low, iou_ci_high``.
    """
    n_boot = check_positive_int("n_boot", n_boot)
    ci_level = check_ci_level(ci_level)
    missing = [c for c in ("category", "hit", "energy", "box_area", "iou") if c not in table]
    if missing or table.empty:
        raise AuditInputError(
            "table", f"{len(table)} rows, missing columns {missing}",
            "the non-empty output of localization_table", "pass localization_table(...)",
        )  # fmt: skip
    parts = [(str(c), table[table["category"] == c]) for c in sorted(table["category"].unique())]
    out = []
    for cat, sub in [*parts, ("all", table)] if len(parts) > 1 else parts:
        k, n = int(sub["hit"].sum()), len(sub)
        lo, hi = wilson_interval(np.array([k]), np.array([n]), ci_level=ci_level)
        idx = derive_rng(seed, cat).integers(0, n, size=(n_boot, n))
        row: dict[str, Any] = dict(category=cat, n=n, hits=k, hit_rate=k / n)
        row.update(hit_ci_low=float(lo[0]), hit_ci_high=float(hi[0]))
        for col in ("energy", "iou"):
            v = sub[col].to_numpy(float)
            clo, chi = percentile_ci(v[idx].mean(axis=1), ci_level)
            row.update(
                {f"{col}_mean": float(v.mean()), f"{col}_ci_low": clo, f"{col}_ci_high": chi}
            )
        row["box_area_mean"] = float(sub["box_area"].mean())
        out.append(row)
    cols = ["category", "n", "hits", "hit_rate", "hit_ci_low", "hit_ci_high", "energy_mean"]
    cols += ["energy_ci_low", "energy_ci_high", "box_area_mean", "iou_mean", "iou_ci_low"]
    return pd.DataFrame(out, columns=[*cols, "iou_ci_high"])


@dataclass(frozen=True)
class DeletionInsertion:
    """RISE deletion / insertion curves and their AUCs.

    Attributes
    ----------
    deletion_auc, insertion_auc : float
        Trapezoidal AUC over ``fractions``.
    fractions : ndarray of shape (steps + 1,)
        Fraction of pixels removed / revealed, ``0 .. 1``.
    deletion_curve, insertion_curve : ndarray of shape (steps + 1,)
        ``p_yes`` at each fraction.
    baseline : str
    """

    deletion_auc: float
    insertion_auc: float
    fractions: np.ndarray = field(repr=False)
    deletion_curve: np.ndarray = field(repr=False)
    insertion_curve: np.ndarray = field(repr=False)
    baseline: str


def _scores(score_fn: Callable[[np.ndarray], Any], batch: np.ndarray, size: int) -> np.ndarray:
    out = []
    for start in range(0, batch.shape[0], size):
        part = batch[start : start + size]
        s = np.asarray(score_fn(part), dtype=float).ravel()
        if s.shape != (part.shape[0],) or not np.isfinite(s).all():
            raise AuditInputError(
                "score_fn", f"scores of shape {s.shape} (finite: {np.isfinite(s).all()})",
                f"{part.shape[0]} finite p_yes values, one per image of the batch",
                "return one probability per image",
            )  # fmt: skip
        out.append(s)
    return np.concatenate(out)


def deletion_insertion(
    score_fn: Callable[[np.ndarray], Any],
    image: Any,
    saliency: Any,
    *,
    steps: int = 20,
    baseline: Literal["blur", "mean"] = "blur",
    blur_sigma: float | None = None,
    batch_size: int | None = None,
) -> DeletionInsertion:
    """RISE deletion and insertion AUCs of one map (Petsiuk et al. 2018).

    Parameters
    ----------
    score_fn : callable
        ``score_fn(batch)`` with ``batch`` of shape ``(b, *image.shape)`` returns ``b`` values
        of ``p_yes``.
    image : array-like of shape (H, W) or (C, H, W)
        The input image (channels first).
    saliency : array-like of shape (h, w)
        The map, bilinearly upsampled to ``(H, W)``; ties keep row-major order.
    steps : int, keyword-only
        Curve points after the start (pixels per step ``H * W / steps``, rounded).
    baseline : {"blur", "mean"}, keyword-only
        What a removed / not yet revealed pixel shows: the Gaussian-blurred image (sigma
        ``blur_sigma``, default ``max(H, W) / 45``, about 5 at 224 as in RISE) or each channel's
        mean.
    batch_size : int, optional, keyword-only
        Images per ``score_fn`` call (default all ``steps + 1`` of a curve at once).

    Returns
    -------
    DeletionInsertion
    """
    steps = check_positive_int("steps", steps)
    if baseline not in ("blur", "mean"):
        raise AuditInputError("baseline", repr(baseline), "'blur' or 'mean'", "pick one")
    img = np.asarray(image, dtype=float)
    if img.ndim not in (2, 3) or not np.isfinite(img).all():
        raise AuditInputError(
            "image", f"shape {img.shape}", "finite (H, W) or (C, H, W)", "channels first"
        )
    chw = img[None] if img.ndim == 2 else img
    m = _map("saliency", saliency)
    big_h, big_w = chw.shape[1:]
    up = ndimage.zoom(m, (big_h / m.shape[0], big_w / m.shape[1]), order=1, grid_mode=True,
                      mode="nearest")  # fmt: skip
    order = np.argsort(-up.ravel(), kind="stable")
    if baseline == "blur":
        sigma = max(big_h, big_w) / 45.0 if blur_sigma is None else float(blur_sigma)
        base = np.stack([ndimage.gaussian_filter(c, sigma) for c in chw])
    else:
        base = np.broadcast_to(chw.mean(axis=(1, 2), keepdims=True), chw.shape)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    counts = np.round(fractions * big_h * big_w).astype(int)
    rank = np.empty(order.size, int)
    rank[order] = np.arange(order.size)
    first = (rank[None, :] < counts[:, None]).reshape(steps + 1, 1, big_h, big_w)
    deleted = np.where(first, base[None], chw[None])
    inserted = np.where(first, chw[None], base[None])
    shape = (steps + 1, *img.shape)
    size = steps + 1 if batch_size is None else check_positive_int("batch_size", batch_size)
    d = _scores(score_fn, deleted.reshape(shape), size)
    i = _scores(score_fn, inserted.reshape(shape), size)
    return DeletionInsertion(
        float(np.trapezoid(d, fractions)), float(np.trapezoid(i, fractions)),
        fractions, d, i, baseline,
    )  # fmt: skip


@dataclass(frozen=True)
class RandomizationSanity:
    """Similarity of trained-model and randomised-model maps (Adebayo et al. 2018).

    Attributes
    ----------
    median, q25, q75 : float
        Of the per-map Spearman correlations (maps with a defined correlation).
    n, n_undefined : int
        Map pairs, and pairs where a map is constant (correlation undefined, left out).
    max_similarity : float
        The threshold used for ``fails``.
    fails : bool
        ``median >= max_similarity``: the maps barely change when the weights are randomised.
    rho : ndarray of shape (n,)
        Per-pair correlations (``NaN`` where undefined).
    """

    median: float
    q25: float
    q75: float
    n: int
    n_undefined: int
    max_similarity: float
    fails: bool
    rho: np.ndarray = field(repr=False, compare=False)


def randomization_sanity(
    maps_trained: Sequence[Any], maps_random: Sequence[Any], *, max_similarity: float = 0.5
) -> RandomizationSanity:
    """Model-parameter randomisation test: Spearman correlation of each map pair.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> a = [rng.random((7, 7)) for _ in range(5)]
    >>> randomization_sanity(a, a).fails
    True
    """
    if len(maps_trained) == 0 or len(maps_trained) != len(maps_random):
        raise AuditInputError(
            "maps_random", f"{len(maps_random)} maps for {len(maps_trained)} trained maps",
            "one randomised-model map per trained-model map (at least one)", "pair them by image",
        )  # fmt: skip
    rho = np.empty(len(maps_trained))
    for k, (a, b) in enumerate(zip(maps_trained, maps_random, strict=True)):
        ma, mb = _map("maps_trained", a), _map("maps_random", b)
        if ma.shape != mb.shape:
            raise AuditInputError(
                "maps_random", f"shape {mb.shape} at {k}", f"{ma.shape}", "resize"
            )
        flat = ma.min() == ma.max() or mb.min() == mb.max()
        rho[k] = np.nan if flat else float(spearmanr(ma.ravel(), mb.ravel()).statistic)
    ok = rho[np.isfinite(rho)]
    if ok.size == 0:
        raise AuditInputError(
            "maps_trained", "only constant maps", "varying maps", "check the maps"
        )
    q25, med, q75 = (float(v) for v in np.quantile(ok, [0.25, 0.5, 0.75]))
    return RandomizationSanity(
        med, q25, q75, int(rho.size), int(rho.size - ok.size), float(max_similarity),
        bool(med >= max_similarity), rho,
    )  # fmt: skip
