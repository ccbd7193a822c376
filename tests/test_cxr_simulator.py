"""The multi-site chest X-ray simulator: formats, determinism, labels and measured site shifts."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from scipy import ndimage

from clinaudit.sources.cxr_labels import FINDINGS, NO_FINDING
from clinaudit.sources.cxr_population import sample_population as _population
from clinaudit.sources.cxr_simulator import main, simulate_cohort, simulate_site_batch
from clinaudit.sources.cxr_sites import DEFAULT_SITES, REFERENCE_SITE, SCALES, CohortScale
from clinaudit.sources.dicom_io import CxrDicomMeta, read_dicom_pixels, write_cxr_dicom
from clinaudit.sources.landing import LandingError, read_manifest, verify_batch
from clinaudit.sources.nih_labels import NIH_COLUMNS as NIH_SOURCE_COLUMNS
from clinaudit.sources.nih_labels import NIH_HEADER

NIH_COLUMNS = list(NIH_SOURCE_COLUMNS)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    root = tmp_path_factory.mktemp("cxr")
    summary = simulate_cohort(root / "landing", truth_root=root / "truth", scale="tiny", workers=2)
    return root / "landing", root / "truth", summary


def _batch(landing: Path, site: str) -> Path:
    return landing / "cxr" / site / "b0001"


def _all_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_cohort_layout_and_manifest(cohort) -> None:
    landing, _, summary = cohort
    assert [s.site for s in summary.sites] == list(DEFAULT_SITES)
    assert summary.site("vendor_dev").n_images == 160
    assert summary.site("site_c").n_images == 60
    for site in DEFAULT_SITES:
        batch = _batch(landing, site)
        manifest = read_manifest(batch)
        assert manifest.simulated and manifest.label_layout == "nih"
        assert verify_batch(batch, manifest).ok
        n_dcm = len(list((batch / "images").glob("*.dcm")))
        assert n_dcm == summary.site(site).n_images
        assert len(manifest.files) == n_dcm + (3 if site == REFERENCE_SITE else 1)


def test_nih_csv_layout(cohort) -> None:
    landing, _, _ = cohort
    seen: set[str] = set()
    for site, prof in DEFAULT_SITES.items():
        path = _batch(landing, site) / "labels.csv"
        assert path.read_text().splitlines()[0] == NIH_HEADER
        df = pd.read_csv(path)
        assert list(df.columns) == NIH_COLUMNS
        assert df["Image Index"].str.fullmatch(rf"{prof.code}_\d{{8}}_\d{{3}}\.dcm").all()
        assert not seen & set(df["Image Index"])
        seen |= set(df["Image Index"])
        for labels in df["Finding Labels"]:
            names = labels.split("|")
            assert names == [NO_FINDING] or names == [f for f in FINDINGS if f in names]
        assert df["Patient Age"].between(1, 95).all()
        assert set(df["Patient Gender"]) <= {"M", "F"} and set(df["View Position"]) <= {"PA", "AP"}
        first = df.groupby("Patient ID")["Follow-up #"].min()
        assert (first == 0).all()
        for img in df["Image Index"]:
            assert (_batch(landing, site) / "images" / img).is_file()


def test_dicom_tags_match_csv_and_site(cohort) -> None:
    landing, _, _ = cohort
    for site, prof in DEFAULT_SITES.items():
        df = pd.read_csv(_batch(landing, site) / "labels.csv")
        row = df.iloc[3]
        px, ds = read_dicom_pixels(_batch(landing, site) / "images" / row["Image Index"])
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.Modality == prof.modality and ds.Manufacturer == prof.manufacturer
        assert ds.ManufacturerModelName == prof.model_name
        assert ds.PhotometricInterpretation == prof.photometric
        assert ds.BitsStored == prof.bits_stored and ds.HighBit == prof.bits_stored - 1
        assert ds.BitsAllocated == (8 if prof.bits_stored == 8 else 16)
        assert ds.PatientID == str(row["Patient ID"])
        assert ds.PatientName == f"SIM^PATIENT{row['Patient ID']}"
        assert ds.PatientAge == f"{row['Patient Age']:03d}Y"
        assert ds.PatientSex == row["Patient Gender"] and ds.ViewPosition == row["View Position"]
        assert ds.BodyPartExamined == "CHEST"
        assert (ds.Rows, ds.Columns) == (row["OriginalImage[Width"], row["Height]"])
        assert float(ds.PixelSpacing[0]) == pytest.approx(row["OriginalImagePixelSpacing[x"])
        assert float(ds.PixelSpacing[0]) * ds.Rows == pytest.approx(430, rel=0.02)
        assert px.shape == (ds.Rows, ds.Columns) and int(px.max()) < 2**prof.bits_stored
        assert ds.SOPInstanceUID.startswith("2.25.") and len(ds.SOPInstanceUID) <= 64


def test_dicom_pixel_round_trip() -> None:
    meta = CxrDicomMeta(
        "2.25.11", "2.25.12", "2.25.13", "42", "SIM^PATIENT42", "M", 7, "AP", "CR", "Acme",
        "CR1", "SIM", "MONOCHROME1", 10, 3.5, 90.0, "20170304",
    )  # fmt: skip
    pixels = np.random.default_rng(0).integers(0, 1024, (24, 32)).astype(np.uint16)
    data = write_cxr_dicom(None, pixels, meta)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert np.array_equal(ds.pixel_array, pixels)
    assert ds.PatientAge == "007Y" and ds.PresentationLUTShape == "INVERSE"
    with pytest.raises(ValueError, match="exceeds bits_stored=10"):
        write_cxr_dicom(None, pixels + 1024, meta)
    with pytest.raises(ValueError, match="dtype uint8 does not match bits_stored=10"):
        write_cxr_dicom(None, pixels.astype(np.uint8), meta)


def test_vendor_split_is_patient_disjoint(cohort) -> None:
    landing, _, summary = cohort
    batch = _batch(landing, REFERENCE_SITE)
    train = (batch / "train_val_list.txt").read_text().split()
    test = (batch / "test_list.txt").read_text().split()
    df = pd.read_csv(batch / "labels.csv")
    assert sorted(train + test) == sorted(df["Image Index"])
    pid = dict(zip(df["Image Index"], df["Patient ID"], strict=True))
    assert not {pid[i] for i in train} & {pid[i] for i in test}
    assert 32 <= len(test) <= 44
    assert summary.site(REFERENCE_SITE).n_test == len(test)


def test_written_labels_match_truth_up_to_label_noise(cohort) -> None:
    landing, truth, _ = cohort
    for site, prof in DEFAULT_SITES.items():
        df = pd.read_csv(_batch(landing, site) / "labels.csv")
        side = pd.read_csv(truth / "cxr" / site / "b0001.csv")
        assert list(side["Image Index"]) == list(df["Image Index"])
        for f in FINDINGS:
            written = df["Finding Labels"].str.split("|").apply(lambda names, f=f: f in names)
            assert (written.astype(int) == side[f"written_{f}"]).all()
            pos = side[f"true_{f}"] == 1
            assert ((side[f"sev_{f}"] > 0) == pos).all()
        true = side[[f"true_{f}" for f in FINDINGS]].to_numpy()
        wrote = side[[f"written_{f}" for f in FINDINGS]].to_numpy()
        n_pos, n_neg = true.sum(), (1 - true).sum()
        misses, false = (true & ~wrote).sum(), (~true & wrote).sum()
        # Binomial bounds (mean + 4 sd) of the documented flip rates.
        for k, n, p in (
            (misses, n_pos, prof.label_miss_rate),
            (false, n_neg, prof.label_false_rate),
        ):
            assert k <= n * p + 4 * np.sqrt(n * p * (1 - p)) + 1
    side_e = pd.read_csv(truth / "cxr" / "site_e" / "b0001.csv")
    t = side_e[[f"true_{f}" for f in FINDINGS]].to_numpy().astype(bool)
    w = side_e[[f"written_{f}" for f in FINDINGS]].to_numpy().astype(bool)
    assert (t & ~w).sum() >= 1  # the noisy-label site really has flipped labels


def test_prevalence_and_co_occurrence_at_moderate_size() -> None:
    prof = DEFAULT_SITES[REFERENCE_SITE]
    df = _population(prof, 20000, np.random.default_rng(1))
    target = prof.prevalence()
    for f in FINDINGS:
        got = df[f"true_{f}"].mean()
        assert abs(got - target[f]) <= max(0.006, 0.25 * target[f]), (f, got, target[f])
    t = {f: df[f"true_{f}"].astype(bool) for f in FINDINGS}
    assert t["Edema"][t["Cardiomegaly"]].mean() > 3 * t["Edema"].mean()
    assert t["Pneumonia"][t["Consolidation"]].mean() > 3 * t["Pneumonia"].mean()
    assert t["Fibrosis"][t["Pleural_Thickening"]].mean() > 2 * t["Fibrosis"].mean()
    no_finding = ~np.column_stack([t[f] for f in FINDINGS]).any(axis=1)
    assert 0.4 < no_finding.mean() < 0.65
    # Findings mostly persist from one follow-up to the next.
    df["pid"] = df["patient_idx"]
    nxt = df.groupby("pid")["true_Effusion"].shift(-1)
    pairs = df.loc[nxt.notna(), "true_Effusion"].astype(bool)
    assert nxt[nxt.notna()][pairs].mean() > 0.5


def test_icu_site_is_sicker_and_mostly_ap() -> None:
    vendor = _population(DEFAULT_SITES["vendor_dev"], 6000, np.random.default_rng(2))
    icu = _population(DEFAULT_SITES["site_b"], 6000, np.random.default_rng(2))
    for f in ("Effusion", "Edema", "Atelectasis"):
        assert icu[f"true_{f}"].mean() > 1.4 * vendor[f"true_{f}"].mean()
    assert (icu["View Position"] == "AP").mean() > 0.75 > (vendor["View Position"] == "AP").mean()


def test_same_seed_same_bytes_any_workers_other_seed_differs(tmp_path: Path) -> None:
    runs = {}
    for name, seed, workers in (("a", 0, 1), ("b", 0, 2), ("c", 1, 1)):
        simulate_cohort(
            tmp_path / name / "landing",
            truth_root=tmp_path / name / "truth",
            scale=SCALES["tiny"],
            seed=seed,
            sites=["site_c"],
            workers=workers,
        )
        runs[name] = _all_bytes(tmp_path / name)
    assert runs["a"] == runs["b"]
    manifest = "landing/cxr/site_c/b0001/manifest.json"
    assert runs["a"][manifest] != runs["c"][manifest]
    common = set(runs["a"]) & set(runs["c"])
    assert sum(runs["a"][k] != runs["c"][k] for k in common) >= len(common) // 2


def test_refuses_to_overwrite_landed_batch(tmp_path: Path) -> None:
    kw = dict(truth_root=tmp_path / "t", site="site_a", n_images=3, scale="tiny")
    s = simulate_site_batch(tmp_path / "l", **kw)
    assert s.n_images == 3 and (s.batch_dir / "manifest.json").is_file()
    with pytest.raises(LandingError, match="immutable.*b0002"):
        simulate_site_batch(tmp_path / "l", **kw)
    custom = dataclasses.replace(DEFAULT_SITES["site_a"], name="site_new", code="sn")
    s2 = simulate_site_batch(tmp_path / "l", truth_root=tmp_path / "t", site=custom, n_images=4,
                             scale="tiny", batch="b0002")  # fmt: skip
    assert s2.batch_dir == tmp_path / "l" / "cxr" / "site_new" / "b0002"
    assert verify_batch(s2.batch_dir, read_manifest(s2.batch_dir)).ok


def test_landing_dir_and_unlabelled_batches(tmp_path: Path) -> None:
    summary = simulate_cohort(tmp_path / "l", truth_root=tmp_path / "t", scale="tiny",
                              sites=["site_a"], landing_dir="other_study", workers=1)  # fmt: skip
    batch = summary.site("site_a").batch_dir
    assert batch == tmp_path / "l" / "other_study" / "site_a" / "b0001"
    assert read_manifest(batch).study == "other_study" and not (tmp_path / "l" / "cxr").exists()
    side = json.loads((tmp_path / "t" / "other_study" / "site_a" / "b0001.json").read_text())
    assert side["landing_dir"] == "other_study" and "unlabelled" not in side
    # The reference site unlabelled: no split files, empty Finding Labels, truth kept.
    s = simulate_site_batch(tmp_path / "l", truth_root=tmp_path / "t", site=REFERENCE_SITE,
                            n_images=8, scale="tiny", unlabelled=True)  # fmt: skip
    assert s.unlabelled and (s.n_train, s.n_test) == (0, 0)
    assert sorted(p.name for p in s.batch_dir.iterdir()) == [
        "images",
        "labels.csv",
        "manifest.json",
    ]
    df = pd.read_csv(s.batch_dir / "labels.csv", keep_default_na=False)
    assert list(df.columns) == NIH_COLUMNS and (df["Finding Labels"] == "").all()
    truth = pd.read_csv(tmp_path / "t" / "cxr" / REFERENCE_SITE / "b0001.csv")
    assert truth["Image Index"].tolist() == df["Image Index"].tolist()
    assert {f"true_{f}" for f in FINDINGS} <= set(truth.columns)
    assert json.loads(s.truth_json.read_text())["unlabelled"] is True


def test_cli_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["--out", str(tmp_path / "l"), "--truth", str(tmp_path / "t"), "--scale", "tiny",
               "--sites", "site_d", "--workers", "1"])  # fmt: skip
    assert rc == 0
    assert "site_d" in capsys.readouterr().out
    assert (tmp_path / "l" / "cxr" / "site_d" / "b0001" / "manifest.json").is_file()
    assert (tmp_path / "t" / "cxr" / "site_d" / "b0001.json").is_file()


def test_custom_scale_validates() -> None:
    with pytest.raises(ValueError, match="native_px"):
        CohortScale("bad", 10, 2, (), native_px=(200, 100))
    with pytest.raises(ValueError, match="scale='huge'"):
        simulate_cohort("/nonexistent", truth_root="/nonexistent", scale="huge")


# ---- measured evidence that sites differ -----------------------------------------------------


def image_features(path: Path) -> dict[str, float]:
    """Simple per-image quality features, independent of the simulator's own bookkeeping."""
    px, ds = read_dicom_pixels(path)
    v = px.astype(np.float64) / (2 ** int(ds.BitsStored) - 1)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        v = 1.0 - v
    n = v.shape[0]
    c = v[int(0.15 * n) : int(0.85 * n), int(0.15 * n) : int(0.85 * n)]
    resid = c - ndimage.uniform_filter(c, 3)
    common = np.asarray(Image.fromarray(c.astype(np.float32)).resize((80, 80), Image.BILINEAR))
    return {
        "brightness": float(c.mean()),
        "contrast": float(c.std()),
        "noise": float(1.4826 * np.median(np.abs(resid - np.median(resid)))),
        "sharpness": float(ndimage.laplace(common).var() / common.var()),
        "pixel_spacing": float(ds.PixelSpacing[0]),
    }


def test_measured_site_shifts_match_declared_directions(cohort) -> None:
    landing, truth, _ = cohort
    medians = {}
    for site in DEFAULT_SITES:
        feats = [image_features(p) for p in sorted((_batch(landing, site) / "images").glob("*"))]
        medians[site] = pd.DataFrame(feats).median()
    ref = medians[REFERENCE_SITE]
    n_checked = 0
    for site in DEFAULT_SITES:
        if site == REFERENCE_SITE:
            continue
        pushed = json.loads((truth / "cxr" / site / "b0001.json").read_text())["pushed"]
        for feature, direction in pushed.items():
            diff = medians[site][feature] - ref[feature]
            assert np.sign(diff) == (1 if direction == "+" else -1), (site, feature, diff)
            assert abs(diff) > 0.05 * abs(ref[feature]), (site, feature, diff)
            n_checked += 1
    assert json.loads((truth / "cxr" / "site_a" / "b0001.json").read_text())["pushed"] == {}
    assert abs(medians["site_a"]["brightness"] - ref["brightness"]) < 0.03
    assert n_checked >= 8
