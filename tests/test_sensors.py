"""Landing sensor: ticks evaluated with ``build_sensor_context`` on tiny landed batches."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from cxr_fixtures import make_manifest, nih_batch, tree_hashes

from clinaudit.assets.factory import partition_job
from clinaudit.assets.resources import ClinauditHome, LandingWatch
from clinaudit.orchestration import landing_plan
from clinaudit.orchestration.definitions import build_defs
from clinaudit.orchestration.sensors import (
    REFUSED_FILE,
    BatchObservation,
    LandingCursor,
    build_landing_sensor,
    plan_tick,
)
from clinaudit.sources.landing import read_manifest, write_manifest
from clinaudit.studies import get_study, registered_studies
from clinaudit.validation.ingest_loop import BATCH_COLUMNS, PartitionIngest

STUDY = get_study("multisite_cxr")
cxr_landing_sensor = build_landing_sensor(STUDY, partition_job(STUDY))
SITES = "multisite_cxr_sites"

DAY = 86_400.0


@pytest.fixture
def home(tmp_path: Path) -> ClinauditHome:
    return ClinauditHome(root=str(tmp_path))


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.ephemeral() as inst:
        yield inst


def tick(
    home: ClinauditHome, instance: dg.DagsterInstance, cursor: str | None, grace: float = DAY
) -> dg.SensorResult:
    """One evaluation; partition add requests are applied as the daemon would."""
    ctx = dg.build_sensor_context(
        cursor=cursor,
        instance=instance,
        resources={"home": home, "landing_watch": LandingWatch(quarantine_after_s=grace)},
    )
    result = cxr_landing_sensor(ctx)
    assert isinstance(result, dg.SensorResult)
    for req in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
    return result


def batch(home: ClinauditHome, site: str, name: str = "b1", seed: int = 0, **kw) -> Path:
    return nih_batch(home.landing, site=site, batch=name, seed=seed, **kw)


def content_hash(d: Path) -> str:
    return read_manifest(d).content_hash


def test_every_study_has_a_landing_sensor_on_its_partition_job() -> None:
    defs = build_defs()
    for study in registered_studies():
        sensor = defs.resolve_sensor_def(f"{study.name}_landing_sensor")
        assert sensor.job_name == f"{study.name}_partition_job"
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
        assert sensor.minimum_interval_seconds == 30
        job = defs.resolve_job_def(f"{study.name}_partition_job")
        assert job.partitions_def is not None
        assert job.partitions_def.name == f"{study.name}_{study.partition_by}s"
    job = defs.resolve_job_def("multisite_cxr_partition_job")
    keys = {k.to_user_string() for k in job.asset_layer.executable_asset_keys}
    stages = ("validated", "quarantine", "batches", "predictions", "partition_metrics")
    assert keys == {f"multisite_cxr/{s}" for s in stages}


def test_requests_resolve_through_dagster_for_a_site_added_in_the_same_tick(home) -> None:
    batch(home, "site_a")
    with dg.instance_for_test() as inst:
        ctx = dg.build_sensor_context(
            instance_ref=inst.get_ref(),  # lets Dagster check the partition key, as the daemon does
            definitions=build_defs(home),
            resources={"home": home, "landing_watch": LandingWatch()},
        )
        data = cxr_landing_sensor.evaluate_tick(ctx)
    [req] = data.run_requests
    assert req.tags["dagster/partition"] == "site_a"
    assert req.tags["dagster/sensor_name"] == "multisite_cxr_landing_sensor"
    assert [r.partition_keys for r in data.dynamic_partitions_requests] == [["site_a"]]


def test_partial_upload_is_ignored_until_it_verifies(home, instance) -> None:
    batch(home, "site_a", manifest=False)  # files there, manifest not yet
    first = tick(home, instance, None)
    assert first.run_requests == [] and not first.dynamic_partitions_requests
    assert json.loads(first.cursor)["pending"] == {}  # no manifest: not even pending

    # Manifest written while the last image is still arriving (truncated): not ready, pending.
    d = home.landing / "cxr" / "site_a" / "b1"
    make_manifest(d)
    image = sorted((d / "images").iterdir())[-1]
    full = image.read_bytes()
    image.write_bytes(full[: len(full) // 2])
    second = tick(home, instance, first.cursor)
    assert second.run_requests == [] and not second.dynamic_partitions_requests
    assert list(json.loads(second.cursor)["pending"]) == ["site_a/b1"]
    assert not (home.quarantine / "landing").exists()  # grace period not over

    image.write_bytes(full)  # upload finished
    third = tick(home, instance, second.cursor)
    assert [r.partition_key for r in third.run_requests] == ["site_a"]
    assert json.loads(third.cursor)["pending"] == {}  # resolved entries are pruned


def test_ready_batch_one_request_new_site_partition_and_redelivery(home, instance) -> None:
    d = batch(home, "site_a")
    first = tick(home, instance, None)
    assert len(first.run_requests) == 1
    req = first.run_requests[0]
    assert req.partition_key == "site_a"
    assert req.run_key == f"site_a:b1:{content_hash(d)}"
    assert req.tags == {"clinaudit/site": "site_a", "clinaudit/batches": "b1"}
    [add] = first.dynamic_partitions_requests
    assert add.partitions_def_name == SITES and list(add.partition_keys) == ["site_a"]
    assert instance.get_dynamic_partitions(SITES) == ["site_a"]

    # Same batch, manifest re-exported (new timestamp, same files): same content, no run.
    write_manifest(
        d,
        study="cxr",
        site="site_a",
        batch="b1",
        simulated=True,
        created_utc="2030-01-01T00:00:00Z",
    )
    again = tick(home, instance, first.cursor)
    assert again.run_requests == [] and not again.dynamic_partitions_requests
    assert again.skip_reason is not None and "1 handled" in again.skip_reason.skip_message

    # The same data re-sent under a new batch name: also no run (documented choice).
    copy = d.parent / "b1_resent"
    shutil.copytree(d, copy)
    make_manifest(copy)
    resent = tick(home, instance, again.cursor)
    assert resent.run_requests == []
    assert json.loads(resent.cursor)["requested"]["site_a"] == {
        "b1": content_hash(d)[:16],
        "b1_resent": content_hash(d)[:16],
    }


def test_changed_content_gives_a_new_request(home, instance) -> None:
    batch(home, "site_a")
    cursor = tick(home, instance, None).cursor
    d2 = batch(home, "site_a", "b2", seed=1)  # a new batch with other data
    new = tick(home, instance, cursor)
    assert [(r.partition_key, r.run_key) for r in new.run_requests] == [
        ("site_a", f"site_a:b2:{content_hash(d2)}")
    ]
    assert not new.dynamic_partitions_requests  # the site is known

    # b2 corrected in place: new bytes, new manifest -> new content hash -> new request.
    (d2 / "labels.csv").write_text((d2 / "labels.csv").read_text() + "\n")
    make_manifest(d2)
    changed = tick(home, instance, new.cursor)
    assert [r.run_key for r in changed.run_requests] == [f"site_a:b2:{content_hash(d2)}"]
    assert changed.run_requests[0].run_key != new.run_requests[0].run_key


def test_corrupt_manifest_is_quarantined_and_other_sites_still_run(
    home, instance, monkeypatch
) -> None:
    batch(home, "site_a")
    bad = batch(home, "site_b")
    (bad / "manifest.json").write_text('{"format": "clinaudit.landing/v1", "files": [')
    hashed = batch(home, "site_c")
    image = sorted((hashed / "images").iterdir())[0]
    data = bytearray(image.read_bytes())
    data[-4:] = b"\xff" * 4  # same size, other bytes: hashes never verify
    image.write_bytes(bytes(data))
    before = tree_hashes(home.landing)

    result = tick(home, instance, None, grace=0)
    assert [r.partition_key for r in result.run_requests] == ["site_a"]
    assert list(result.dynamic_partitions_requests[0].partition_keys) == ["site_a"]
    assert tree_hashes(home.landing) == before  # landed data never modified
    record = json.loads((home.quarantine / "landing/cxr/site_b/b1.json").read_text())
    assert record["check"] == "manifest_unreadable" and record["content_hash"] is None
    assert "not valid UTF-8 JSON" in record["problems"][0]["problem"]
    record_c = json.loads((home.quarantine / "landing/cxr/site_c/b1.json").read_text())
    assert record_c["check"] == "manifest_not_verified"
    assert record_c["problems"] == [
        {
            "file": f"images/{image.name}",
            "problem": "sha256 differs from manifest.json (corrupted or changed)",
            "fix": "re-upload the file",
        }
    ]
    assert sorted(json.loads(result.cursor)["quarantined"]) == ["site_b/b1", "site_c/b1"]

    # Unchanged quarantined batches are not verified (hashed) again nor their record rewritten.
    stamp = (home.quarantine / "landing/cxr/site_b/b1.json").stat().st_mtime_ns
    monkeypatch.setattr(landing_plan, "verify_batch", lambda *a, **k: pytest.fail("re-verified"))
    later = tick(home, instance, result.cursor, grace=0)
    monkeypatch.undo()
    assert later.run_requests == []
    assert (home.quarantine / "landing/cxr/site_b/b1.json").stat().st_mtime_ns == stamp

    make_manifest(bad)  # the site re-sends a good manifest: the batch is ready now
    fixed = tick(home, instance, later.cursor, grace=0)
    assert [r.partition_key for r in fixed.run_requests] == ["site_b"]
    assert list(json.loads(fixed.cursor)["quarantined"]) == ["site_c/b1"]


def test_unsafe_names_are_reported_and_do_not_stop_the_scan(home, instance) -> None:
    batch(home, "site_a")
    (home.landing / "cxr" / "bad site" / "b1").mkdir(parents=True)
    (home.landing / "cxr" / "site_a" / "-b").mkdir()
    result = tick(home, instance, None)
    assert [r.partition_key for r in result.run_requests] == ["site_a"]
    refused = json.loads((home.quarantine / "landing/cxr" / REFUSED_FILE).read_text())
    assert sorted(r["name"] for r in refused) == ["-b", "bad site"]
    assert len(json.loads(result.cursor)["refused"]) == 2


def test_already_ingested_content_starts_no_run(home, instance) -> None:
    d = batch(home, "site_a")
    instance.add_dynamic_partitions(SITES, ["site_a"])
    # The data version ingest stores (PartitionIngest.data_version), e.g. after `clinaudit demo`.
    row = ["site_a", "b1", "ingested", content_hash(d), True, 4, 4, 0]
    batches = pd.DataFrame([row], columns=list(BATCH_COLUMNS))
    version = PartitionIngest("site_a", pd.DataFrame(), pd.DataFrame(), batches).data_version
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            dg.AssetKey(["multisite_cxr", "validated"]),
            partition="site_a",
            tags={"dagster/data_version": version},
        )
    )
    result = tick(home, instance, None)
    assert result.run_requests == [] and not result.dynamic_partitions_requests
    assert json.loads(result.cursor)["requested"] == {"site_a": {"b1": content_hash(d)[:16]}}


def test_cursor_is_small_json_and_bad_cursors_are_survived(home, instance) -> None:
    for k, site in enumerate(("site_a", "site_b", "site_c")):
        batch(home, site, seed=k)
        batch(home, site, "b2", seed=10 + k)
    result = tick(home, instance, None)
    assert [r.run_key.count("+") for r in result.run_requests] == [1, 1, 1]  # one run per site
    doc = json.loads(result.cursor)
    assert set(doc) == {"v", "requested", "pending", "quarantined", "refused"}
    assert all(len(h) == 16 for bs in doc["requested"].values() for h in bs.values())
    assert len(result.cursor) < 400  # 6 batches: ~40 bytes each, no file lists
    assert LandingCursor.from_json(result.cursor).to_json() == result.cursor

    shutil.rmtree(home.landing / "cxr" / "site_c")  # a site leaves the landing area: pruned
    assert "site_c" not in json.loads(tick(home, instance, result.cursor).cursor)["requested"]

    with pytest.raises(ValueError, match="reset the sensor cursor"):
        LandingCursor.from_json('{"v": 99}')
    survived = tick(home, instance, "not json")  # warned; run keys still deduplicate
    assert len(survived.run_requests) == 2


def test_grace_period_counts_from_first_sight() -> None:
    obs = [BatchObservation("site_a", "b1", "unverified", None, "f" * 16, (("m", "bad", "fix"),))]
    first = plan_tick(obs, LandingCursor(), known_sites=(), now=1000.0, quarantine_after_s=60)
    assert first.quarantines == () and first.cursor.pending == {"site_a/b1": 1000}
    early = plan_tick(obs, first.cursor, known_sites=(), now=1059.0, quarantine_after_s=60)
    assert early.quarantines == ()
    late = plan_tick(obs, early.cursor, known_sites=(), now=1060.0, quarantine_after_s=60)
    [q] = late.quarantines
    assert (q.first_seen, q.now, q.problems) == (1000, 1060, (("m", "bad", "fix"),))
    assert late.cursor.pending == {} and late.cursor.quarantined == {"site_a/b1": "f" * 16}
    changed = [BatchObservation("site_a", "b1", "unverified", None, "e" * 16)]
    again = plan_tick(changed, late.cursor, known_sites=(), now=2000.0, quarantine_after_s=60)
    assert again.quarantines == () and again.cursor.pending == {"site_a/b1": 2000}
