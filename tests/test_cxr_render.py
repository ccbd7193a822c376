"""Finding signatures and the acquisition chain of the procedural chest X-ray renderer."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from clinaudit.sources.cxr_labels import FINDINGS
from clinaudit.sources.cxr_render import Anatomy, apply_acquisition, render_cxr
from clinaudit.sources.cxr_sites import DEFAULT_SITES

SIZE = 96
SEEDS = range(8)


def _render(seed: int, findings: dict[str, float], **kw) -> np.ndarray:
    return render_cxr(np.random.default_rng(seed), findings=findings, size=SIZE, **kw)


def _roi(img: np.ndarray, y0: float, y1: float, ax0: float, ax1: float) -> float:
    """Mean over rows y in [y0, y1] and columns |x| in [ax0, ax1] (grid coordinates in [-1, 1])."""
    axis = np.linspace(-1, 1, img.shape[0])
    rows = (axis >= y0) & (axis <= y1)
    cols = (np.abs(axis) >= ax0) & (np.abs(axis) <= ax1)
    return float(img[np.ix_(rows, cols)].mean())


def _heart_width(img: np.ndarray, anatomy: Anatomy) -> int:
    """Bright (mediastinal) run through the image centre on the heart's widest row."""
    axis = np.linspace(-1, 1, img.shape[0])
    row_idx = int(np.argmin(np.abs(axis - anatomy.heart_center_y)))
    row = img[max(0, row_idx - 1) : row_idx + 2].mean(axis=0)
    bright = row > 0.42
    centre = int(np.argmin(np.abs(axis - anatomy.heart_center_x)))
    left = centre
    while left > 0 and bright[left - 1]:
        left -= 1
    right = centre
    while right < len(row) - 1 and bright[right + 1]:
        right += 1
    return right - left + 1


def test_render_shape_range_and_determinism() -> None:
    a = _render(3, {"Nodule": 0.5})
    b = _render(3, {"Nodule": 0.5})
    c = _render(4, {"Nodule": 0.5})
    assert a.shape == (SIZE, SIZE) and a.dtype == np.float32
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_render_rejects_unknown_finding() -> None:
    with pytest.raises(ValueError, match="unknown findings.*Pneumonitis"):
        _render(0, {"Pneumonitis": 0.5})
    with pytest.raises(ValueError, match="view='LAT'"):
        _render(0, {}, view="LAT")


def test_lungs_darker_than_mediastinum() -> None:
    img = _render(0, {})
    lungs = _roi(img, -0.3, 0.0, 0.3, 0.5)
    mediastinum = _roi(img, -0.3, 0.0, 0.0, 0.05)
    assert mediastinum - lungs > 0.2


@pytest.mark.parametrize("finding", FINDINGS)
def test_every_finding_changes_pixels_more_when_severe(finding: str) -> None:
    mild, severe = [], []
    for s in SEEDS:
        base = _render(s, {})
        severe.append(np.abs(_render(s, {finding: 0.95}) - base))
        mild.append(np.abs(_render(s, {finding: 0.15}) - base))
    assert min(float(d.max()) for d in severe) > 0.03, f"{finding} leaves no visible signature"
    assert np.mean([d.sum() for d in severe]) > 1.5 * np.mean([d.sum() for d in mild])


def test_effusion_brightens_lower_lateral_lung() -> None:
    diffs = [
        _roi(_render(s, {"Effusion": 0.8}), 0.1, 0.4, 0.3, 0.6)
        - _roi(_render(s, {}), 0.1, 0.4, 0.3, 0.6)
        for s in SEEDS
    ]
    assert min(diffs) > 0.01
    assert np.mean(diffs) > 0.04


def test_emphysema_makes_lung_fields_more_lucent() -> None:
    diffs = [
        _roi(_render(s, {"Emphysema": 0.8}), -0.4, 0.1, 0.25, 0.5)
        - _roi(_render(s, {}), -0.4, 0.1, 0.25, 0.5)
        for s in SEEDS
    ]
    assert max(diffs) < 0.0
    assert np.mean(diffs) < -0.03


def test_heart_wider_with_cardiomegaly_and_ap_view() -> None:
    widths: dict[str, list[int]] = {"PA": [], "AP": [], "cardio": []}
    ctrs: dict[str, list[float]] = {"PA": [], "AP": [], "cardio": []}
    for s in SEEDS:
        for key, kw in (
            ("PA", {"findings": {}}),
            ("AP", {"findings": {}, "view": "AP"}),
            ("cardio", {"findings": {"Cardiomegaly": 0.7}}),
        ):
            img, anat = render_cxr(np.random.default_rng(s), size=SIZE, return_anatomy=True, **kw)
            widths[key].append(_heart_width(img, anat))
            ctrs[key].append(anat.ctr)
    assert np.mean(widths["cardio"]) > np.mean(widths["PA"]) + 3
    assert np.mean(widths["AP"]) > np.mean(widths["PA"]) + 1
    assert np.mean(ctrs["cardio"]) > 0.5 > np.mean(ctrs["PA"])
    assert all(a > p for a, p in zip(ctrs["AP"], ctrs["PA"], strict=True))


def test_apply_acquisition_monochrome1_bits_and_inversion() -> None:
    img = _render(0, {})
    prof = dataclasses.replace(DEFAULT_SITES["site_c"], noise_sd=0.0, blur_mm=0.0)
    px1, acq1 = apply_acquisition(img, np.random.default_rng(1), prof, native_px=64)
    prof2 = dataclasses.replace(prof, photometric="MONOCHROME2")
    px2, _ = apply_acquisition(img, np.random.default_rng(1), prof2, native_px=64)
    assert acq1.photometric == "MONOCHROME1" and acq1.bits_stored == 10
    assert px1.dtype == np.uint16 and px1.shape == (64, 64) and int(px1.max()) <= 1023
    assert np.array_equal(px1.astype(int), 1023 - px2.astype(int))


def test_apply_acquisition_markers_collimation_and_8bit() -> None:
    img = _render(0, {})
    prof = dataclasses.replace(
        DEFAULT_SITES["site_d"],
        bits_stored=8,
        marker_prob=1.0,
        collimation_prob=1.0,
        collimation_value=0.0,
    )
    px, acq = apply_acquisition(img, np.random.default_rng(2), prof, native_px=128, view="AP")
    assert px.dtype == np.uint8
    assert acq.collimated and acq.marker == "PORTABLE"
    assert int(px[0, 64]) == 0 and int(px[-1, 64]) == 0  # collimated rows are exactly 0
    assert int((px == 255).sum()) >= 20  # burned-in text is pure white


def test_acquisition_noise_and_blur_are_in_pixels() -> None:
    img = _render(0, {})
    ref = DEFAULT_SITES["vendor_dev"]
    quiet, _ = apply_acquisition(img, np.random.default_rng(5), ref, native_px=96)
    noisy, acq = apply_acquisition(
        img, np.random.default_rng(5), dataclasses.replace(ref, noise_sd=0.05), native_px=96
    )
    # Same generator state: the difference is the extra noise only (0.05 - 0.012 = 0.038 sd).
    extra = (noisy.astype(float) - quiet.astype(float)) / 4095
    assert acq.noise_sd == pytest.approx(0.05)
    assert extra.std() == pytest.approx(0.038, rel=0.15)
    blur = dataclasses.replace(ref, noise_sd=0.0, blur_mm=8.0)
    blurred, _ = apply_acquisition(img, np.random.default_rng(5), blur, native_px=96)
    no_noise = dataclasses.replace(ref, noise_sd=0.0)
    sharp, _ = apply_acquisition(img, np.random.default_rng(5), no_noise, native_px=96)
    lap_var = lambda p: ndimage.laplace(p.astype(float)).var()  # noqa: E731
    assert lap_var(blurred) < 0.1 * lap_var(sharp)
