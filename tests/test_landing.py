"""Landing layout: safe names, manifests written last, verification of every listed file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clinaudit.sources.landing import (
    LandingError,
    batch_hashes,
    read_manifest,
    scan_landing,
    sha256_file,
    tables_simulated,
    validate_name,
    verify_batch,
    write_manifest,
)


def _batch(root: Path, site: str = "site_a", batch: str = "b1") -> Path:
    d = root / "cxr" / site / batch
    (d / "images").mkdir(parents=True)
    (d / "labels.csv").write_text("Image Index,Finding Labels\nx.dcm,No Finding\n")
    (d / "images" / "x.dcm").write_bytes(b"\x00" * 200)
    return d


def _manifest(d: Path) -> Path:
    return write_manifest(
        d,
        study="cxr",
        site=d.parent.name,
        batch=d.name,
        simulated=True,
        created_utc="2026-01-01T00:00:00Z",
    )


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", ".", "", "a b", "site\\x", "-lead", "x" * 65])
def test_unsafe_names_are_refused(bad: str) -> None:
    with pytest.raises(LandingError, match="not a safe directory name"):
        validate_name("site", bad)


def test_manifest_round_trip_and_content_hash(tmp_path: Path) -> None:
    d = _batch(tmp_path)
    _manifest(d)
    m = read_manifest(d)
    assert [e.path for e in m.files] == ["images/x.dcm", "labels.csv"]
    assert m.entry("images/x.dcm").sha256 == sha256_file(d / "images" / "x.dcm")
    assert m.simulated is True
    assert verify_batch(d, m).ok
    # identical content elsewhere -> identical content hash; changed content -> different hash
    d2 = _batch(tmp_path / "other")
    _manifest(d2)
    assert read_manifest(d2).content_hash == m.content_hash


def test_verification_names_each_problem(tmp_path: Path) -> None:
    d = _batch(tmp_path)
    _manifest(d)
    m = read_manifest(d)
    (d / "images" / "x.dcm").write_bytes(b"\x01" * 200)  # same size, different bytes
    (d / "images" / "extra.dcm").write_bytes(b"1")
    v = verify_batch(d, m)
    assert v.hash_mismatch == ("images/x.dcm",)
    assert v.unlisted == ("images/extra.dcm",)
    assert not v.ok
    (d / "labels.csv").unlink()
    v = verify_batch(d, m)
    assert v.missing == ("labels.csv",)
    assert any("absent" in p[1] for p in v.problems())


def test_manifest_errors_are_clear(tmp_path: Path) -> None:
    d = _batch(tmp_path)
    with pytest.raises(LandingError, match="manifest.json is missing"):
        read_manifest(d)
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(LandingError, match="not valid UTF-8 JSON"):
        read_manifest(d)
    _manifest(d)
    doc = json.loads((d / "manifest.json").read_text())
    doc["files"][0]["path"] = "../../etc/passwd"
    (d / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(LandingError, match="escapes the batch directory"):
        read_manifest(d)
    doc["files"][0]["path"] = "images/x.dcm"
    doc["site"] = "site_b"
    (d / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(LandingError, match="lies in site_a/b1"):
        read_manifest(d)


def test_scan_ready_only_with_manifest_and_refuses_bad_names(tmp_path: Path) -> None:
    ready = _batch(tmp_path, "site_a", "b1")
    _manifest(ready)
    _batch(tmp_path, "site_a", "b2")  # uploading: no manifest yet
    (tmp_path / "cxr" / "bad name" / "b1").mkdir(parents=True)
    scan = scan_landing(tmp_path, "cxr")
    assert [b.batch for b in scan.ready()] == ["b1"]
    assert {b.batch for b in scan.batches} == {"b1", "b2"}
    assert len(scan.refused) == 1 and "bad name" in str(scan.refused[0])
    assert scan_landing(tmp_path, "absent").batches == ()


def test_batch_hashes_and_simulated_flag_come_from_the_manifests(tmp_path: Path) -> None:
    import pandas as pd

    m1 = read_manifest(_manifest(_batch(tmp_path, "site_a", "b1")).parent)
    m2 = read_manifest(_manifest(_batch(tmp_path, "site_b", "b7")).parent)
    tables = {
        "site_b": pd.DataFrame({"batch": ["b7", "b7"]}),
        "site_a": pd.DataFrame({"batch": ["b1"]}),
    }
    hashes = batch_hashes(tables, tmp_path, "cxr")
    assert hashes == {"cxr/site_a/b1": m1.content_hash, "cxr/site_b/b7": m2.content_hash}
    assert list(hashes) == sorted(hashes)
    assert tables_simulated(tables, tmp_path, "cxr") is True
