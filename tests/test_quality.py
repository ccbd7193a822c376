"""Image-quality features respond to what they claim to measure."""

from __future__ import annotations

import math

import numpy as np
import pytest
from cxr_fixtures import phantom
from scipy import ndimage

from clinaudit.sources.images import DecodedImage
from clinaudit.validation.quality import QUALITY_FEATURES, quality_features


def _img(px: np.ndarray, spacing: float | None = 0.2) -> DecodedImage:
    px = np.clip(px, 0, 1).astype(np.float32)
    return DecodedImage(px, px.shape[0], px.shape[1], 12, "MONOCHROME2", spacing, "dicom")


def _base(size: int = 128, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    return phantom(np.random.default_rng(seed), size, size, noise=noise)


def test_feature_names_and_finiteness() -> None:
    feats = quality_features(_img(_base(noise=0.02)))
    assert tuple(feats) == QUALITY_FEATURES
    assert all(math.isfinite(v) for v in feats.values())
    assert (feats["rows"], feats["cols"], feats["pixel_spacing_mm"]) == (128.0, 128.0, 0.2)
    assert math.isnan(quality_features(_img(_base(), spacing=None))["pixel_spacing_mm"])


def test_noise_sigma_tracks_added_noise() -> None:
    base = _base(noise=0.0)
    rng = np.random.default_rng(3)
    sigmas = [
        quality_features(_img(base + s * rng.standard_normal(base.shape)))["noise_sigma"]
        for s in (0.0, 0.01, 0.03, 0.06)
    ]
    assert sigmas == sorted(sigmas) and sigmas[0] < 0.002
    # Immerkaer's estimator recovers the true sigma of white noise on smooth anatomy.
    assert sigmas[2] == pytest.approx(0.03, rel=0.15)


def test_blur_lowers_sharpness() -> None:
    base = _base(size=128, noise=0.02)
    sharp = quality_features(_img(base))["sharpness"]
    blurred = quality_features(_img(ndimage.gaussian_filter(base, 2.0)))["sharpness"]
    assert blurred < sharp / 2


def test_sharpness_is_measured_at_a_fixed_resolution() -> None:
    small = quality_features(_img(_base(size=256)))["sharpness"]
    large = quality_features(_img(_base(size=512)))["sharpness"]
    assert large == pytest.approx(small, rel=0.2)


def test_brightness_contrast_and_range() -> None:
    base = _base(noise=0.01)
    dark, bright = quality_features(_img(base * 0.8)), quality_features(_img(base * 0.8 + 0.15))
    assert bright["mean_intensity"] == pytest.approx(dark["mean_intensity"] + 0.15, abs=1e-3)
    assert bright["contrast"] == pytest.approx(dark["contrast"], rel=1e-3)
    flat = quality_features(_img(base * 0.5 + 0.25))
    assert flat["contrast"] < quality_features(_img(base))["contrast"]
    assert flat["dynamic_range"] < quality_features(_img(base))["dynamic_range"]


def test_constant_and_clipped_images() -> None:
    const = quality_features(_img(np.full((64, 64), 0.4)))
    assert const["entropy"] == 0.0 and const["contrast"] == 0.0 and const["dynamic_range"] < 1e-3
    assert const["clipped_fraction"] == 0.0 and const["noise_sigma"] == 0.0
    px = np.full((64, 64), 0.5)
    px[:16] = 1.0
    px[16:24] = 0.0
    assert quality_features(_img(px))["clipped_fraction"] == pytest.approx(24 / 64)
    ramp = np.tile(np.linspace(0, 1, 256, endpoint=False), (64, 1))
    assert quality_features(_img(ramp))["entropy"] == pytest.approx(8.0, abs=1e-6)
