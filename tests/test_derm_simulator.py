"""Dermatology pair simulator: determinism, sizes, imbalance, annotators, ITA, contrast bias,
notes, and the truth sidecar's claims about which modality informs which category."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.stats import spearmanr
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from clinaudit.sources.derm_lesions import Frame, draw_lesion, random_field
from clinaudit.sources.derm_population import sample_clinic_population
from clinaudit.sources.derm_render import (
    Acquisition,
    melanin_for_ita,
    render_photo,
    skin_tone,
)
from clinaudit.sources.derm_simulator import (
    METADATA_COLUMNS,
    STUDY,
    simulate_derm_clinic,
    simulate_derm_study,
)
from clinaudit.sources.derm_sites import (
    CATEGORIES,
    DEFAULT_CLINICS,
    DEVELOPMENT_CLINICS,
    HELD_OUT_CLINIC,
    SCALES,
)
from clinaudit.sources.derm_truth import read_derm_truth
from clinaudit.sources.landing import LandingError, read_manifest, verify_batch
from clinaudit.sources.skin_color import ita_degrees, lab_from_srgb, linear_from_srgb

BATCH = "b-0001"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("derm")
    summary = simulate_derm_study(
        root / "landing", truth_root=root / "truth", scale="tiny", workers=2
    )
    return root / "landing", root / "truth", summary


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory):
    """600 pairs of one clinic (one camera mix, so no clinic confounding) and their truth."""
    root = tmp_path_factory.mktemp("derm_big")
    simulate_derm_clinic(
        root / "landing", truth_root=root / "truth", clinic="city_clinic", scale="tiny",
        n_pairs=600, workers=2,
    )  # fmt: skip
    truth = read_derm_truth(root / "truth", STUDY, "city_clinic", BATCH)
    return root / "landing" / STUDY / "city_clinic" / BATCH, truth


def _all_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_layout_manifest_and_csv(study) -> None:
    landing, truth_root, summary = study
    assert summary.n_pairs == SCALES["tiny"].total == 300
    for clinic in DEFAULT_CLINICS.values():
        batch = landing / STUDY / clinic.name / BATCH
        manifest = read_manifest(batch)
        assert manifest.simulated and manifest.label_layout == "derm_pairs"
        assert manifest.label_file == "metadata.csv" and verify_batch(batch, manifest).ok
        meta = pd.read_csv(batch / "metadata.csv", keep_default_na=False, dtype=str)
        assert tuple(meta.columns) == METADATA_COLUMNS
        assert len(meta) == summary.clinic(clinic.name).n_pairs == len(manifest.files) - 1
        ext = ".png" if clinic.image_format == "png" else ".jpg"
        assert meta["img_id"].str.endswith(ext).all() and meta["img_id"].is_unique
        with Image.open(batch / "images" / meta["img_id"].iat[0]) as im:
            assert im.mode == "RGB" and im.size == (64, 64)
        assert set(meta["diagnostic"]) <= {c.code for c in CATEGORIES}
        assert set(meta["gender"]) <= {"MALE", "FEMALE"}
        assert set(meta["fitzpatrick_a"]) <= {"", "1", "2", "3", "4", "5", "6"}
        doc = read_derm_truth(truth_root, STUDY, clinic.name, BATCH).doc
        assert doc["simulated"] and doc["clinic_profile"]["role"] in ("development", "held_out")


def test_same_seed_same_bytes_any_workers_other_seed_differs(tmp_path: Path) -> None:
    outs = {}
    for name, seed, workers in (("a", 0, 1), ("b", 0, 2), ("c", 1, 1)):
        simulate_derm_clinic(
            tmp_path / name / "landing", truth_root=tmp_path / name / "truth",
            clinic="uni_derm", scale="tiny", n_pairs=24, seed=seed, workers=workers,
        )  # fmt: skip
        outs[name] = _all_bytes(tmp_path / name)
    assert outs["a"] == outs["b"]
    assert outs["a"].keys() == outs["c"].keys() or outs["a"] != outs["c"]
    assert outs["a"] != outs["c"]


def test_landed_batch_is_immutable(tmp_path: Path) -> None:
    kw = dict(truth_root=tmp_path / "t", clinic="teledermatology", scale="tiny", n_pairs=4)
    simulate_derm_clinic(tmp_path / "l", workers=1, **kw)  # type: ignore[arg-type]
    before = _all_bytes(tmp_path / "l")
    with pytest.raises(LandingError, match="immutable"):
        simulate_derm_clinic(tmp_path / "l", workers=1, **kw)  # type: ignore[arg-type]
    assert _all_bytes(tmp_path / "l") == before
    stray = tmp_path / "l2" / STUDY / "teledermatology" / BATCH
    stray.mkdir(parents=True)
    (stray / "metadata.csv").write_text("half written")
    with pytest.raises(LandingError, match="interrupted"):
        simulate_derm_clinic(tmp_path / "l2", workers=1, **kw)  # type: ignore[arg-type]


def test_scales_clinics_and_full_population_without_rendering() -> None:
    assert {n: s.total for n, s in SCALES.items()} == {"tiny": 300, "demo": 2500, "full": 14000}
    assert [s.image_px for s in SCALES.values()] == [64, 64, 128]
    assert len(DEFAULT_CLINICS) >= 5 and DEFAULT_CLINICS[HELD_OUT_CLINIC].role == "held_out"
    assert len(CATEGORIES) >= 6 and {"BCC", "MEL", "SCC"} == {
        c.code for c in CATEGORIES if c.malignant
    }
    full = SCALES["full"]
    pops = {
        c: sample_clinic_population(DEFAULT_CLINICS[c], full.n_pairs(c), np.random.default_rng(7))
        for c, _ in full.clinic_pairs
    }
    assert sum(len(p) for p in pops.values()) == 14000
    allp = pd.concat(pops.values())
    dark = allp["fitzpatrick_true"] >= 5
    dev_dark = pd.concat(pops[c] for c in DEVELOPMENT_CLINICS)["fitzpatrick_true"] >= 5
    assert 0.05 < dark.mean() < 0.15 and dev_dark.mean() < 0.10
    assert (pops[HELD_OUT_CLINIC]["fitzpatrick_true"] >= 5).mean() > 3 * dev_dark.mean()
    assert 0.25 < allp["note_missing"].mean() < 0.35


def test_category_and_tone_mix_follow_the_clinic_profile() -> None:
    for clinic in DEFAULT_CLINICS.values():
        pop = sample_clinic_population(clinic, 8000, np.random.default_rng(3))
        shares = pop["diagnostic"].value_counts(normalize=True)
        for code, p in clinic.prevalence().items():
            assert abs(shares.get(code, 0.0) - p) < 0.03, (clinic.name, code)
        tone = pop["fitzpatrick_true"].value_counts(normalize=True)
        for t, p in enumerate(clinic.skin_mix, start=1):
            assert abs(tone.get(t, 0.0) - p) < 0.03, (clinic.name, t)


def test_two_annotators_disagree_realistically() -> None:
    pop = sample_clinic_population(DEFAULT_CLINICS["city_clinic"], 6000, np.random.default_rng(5))
    a, b = pop["fitzpatrick_a"], pop["fitzpatrick_b"]
    both = (a > 0) & (b > 0)
    exact = (a[both] == b[both]).mean()
    assert 0.40 < exact < 0.62  # Fitzpatrick17k's two vendors: 47.9 % exact
    assert ((a[both] - b[both]).abs() <= 1).mean() > 0.85
    assert (b[both] - a[both]).mean() > 0  # annotator B reads a little darker
    assert 0.005 < (a == 0).mean() < 0.05  # a few photos left unlabelled


def test_ita_from_pixels_orders_fitzpatrick_types(study) -> None:
    _, truth_root, _ = study
    table = pd.concat(read_derm_truth(truth_root, STUDY, c, BATCH).table for c in DEFAULT_CLINICS)
    rho, _ = spearmanr(table["fitzpatrick_true"], table["ita_pixels"])
    assert rho < -0.8
    medians = table.groupby("fitzpatrick_true")["ita_pixels"].median()
    assert list(medians.index) == [1, 2, 3, 4, 5, 6] and medians.is_monotonic_decreasing
    true_rho, _ = spearmanr(table["ita_true"], table["ita_target"])
    assert true_rho > 0.99
    assert melanin_for_ita(60.0) < melanin_for_ita(0.0) < melanin_for_ita(-50.0)


def _plain_acquisition() -> Acquisition:
    return Acquisition(
        dermoscopic=False, fov_mm=24.0, surface=0.04, exposure=1.0,
        white_balance=(1.0, 1.0, 1.0), light_gradient=(0.0, 0.0), vignette=0.0, aperture=9.0,
        blur_px=0.0, read_noise=0.002, shot_noise=0.0001, glare=(0.0, 0.0, 0.0), hairs=0,
        center=(0.0, 0.0), rotation=0.0,
    )  # fmt: skip


def _pixel_contrast(ita: float, bias: float, look: str) -> float:
    lesion = draw_lesion(np.random.default_rng(11), look, 8.0)
    skin = skin_tone(ita, np.random.default_rng(12))
    photo = render_photo(
        lesion, skin, _plain_acquisition(), size=96, rng=np.random.default_rng(13),
        contrast_bias=bias,
    )  # fmt: skip
    luma = linear_from_srgb(photo.rgb / 255.0) @ np.array([0.2126, 0.7152, 0.0722])
    return float(1 - np.median(luma[photo.core]) / np.median(luma[photo.skin]))


@pytest.mark.parametrize("look", ["nevus", "melanoma", "seborrheic"])
def test_lesion_contrast_falls_on_darker_skin_unless_bias_is_zero(look: str) -> None:
    itas = [62.0, 48.0, 34.0, 19.0, -10.0, -42.0]
    physical = [_pixel_contrast(i, 1.0, look) for i in itas]
    neutral = [_pixel_contrast(i, 0.0, look) for i in itas]
    planted = [_pixel_contrast(i, 2.0, look) for i in itas]
    assert spearmanr(itas, physical)[0] > 0.9  # darker skin (lower ITA): lower contrast
    assert physical[-1] < 0.7 * physical[1]
    assert max(neutral) - min(neutral) < 0.1 * np.mean(neutral)  # no skin-tone dependence
    assert planted[-1] < physical[-1]  # > 1 exaggerates the loss


def test_sidecar_contrast_columns_carry_the_mechanism(study, tmp_path: Path) -> None:
    _, truth_root, _ = study
    table = pd.concat(read_derm_truth(truth_root, STUDY, c, BATCH).table for c in DEFAULT_CLINICS)
    ratio = table["contrast"] / table["contrast_reference"]
    pigmented = table["informative"] == "image"
    assert spearmanr(table.loc[pigmented, "fitzpatrick_true"], ratio[pigmented])[0] < -0.7
    simulate_derm_clinic(
        tmp_path / "l", truth_root=tmp_path / "t", clinic="rural_outreach", scale="tiny",
        n_pairs=40, workers=1, contrast_bias=0.0,
    )  # fmt: skip
    flat = read_derm_truth(tmp_path / "t", STUDY, "rural_outreach", BATCH)
    assert flat.doc["contrast"]["contrast_bias"] == 0.0
    ratio = flat.table["contrast"] / flat.table["contrast_reference"]
    assert ratio.between(0.9, 1.1).all()


def test_notes_about_thirty_percent_missing_and_shared_per_lesion(study) -> None:
    _, truth_root, summary = study
    table = pd.concat(read_derm_truth(truth_root, STUDY, c, BATCH).table for c in DEFAULT_CLINICS)
    assert 0.2 < (table["note"] == "").mean() < 0.4
    assert (table.groupby("lesion_id")["note"].nunique() == 1).all()
    assert all(0.0 <= c.note_missing_rate <= 0.6 for c in summary.clinics)


def _balanced_cv(x, y) -> float:
    pred = cross_val_predict(
        make_pipeline(StandardScaler(with_mean=False), LogisticRegression(max_iter=3000)),
        x,
        y,
        cv=5,
    )
    return balanced_accuracy_score(y, pred)


def test_text_informs_text_categories_and_not_image_categories(big) -> None:
    _, truth = big
    table = truth.table[truth.table["note"] != ""]
    scores = {}
    for modality in ("text", "image"):
        part = table[table["diagnostic"].isin(truth.informative(modality))]
        words = CountVectorizer(ngram_range=(1, 2), min_df=2).fit_transform(part["note"])
        scores[modality] = _balanced_cv(words, part["diagnostic"])
    assert scores["text"] > 0.55 and scores["image"] < 0.45, scores  # 3 classes: chance 0.33


def _image_features(rgb: np.ndarray) -> list[float]:
    lab = lab_from_srgb(rgb)
    h = rgb.shape[0]
    yy, xx = np.mgrid[0:h, 0:h]
    r = np.hypot(yy - h / 2 + 0.5, xx - h / 2 + 0.5) / (h / 2)
    centre, rim = r < 0.45, r > 0.75
    big_l, a, b = lab[..., 0], lab[..., 1], lab[..., 2]
    dl = big_l[centre] - np.median(big_l[rim])
    lap = (
        -4 * big_l[1:-1, 1:-1]
        + big_l[:-2, 1:-1]
        + big_l[2:, 1:-1]
        + big_l[1:-1, :-2]
        + big_l[1:-1, 2:]
    )
    return [
        dl.mean(), big_l[centre].std(), a[centre].mean() - np.median(a[rim]),
        b[centre].mean() - np.median(b[rim]), np.percentile(dl, 10), np.percentile(dl, 90),
        lap[centre[1:-1, 1:-1]].var(), (dl < -10).mean(),
    ]  # fmt: skip


def test_image_informs_image_categories_and_not_text_categories(big) -> None:
    batch, truth = big
    table = truth.table
    feats = np.array(
        [
            _image_features(np.asarray(Image.open(batch / "images" / i).convert("RGB")))
            for i in table["img_id"]
        ]
    )
    scores = {}
    for modality in ("image", "text"):
        mask = table["diagnostic"].isin(truth.informative(modality)).to_numpy()
        scores[modality] = _balanced_cv(feats[mask], table["diagnostic"][mask])
    assert scores["image"] > 0.55 and scores["text"] < 0.45, scores


def test_sidecar_states_the_category_table(study) -> None:
    _, truth_root, _ = study
    doc = read_derm_truth(truth_root, STUDY, HELD_OUT_CLINIC, BATCH).doc
    assert doc["informative_groups"] == {
        "image": ["MEL", "NEV", "SEK"],
        "text": ["ACK", "BCC", "SCC"],
    }
    looks = {c["code"]: c["look"] for c in doc["categories"]}
    assert looks["ACK"] == looks["BCC"] == looks["SCC"]
    assert len({looks["MEL"], looks["NEV"], looks["SEK"], looks["ACK"]}) == 4
    histories = {c["code"]: c["history"] for c in doc["categories"]}
    assert histories["MEL"] == histories["NEV"] == histories["SEK"]
    assert len({histories["ACK"], histories["BCC"], histories["SCC"], histories["MEL"]}) == 4


def test_separable_random_field_matches_its_reference() -> None:
    rng = np.random.default_rng(0)
    waves = np.column_stack([rng.uniform(-5, 5, (6, 2)), rng.uniform(0, 6, 6)])
    axis = np.linspace(-1, 1, 17)
    matrix, offset = np.array([[2.0, 0.5], [-0.5, 2.0]]), np.array([0.3, -0.2])
    frame = Frame(axis, axis, matrix, offset)
    u, v = frame.uv()
    np.testing.assert_allclose(frame.field(waves), random_field(waves, u, v), atol=1e-4)


def test_ita_degrees_examples() -> None:
    light = np.full((4, 4, 3), (233, 200, 180), np.uint8)
    dark = np.full((4, 4, 3), (90, 60, 48), np.uint8)
    assert ita_degrees(light) > 41 > 10 > ita_degrees(dark)
    assert np.isnan(ita_degrees(light, np.zeros((4, 4), bool)))
    with pytest.raises(ValueError, match="mask shape"):
        ita_degrees(light, np.ones((3, 3), bool))
