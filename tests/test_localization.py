"""Explanation-map scores (audit/localization.py) on synthetic maps whose answer is known."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from clinaudit.audit import localization
from clinaudit.audit.localization import (
    box_area,
    box_iou,
    deletion_insertion,
    energy_in_box,
    localization_table,
    pointing_hit,
    randomization_sanity,
    summarize_localization,
)
from clinaudit.audit.types import AuditInputError

BOX = (0.25, 0.25, 0.5, 0.625)  # cells 4..7 (x) and 4..9 (y) on a 16 x 16 grid


def _blob(cx: float, cy: float, size: int = 16, sigma: float = 1.5) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    return np.exp(-((xx - cx * size) ** 2 + (yy - cy * size) ** 2) / (2 * sigma**2))


def _indicator(box: tuple[float, ...], size: int = 16) -> np.ndarray:
    m = np.zeros((size, size))
    x0, y0, x1, y1 = (round(v * size) for v in box)
    m[y0:y1, x0:x1] = 1.0
    return m


def test_pointing_hit_and_miss() -> None:
    assert pointing_hit(_blob(0.37, 0.44), BOX)
    assert not pointing_hit(_blob(0.85, 0.15), BOX)
    # just outside: one cell right of the box is inside the default tolerance, not at 0.25 cells
    m = np.zeros((16, 16))
    m[5, 8] = 1.0
    assert pointing_hit(m, BOX) and not pointing_hit(m, BOX, tolerance_cells=0.25)
    assert not pointing_hit(np.ones((16, 16)), BOX)  # a flat map points nowhere


def test_energy_in_box() -> None:
    assert energy_in_box(np.ones((16, 16)), BOX) == pytest.approx(box_area(BOX))
    assert energy_in_box(np.ones((7, 7)), (0.1, 0.2, 0.55, 0.9)) == pytest.approx(0.45 * 0.7)
    assert energy_in_box(_indicator(BOX), BOX) == pytest.approx(1.0)
    # a slow reference: supersample every cell 20 x 20
    rng = np.random.default_rng(0)
    m = rng.random((7, 9))
    fine = np.kron(m, np.ones((20, 20))) / 400
    yy, xx = (np.mgrid[0:140, 0:180] + 0.5) / np.array([140, 180])[:, None, None]
    box = (0.1, 0.3, 0.6, 0.95)
    inside = (xx >= box[0]) & (xx <= box[2]) & (yy >= box[1]) & (yy <= box[3])
    assert energy_in_box(m, box) == pytest.approx(fine[inside].sum() / m.sum(), abs=0.01)
    with pytest.raises(AuditInputError, match="all-zero"):
        energy_in_box(np.zeros((4, 4)), BOX)


def test_box_iou() -> None:
    assert box_iou(_indicator(BOX), BOX) == pytest.approx(1.0)
    assert box_iou(_blob(0.85, 0.15), BOX) == 0.0
    assert 0.2 < box_iou(_blob(0.375, 0.44), BOX) <= 1.0
    assert box_iou(np.ones((8, 8)), BOX) == 0.0
    # largest component wins over a smaller one
    m = _indicator(BOX) + _indicator((0.75, 0.75, 0.875, 0.875))
    assert box_iou(m, BOX) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("saliency", "box", "match"),
    [
        (np.ones(4), BOX, "2-D"),
        (-np.ones((4, 4)), BOX, ">= 0"),
        (np.ones((4, 4)), (0.5, 0.2, 0.4, 0.8), "x0 < x1"),
        (np.ones((4, 4)), (0.0, 0.0, 1.0), "4 numbers"),
    ],
)
def test_bad_maps_and_boxes(saliency: np.ndarray, box: tuple, match: str) -> None:
    with pytest.raises(AuditInputError, match=match):
        energy_in_box(saliency, box)


def test_table_and_summary() -> None:
    maps = [_blob(0.37, 0.44), _blob(0.85, 0.15), _indicator(BOX), np.ones((16, 16))]
    cats = ["effusion", "effusion", "pneumonia", "pneumonia"]
    t = localization_table(maps, [BOX] * 4, categories=cats)
    assert t["hit"].tolist() == [True, False, True, False]
    assert t["energy"].iloc[3] == pytest.approx(box_area(BOX))
    s = summarize_localization(t, n_boot=200, seed=1)
    assert s["category"].tolist() == ["effusion", "pneumonia", "all"]
    all_row = s.set_index("category").loc["all"]
    assert all_row["n"] == 4 and all_row["hits"] == 2 and all_row["hit_rate"] == 0.5
    assert all_row["hit_ci_low"] < 0.5 < all_row["hit_ci_high"]
    assert all_row["energy_ci_low"] <= all_row["energy_mean"] <= all_row["energy_ci_high"]
    assert s.equals(summarize_localization(t, n_boot=200, seed=1))
    with pytest.raises(AuditInputError, match="one box per map"):
        localization_table(maps, [BOX] * 3)


def _region_score(batch: np.ndarray) -> np.ndarray:
    """p_yes depends only on the mean intensity inside rows/cols 8..15 of a 32 x 32 image."""
    return batch[:, 8:16, 8:16].mean(axis=(1, 2))


def test_deletion_insertion_faithful_map_beats_random() -> None:
    rng = np.random.default_rng(0)
    image = rng.uniform(0.0, 0.2, size=(32, 32))
    image[8:16, 8:16] = 1.0
    good = np.zeros((32, 32))
    good[8:16, 8:16] = 1.0
    good += 1e-3 * rng.random((32, 32))
    rand = rng.random((32, 32))
    calls: list[int] = []

    def score(batch: np.ndarray) -> np.ndarray:
        calls.append(batch.shape[0])
        return _region_score(batch)

    g = deletion_insertion(score, image, good, steps=16, baseline="mean")
    r = deletion_insertion(_region_score, image, rand, steps=16, baseline="mean")
    assert g.deletion_auc < r.deletion_auc - 0.2
    assert g.insertion_auc > r.insertion_auc + 0.2
    assert calls == [17, 17]
    assert g.deletion_curve[0] == pytest.approx(1.0) and g.fractions[-1] == 1.0
    # a blur wide enough to wash out the region (a narrow one keeps the evidence: no signal)
    kw = dict(steps=16, baseline="blur", blur_sigma=8.0)
    b = deletion_insertion(_region_score, image, good, batch_size=5, **kw)  # type: ignore[arg-type]
    br = deletion_insertion(_region_score, image, rand, **kw)  # type: ignore[arg-type]
    assert b.deletion_auc < br.deletion_auc and b.insertion_auc > br.insertion_auc
    c = deletion_insertion(  # a (C, H, W) image and an 8 x 8 map upsampled to 32 x 32
        lambda x: _region_score(x[:, 0]), image[None], good[::4, ::4], steps=8
    )
    assert c.deletion_auc < c.insertion_auc
    with pytest.raises(AuditInputError, match="score_fn"):
        deletion_insertion(lambda x: np.ones(2), image, good, steps=4)


def test_randomization_sanity() -> None:
    rng = np.random.default_rng(3)
    trained = [_blob(rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8)) for _ in range(10)]
    same = randomization_sanity(trained, [m * 2.0 + 0.1 for m in trained])
    assert same.median == pytest.approx(1.0) and same.fails
    indep = randomization_sanity(trained, [rng.random((16, 16)) for _ in range(10)])
    assert abs(indep.median) < 0.2 and not indep.fails
    assert indep.q25 <= indep.median <= indep.q75
    flat = randomization_sanity(trained, [np.ones((16, 16)), *trained[1:]])
    assert flat.n == 10 and flat.n_undefined == 1 and np.isnan(flat.rho[0])
    with pytest.raises(AuditInputError, match="maps_random"):
        randomization_sanity(trained, trained[:3])


def test_doctests() -> None:
    result = doctest.testmod(localization, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0
