"""End-to-end re-audit: a 5th site lands, the sensor and the automation produce a new audit.

Tiny scale, in-process, temporary instance and home: 4 sites (the reference ``vendor_dev`` and
three deployment sites) are audited with ``PipelineRunner``; then ``site_d`` lands, one landing
sensor tick requests its run (run as the daemon would), and the automation ticks are drained
in-process until nothing is requested. Asserts one cross-site re-audit whose decisions include
the new site, a new signed package that verifies (once the package asset exists), the old one
kept, and no second request for the same change.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from clinaudit.assets.factory import partition_job
from clinaudit.assets.resources import ClinauditHome, LandingWatch, StudyModel, read_stored
from clinaudit.orchestration.automation import (
    SOURCE_STAGES,
    StudyGraph,
    drain_automation,
    observe_sources,
)
from clinaudit.orchestration.definitions import build_defs, study_assets
from clinaudit.orchestration.runner import PipelineRunner, register_partitions
from clinaudit.orchestration.sensors import build_landing_sensor
from clinaudit.sources.cxr_simulator import simulate_cohort, simulate_site_batch
from clinaudit.studies import get_study

STUDY = get_study("multisite_cxr")
FIRST_SITES = ["vendor_dev", "site_a", "site_b", "site_c"]
NEW_SITE = "site_d"
PACKAGE = dg.AssetKey(["multisite_cxr", "package"])
GRAPH = StudyGraph.of(study_assets(STUDY), STUDY)
CROSS_SITE = {k.to_user_string() for k in GRAPH.cross_site_keys}
SOURCE_NAMES = {f"multisite_cxr/{s}" for s in SOURCE_STAGES}
#: Re-audited on every accepted change (re-training is kept off that path: it runs nightly).
REAUDITED = CROSS_SITE - {k.to_user_string() for k in GRAPH.nightly_keys}


def _latest_meta(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict[str, object]:
    records = instance.fetch_materializations(key, limit=1).records
    assert records, f"{key.to_user_string()} was never materialized"
    meta = records[0].asset_materialization.metadata
    return {k: getattr(v, "value", v) for k, v in meta.items()}


def _count(instance: dg.DagsterInstance, key: dg.AssetKey) -> int:
    return len(instance.fetch_materializations(key, limit=100).records)


@pytest.fixture(scope="module")
def reaudit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    tmp = tmp_path_factory.mktemp("reaudit")
    home = ClinauditHome(root=str(tmp / "var"))
    model = StudyModel(study=STUDY.name, training={"scale": "tiny"})  # the CLI's tiny scale
    simulate_cohort(
        home.landing, truth_root=tmp / "truth", scale="tiny", sites=FIRST_SITES, workers=1
    )
    mp = pytest.MonkeyPatch()
    mp.delenv("CLINAUDIT_PSEUDONYM_KEY", raising=False)
    (tmp / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp / "dagster_home")) as instance:
        defs = build_defs(home, studies=[STUDY], models={STUDY.name: model})
        runner = PipelineRunner(
            instance, home, STUDY, model=model, workers=1, console_level="WARNING"
        )
        baseline = runner.run_all(register_partitions(instance, home, STUDY))
        assert not [r for r in baseline if r.blocking_failure], baseline
        # The baseline the automation starts from: the sources at the versions just audited.
        missing = {k for k in CROSS_SITE if not _count(instance, dg.AssetKey(k.split("/")))}
        assert observe_sources(defs, instance, STUDY)
        cursor, settle = drain_automation(defs, instance)
        old_package = _latest_meta(instance, PACKAGE) if _count(instance, PACKAGE) else None
        counts = {k: _count(instance, dg.AssetKey(k.split("/"))) for k in CROSS_SITE}

        simulate_site_batch(
            home.landing, truth_root=tmp / "truth", site=NEW_SITE, scale="tiny", workers=1
        )
        ctx = dg.build_sensor_context(
            instance=instance, resources={"home": home, "landing_watch": LandingWatch()}
        )
        tick = build_landing_sensor(STUDY, partition_job(STUDY))(ctx)
        for add in tick.dynamic_partitions_requests or []:  # applied as the daemon does
            instance.add_dynamic_partitions(add.partitions_def_name, list(add.partition_keys))
        site_job = defs.resolve_job_def("multisite_cxr_partition_job")
        site_runs = [
            site_job.execute_in_process(
                partition_key=req.partition_key, instance=instance, tags=req.tags
            )
            for req in tick.run_requests
        ]
        cursor, ticks = drain_automation(defs, instance, cursor)
        cursor, after = drain_automation(defs, instance, cursor)
        yield {
            "home": home,
            "instance": instance,
            "settle": settle,
            "missing": missing,
            "sensor": tick,
            "site_runs": site_runs,
            "ticks": ticks,
            "after": after,
            "counts": counts,
            "old_package": old_package,
        }
    mp.undo()


def test_sensor_requests_one_run_for_the_new_site(reaudit) -> None:
    sensor = reaudit["sensor"]
    assert [r.partition_key for r in sensor.run_requests] == [NEW_SITE]
    assert [list(a.partition_keys) for a in sensor.dynamic_partitions_requests] == [[NEW_SITE]]
    assert all(run.success for run in reaudit["site_runs"])


def test_baseline_settles_without_a_reaudit(reaudit) -> None:
    """After the runner's audit the first ticks only observe the sources (unchanged), plus any
    cross-site asset the runner left unmaterialized. A later tick may observe the sources again
    when the 5-minute observation cron passes while the test runs; it re-audits nothing."""
    first, *rest = reaudit["settle"]
    assert set(first.requested) - set(reaudit["missing"]) == set(SOURCE_NAMES)
    assert all(ok for step in reaudit["settle"] for _, ok in step.runs)
    allowed = set(reaudit["missing"]) | set(SOURCE_NAMES)
    assert all(set(step.requested) <= allowed for step in rest)


def test_one_cross_site_reaudit_covers_the_new_site(reaudit) -> None:
    # One tick requested the re-audit, once (a source-only observation tick may precede it).
    [tick] = [t for t in reaudit["ticks"] if set(t.requested) - set(SOURCE_NAMES)]
    # A 5-minute observation tick of the model / policy sources may fall into the same tick,
    # observing unchanged versions. Requests are grouped into runs per partition key as the daemon
    # does, and both are unpartitioned: that observation rides in the one re-audit run.
    observed = set(tick.requested) & set(SOURCE_NAMES)
    assert set(tick.requested) - observed == REAUDITED
    assert all(parts == (None,) for parts in tick.requested.values())
    assert len(tick.runs) == 1
    assert all(success for _, success in tick.runs)
    instance = reaudit["instance"]
    run_ids = {
        instance.fetch_materializations(dg.AssetKey(k.split("/")), limit=1).records[0].run_id
        for k in REAUDITED
    }
    assert len(run_ids) == 1 and run_ids <= {run_id for run_id, _ in tick.runs}
    for key in CROSS_SITE:
        again = 1 if key in REAUDITED else 0
        assert _count(instance, dg.AssetKey(key.split("/"))) == reaudit["counts"][key] + again
    decisions = read_stored(reaudit["home"], "multisite_cxr/decisions")["decisions"]
    assert NEW_SITE in set(decisions["site"])
    assert set(FIRST_SITES[1:]) <= set(decisions["site"])
    evidence = _latest_meta(instance, dg.AssetKey(["multisite_cxr", "evidence"]))
    assert NEW_SITE in evidence["sites"]


def test_the_same_change_is_not_audited_twice(reaudit) -> None:
    """Draining again requests no audit asset. The 5-minute observation cron of the model /
    policy sources may pass while the test runs: such a tick only observes the unchanged
    sources, and since the drain runs until nothing is requested, a re-audit it caused would be
    in ``after`` too."""
    requested = {key for step in reaudit["after"] for key in step.requested}
    assert requested <= SOURCE_NAMES, requested
    assert all(ok for step in reaudit["after"] for _, ok in step.runs)


def test_new_signed_package_verifies_and_the_old_one_is_kept(reaudit) -> None:
    instance = reaudit["instance"]
    assert PACKAGE in build_defs().resolve_asset_graph().get_all_asset_keys()
    from clinaudit.reporting.verify import verify_pdf

    new = _latest_meta(instance, PACKAGE)
    old = reaudit["old_package"]
    assert old is not None and new["audit_id"] != old["audit_id"]
    assert new["verified"] is True
    verdict = verify_pdf(Path(str(new["pdf"])), package_dir=Path(str(new["package_dir"])))
    assert verdict.ok, [c for c in verdict.checks if not c.ok]
    assert Path(str(old["pdf"])).is_file() and Path(str(old["package_dir"])).is_dir()
    assert Path(str(old["package_dir"])) != Path(str(new["package_dir"]))
    table = Path(str(new["package_dir"])) / "decisions.csv"  # listed in the signed manifest
    assert NEW_SITE in set(pd.read_csv(table)["site"])
    manifest = verdict.manifest  # the signed manifest embedded in the PDF
    assert manifest is not None and "decisions.csv" in manifest["outputs"]
    assert f"cxr/{NEW_SITE}/b0001" in manifest["inputs"]  # the new batch's content hash
