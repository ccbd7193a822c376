"""The triage site simulator: a labelled dev batch and an unlabelled pile under cxr_triage/."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest

from clinaudit.sources.cxr_labels import FINDINGS
from clinaudit.sources.cxr_simulator import simulate_site_batch
from clinaudit.sources.landing import read_manifest, verify_batch
from clinaudit.sources.nih_labels import NIH_HEADER
from clinaudit.sources.triage_simulator import (
    DEV_BATCH,
    PILE_BATCH,
    TRIAGE_SCALES,
    TriageScale,
    simulate_triage_site,
)
from clinaudit.validation.ingest import IngestConfig, ingest_batch
from clinaudit.validation.ingest_loop import BatchIngest, ingest_partition
from clinaudit.validation.schemas import ValidatedImages

KEY = b"k" * 32
SITE = "triage_a"


@pytest.fixture(scope="module")
def triage(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("triage")
    summary = simulate_triage_site(
        root / "landing", truth_root=root / "truth", site=SITE, scale="tiny", seed=5, workers=1
    )
    return root, summary


def _labels(batch_dir: Path) -> pd.DataFrame:
    return pd.read_csv(batch_dir / "labels.csv", dtype=str, keep_default_na=False)


def _digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_two_batches_land_under_the_triage_folder(triage) -> None:
    root, s = triage
    site_dir = root / "landing" / "cxr_triage" / SITE
    assert sorted(p.name for p in site_dir.iterdir()) == [DEV_BATCH, PILE_BATCH]
    assert (s.dev.batch_dir, s.pile.batch_dir) == (site_dir / DEV_BATCH, site_dir / PILE_BATCH)
    tiny = TRIAGE_SCALES["tiny"]
    assert (s.dev.n_images, s.pile.n_images) == (tiny.dev_images, tiny.pile_images)
    assert s.n_images == 500 and s.scale == "tiny" and s.seed == 5
    for summary in (s.dev, s.pile):
        manifest = read_manifest(summary.batch_dir)
        assert manifest.study == "cxr_triage" and manifest.site == SITE
        assert manifest.simulated and manifest.label_layout == "nih"
        assert verify_batch(summary.batch_dir, manifest).ok
        assert (root / "truth" / "cxr_triage" / SITE / f"{summary.batch}.csv").is_file()
    assert not (s.pile.batch_dir / "train_val_list.txt").exists()
    assert not (s.pile.batch_dir / "test_list.txt").exists()
    assert s.pile.unlabelled and not s.dev.unlabelled and s.pile.n_test == 0


def test_pile_has_the_nih_header_and_no_labels_truth_keeps_them(triage) -> None:
    root, s = triage
    path = s.pile.batch_dir / "labels.csv"
    assert path.read_text().splitlines()[0] == NIH_HEADER
    pile = _labels(s.pile.batch_dir)
    assert (pile["Finding Labels"] == "").all()
    assert pile["Patient Age"].str.fullmatch(r"\d+").all()
    assert set(pile["View Position"]) <= {"AP", "PA"}
    side = pd.read_csv(root / "truth" / "cxr_triage" / SITE / f"{PILE_BATCH}.csv")
    assert side["Image Index"].tolist() == pile["Image Index"].tolist()
    true = side[[f"true_{f}" for f in FINDINGS]].to_numpy()
    assert 0.2 < true.any(axis=1).mean() < 0.8  # a real mix of normal and abnormal studies
    dev = _labels(s.dev.batch_dir)
    assert (dev["Finding Labels"] != "").all()
    # Separate patients and image names in the two batches of one site.
    assert not set(dev["Patient ID"]) & set(pile["Patient ID"])
    assert not set(dev["Image Index"]) & set(pile["Image Index"])


def test_dev_split_is_patient_disjoint(triage) -> None:
    _, s = triage
    batch = s.dev.batch_dir
    train = (batch / "train_val_list.txt").read_text().split()
    test = (batch / "test_list.txt").read_text().split()
    dev = _labels(batch)
    assert sorted(train + test) == sorted(dev["Image Index"])
    pid = dict(zip(dev["Image Index"], dev["Patient ID"], strict=True))
    assert not {pid[i] for i in train} & {pid[i] for i in test}
    assert 80 <= len(test) <= 95 and s.dev.n_test == len(test)


def test_pile_ingests_only_with_allow_unlabelled(triage) -> None:
    _, s = triage
    off = ingest_batch(s.pile.batch_dir, pseudonym_key=KEY)
    assert off.table.empty and off.n_rows_in == 200
    errors = off.quarantine[off.quarantine["severity"] == "error"]
    assert len(errors) == 200 and set(errors["check"]) == {"unknown_finding"}
    assert errors["message"].str.contains("not labelled").all()
    on = ingest_batch(
        s.pile.batch_dir, pseudonym_key=KEY, config=IngestConfig(allow_unlabelled=True)
    )
    assert on.n_images_ok == 200
    # Only the warning every simulated batch gets (image names carry the study number).
    assert set(on.quarantine["check"]) == {"identifier_in_image_id"}
    assert on.table[list(FINDINGS)].isna().all().all()
    assert set(on.table["split"]) == {"eval"} and on.table["sha256"].str.len().eq(64).all()
    ValidatedImages.validate(on.table, lazy=True)


def test_ingest_loop_reads_dev_and_pile_together(triage) -> None:
    root, _ = triage
    config = IngestConfig(allow_unlabelled=True)

    def one(ref) -> BatchIngest:
        res = ingest_batch(ref.path, pseudonym_key=KEY, config=config)
        return BatchIngest(
            res.table, res.quarantine, res.manifest.content_hash, True, res.n_rows_in
        )

    part = ingest_partition(
        root / "landing", "cxr_triage", SITE, ingest_batch=one, empty_table=pd.DataFrame()
    )
    assert part.batches["batch"].tolist() == [DEV_BATCH, PILE_BATCH]
    assert part.batches["status"].eq("ingested").all()
    assert part.quarantine["severity"].eq("warning").all()
    t = part.table
    labelled = t[list(FINDINGS)].notna().all(axis=1)
    assert (labelled == (t["batch"] == DEV_BATCH)).all()
    assert set(t.loc[labelled, "split"]) == {"train", "test"}
    assert set(t.loc[~labelled, "split"]) == {"eval"}
    assert not set(t.loc[labelled, "patient_pseudonym"]) & set(
        t.loc[~labelled, "patient_pseudonym"]
    )
    ValidatedImages.validate(t, lazy=True)


def test_same_seed_same_bytes(triage, tmp_path: Path) -> None:
    root, _ = triage
    simulate_triage_site(
        tmp_path / "landing", truth_root=tmp_path / "truth", site=SITE, scale="tiny", seed=5,
        workers=1,
    )  # fmt: skip
    assert _digest(tmp_path) == _digest(root)


def test_scales_sites_and_options_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="scale='huge' is not a triage scale"):
        simulate_triage_site(tmp_path, truth_root=tmp_path, scale="huge")
    with pytest.raises(ValueError, match="site='site_a' is not a triage site.*triage_a"):
        simulate_triage_site(tmp_path, truth_root=tmp_path, site="site_a")
    with pytest.raises(ValueError, match="dev_test=300"):
        TriageScale("bad", 300, 300, 10, native_px=(96, 160))
    with pytest.raises(ValueError, match="native_px"):
        TriageScale("bad", 300, 80, 10, native_px=(160, 96))
    assert TRIAGE_SCALES["full"].pile_images == 30_000
    kw = dict(truth_root=tmp_path / "t", site="site_a", n_images=3, scale="tiny")
    with pytest.raises(ValueError, match="test_images=2 for an unlabelled batch"):
        simulate_site_batch(tmp_path / "l", unlabelled=True, test_images=2, **kw)
    with pytest.raises(ValueError, match="patient_block=10"):
        simulate_site_batch(tmp_path / "l", patient_block=10, **kw)
    assert not (tmp_path / "l").exists()
