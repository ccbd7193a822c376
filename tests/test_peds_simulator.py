"""Pediatric CXR renderer and the peds_vqa simulator: pediatric anatomy, finding masks, the
VinDr-PCXR layout, prevalence, patients with several films, determinism and immutability."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clinaudit.sources.landing import read_manifest, verify_batch
from clinaudit.sources.peds_render import (
    PEDS_CATEGORIES,
    normal_ctr,
    render_peds_cxr,
    sample_peds_anatomy,
)
from clinaudit.sources.peds_simulator import SCALES, SITE, dicom_age, simulate_peds_study
from clinaudit.sources.peds_truth import read_peds_masks, read_peds_truth, union_box
from clinaudit.sources.vindr_pcxr import (
    ANNOTATION_COLUMNS,
    CATEGORY_LABELS,
    METADATA_COLUMNS,
    NO_FINDING,
    STUDY,
)
from clinaudit.sources.vindr_pcxr import (
    category_of as vindr_category,
)

BATCHES = ("b-0001", "b-0002")


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("peds_sim")
    summary = simulate_peds_study(root / "landing", truth_root=root / "truth", scale="tiny",
                                  seed=3, workers=2)  # fmt: skip
    return root, summary


def _all_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _truth(root: Path) -> pd.DataFrame:
    return pd.concat(
        [read_peds_truth(root / "truth", STUDY, SITE, b).assign(batch=b) for b in BATCHES],
        ignore_index=True,
    )


def test_same_seed_same_bytes_whatever_the_workers(study, tmp_path: Path) -> None:
    root, _ = study
    simulate_peds_study(tmp_path / "landing", truth_root=tmp_path / "truth", scale="tiny",
                        seed=3, workers=1)  # fmt: skip
    first, again = _all_bytes(root / "landing"), _all_bytes(tmp_path / "landing")
    assert first.keys() == again.keys() and first == again
    assert _all_bytes(root / "truth") == _all_bytes(tmp_path / "truth")
    other = tmp_path / "seed4"
    simulate_peds_study(other / "landing", truth_root=other / "truth", scale="tiny", seed=4)
    assert _all_bytes(other / "landing") != first


def test_landed_batches_are_kept_not_overwritten(study) -> None:
    root, _ = study
    before = _all_bytes(root / "landing")
    again = simulate_peds_study(root / "landing", truth_root=root / "truth", scale="tiny", seed=9)
    assert all(b.kept for b in again.batches)
    assert _all_bytes(root / "landing") == before


def test_layout_manifest_and_csv_columns(study) -> None:
    root, summary = study
    assert summary.n_images == SCALES["tiny"].n_images == 160
    for b in BATCHES:
        batch_dir = root / "landing" / STUDY / SITE / b
        manifest = read_manifest(batch_dir)
        assert manifest.simulated and manifest.label_layout == "peds_vindr"
        assert manifest.label_file == "image_labels.csv" and verify_batch(batch_dir, manifest).ok
        labels = pd.read_csv(batch_dir / "image_labels.csv")
        assert list(labels.columns) == ["image_id", "rad_id",
                                        *CATEGORY_LABELS.values(), NO_FINDING]  # fmt: skip
        assert tuple(pd.read_csv(batch_dir / "annotations.csv").columns) == ANNOTATION_COLUMNS
        meta = pd.read_csv(batch_dir / "metadata.csv", dtype=str)
        assert tuple(meta.columns) == METADATA_COLUMNS
        assert meta["PatientAge"].str.fullmatch(r"\d{3}[DMY]").all()
        assert set(meta["ViewPosition"]) == {"AP", "PA"} and set(meta["PatientSex"]) == {"M", "F"}
        suffixes = {p.suffix for p in (batch_dir / "images").iterdir()}
        assert suffixes == {".png", ".dicom"}
    assert all(vindr_category(name) == c for c, name in CATEGORY_LABELS.items())


def test_prevalence_cooccurrence_and_patients_with_several_films(study) -> None:
    root, _ = study
    truth = _truth(root)
    positive = pd.DataFrame({c: truth[f"sev_{c}"] > 0 for c in PEDS_CATEGORIES})
    prevalence = positive.mean()
    assert prevalence.between(0.12, 0.38).all(), prevalence
    assert (positive.sum(axis=1) >= 2).sum() >= 5  # findings co-occur
    assert (positive.sum(axis=1) == 0).mean() > 0.2  # and many films are normal
    sev = truth[[f"sev_{c}" for c in PEDS_CATEGORIES]].to_numpy()
    sev = sev[sev > 0]
    assert sev.min() >= 0.08 and sev.max() <= 1.0 and (sev < 0.3).mean() > 0.05  # some subtle
    films = truth.groupby("patient_id").size()
    assert (films >= 2).sum() >= 10 and films.max() <= 3
    infants = truth[truth["age_years"] < 1]
    older = truth[truth["age_years"] >= 6]
    assert (infants["view"] == "AP").mean() > 0.8 > (older["view"] == "AP").mean()
    assert truth["format"].value_counts().to_dict().keys() == {"png16", "png8", "dicom"}


def test_masks_present_exactly_for_findings_and_boxes_inside(study) -> None:
    root, _ = study
    size = SCALES["tiny"].image_px
    for b in BATCHES:
        truth = read_peds_truth(root / "truth", STUDY, SITE, b)
        masks = read_peds_masks(root / "truth", STUDY, SITE, b)
        for row in truth.itertuples(index=False):
            for c in PEDS_CATEGORIES:
                key = f"{row.image_id}__{c}"
                assert (key in masks) == (getattr(row, f"sev_{c}") > 0)
                if key in masks:
                    assert masks[key].shape == (size, size) and masks[key].any()
                    box = tuple(getattr(row, f"{c}_{k}") for k in ("x0", "y0", "x1", "y1"))
                    assert box == union_box(masks[key])
        ann = pd.read_csv(root / "landing" / STUDY / SITE / b / "annotations.csv")
        boxed = ann[ann["class_name"] != NO_FINDING]
        assert ((boxed["x_min"] >= 0) & (boxed["y_min"] >= 0)).all()
        assert ((boxed["x_max"] <= size) & (boxed["y_max"] <= size)).all()
        assert ((boxed["x_min"] < boxed["x_max"]) & (boxed["y_min"] < boxed["y_max"])).all()
        assert ann.loc[ann["class_name"] == NO_FINDING, "x_min"].isna().all()


def test_normal_ctr_falls_with_age_and_thymus_only_in_the_young() -> None:
    def draws(lo: float, hi: float, n: int = 300):
        rng = np.random.default_rng(7)
        return [
            sample_peds_anatomy(rng, age_years=float(rng.uniform(lo, hi)), view="PA")
            for _ in range(n)
        ]

    infants, older = draws(0.0, 1.0), draws(8.0, 10.0)
    ctr_infant = np.mean([a.ctr for a in infants])
    ctr_older = np.mean([a.ctr for a in older])
    assert 0.54 < ctr_infant < 0.61 and 0.47 < ctr_older < 0.53
    assert ctr_infant - ctr_older > 0.04
    assert normal_ctr(0.5) > normal_ctr(9.0)
    assert np.mean([a.thymus > 0 for a in infants]) > 0.6
    assert not any(a.thymus > 0 for a in draws(3.0, 10.0))
    # Cardiomegaly raises the CTR above the age norm by a severity-scaled margin.
    rng = np.random.default_rng(1)
    big = [sample_peds_anatomy(rng, age_years=5.0, view="PA", cardiomegaly=0.8) for _ in range(50)]
    assert np.mean([a.ctr - a.ctr_normal for a in big]) > 0.11


def test_thymus_sail_widens_the_upper_mediastinum_on_the_pixels() -> None:
    rng = np.random.default_rng(0)
    anatomy = next(
        a for a in (sample_peds_anatomy(rng, age_years=0.4, view="AP") for _ in range(50))
        if a.thymus > 0.4
    )  # fmt: skip
    flat = dataclasses.replace(anatomy, thymus=0.0)
    size = 128
    with_sail, _ = render_peds_cxr(np.random.default_rng(5), findings={}, age_years=0.4,
                                   sex="M", view="AP", size=size, anatomy=anatomy)  # fmt: skip
    without, _ = render_peds_cxr(np.random.default_rng(5), findings={}, age_years=0.4,
                                 sex="M", view="AP", size=size, anatomy=flat)  # fmt: skip
    axis = np.linspace(-1, 1, size)
    rows = (axis > anatomy.lung_top_y + 0.1) & (
        axis < anatomy.heart_center_y - anatomy.heart_half_height
    )
    cols = (anatomy.thymus_side * axis > 0.09) & (anatomy.thymus_side * axis < 0.2)
    gain = (with_sail - without)[np.ix_(rows, cols)].mean()
    assert gain > 0.1
    assert np.abs(with_sail - without)[size // 2 + 20 :].max() < 1e-6  # nothing below


@pytest.mark.parametrize("category", PEDS_CATEGORIES)
def test_each_finding_brightens_its_mask_more_with_severity(category: str) -> None:
    gains = {}
    for s in (0.15, 0.9):
        diffs = []
        for seed in range(6):
            base, _ = render_peds_cxr(np.random.default_rng(seed), findings={}, age_years=4.0,
                                      sex="F", view="PA", size=64)  # fmt: skip
            img, masks = render_peds_cxr(np.random.default_rng(seed), findings={category: s},
                                         age_years=4.0, sex="F", view="PA", size=64)  # fmt: skip
            assert list(masks) == [category] and masks[category].any()
            assert img.dtype == np.float32 and 0.0 <= img.min() and img.max() <= 1.0
            diffs.append(float((img - base)[masks[category]].mean()))
        gains[s] = np.mean(diffs)
    assert gains[0.9] > gains[0.15] > 0.0
    assert gains[0.9] > 0.05  # visible at 64 x 64


def test_renderer_refuses_bad_inputs() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown findings"):
        render_peds_cxr(rng, findings={"Effusion": 1.0}, age_years=2, sex="M", view="AP", size=64)
    with pytest.raises(ValueError, match="age_years=14"):
        render_peds_cxr(rng, findings={}, age_years=14, sex="M", view="AP", size=64)
    with pytest.raises(ValueError, match="view='LL'"):
        render_peds_cxr(rng, findings={}, age_years=2, sex="M", view="LL", size=64)
    assert (dicom_age(0.02), dicom_age(0.75), dicom_age(9.99)) == ("007D", "009M", "009Y")
