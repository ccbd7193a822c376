"""Acceptance: a new month lands at every hospital -> the sensor, the partition runs and ONE
automation run give a new signed package; re-delivering the same data starts nothing.

Tiny scale, in-process, temporary instance and home. The network (six months) is audited with
the generic runner; the simulator then lands month 7 at the four hospitals. One landing-sensor
tick (``build_landing_sensor``, evaluated with ``build_sensor_context``) requests one partition
run per hospital, executed as the daemon would; ``drain_automation`` then evaluates the
automation conditions until nothing is requested. Then the same data arrive again (a batch's
manifest re-exported, and a batch copied under another name): no run, no re-audit.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from sepsis_fixtures import STUDY, fast_policy, tiny_model

from clinaudit.assets.factory import partition_job
from clinaudit.assets.resources import ClinauditHome, LandingWatch, StudyPolicy, read_stored
from clinaudit.orchestration.automation import SOURCE_STAGES, drain_automation
from clinaudit.orchestration.definitions import build_defs
from clinaudit.orchestration.runner import PipelineRunner, register_partitions
from clinaudit.orchestration.sensors import build_landing_sensor
from clinaudit.reporting.verify import verify_pdf
from clinaudit.sources.landing import read_manifest, write_manifest

P = STUDY.name
HOSPITALS = ["hosp_a", "hosp_b", "hosp_c", "hosp_d"]
FIRST, NEW, NEW_BATCH = tuple(range(1, 7)), 7, "2024-07"
PACKAGE = dg.AssetKey([P, "package"])
SOURCES = {f"{P}/{s}" for s in SOURCE_STAGES}
#: Re-run once per accepted partition change (everything unpartitioned but the model).
CROSS = {f"{P}/{s}" for s in ("cohort", "evidence", "mitigation_largest_gap", "decisions",
                               "monitoring", "package")}  # fmt: skip


def _package_meta(instance: dg.DagsterInstance) -> dict[str, object]:
    records = instance.fetch_materializations(PACKAGE, limit=1).records
    assert records, "the package was never materialized"
    meta = records[0].asset_materialization.metadata
    return {k: getattr(v, "value", v) for k, v in meta.items()}


def _count(instance: dg.DagsterInstance, key: str) -> int:
    return len(instance.fetch_materializations(dg.AssetKey(key.split("/")), limit=100).records)


def _reaudits(ticks) -> list:
    """Ticks that requested more than an observation of the model and policy sources."""
    return [t for t in ticks if set(t.requested) - SOURCES]


@pytest.fixture(scope="module")
def reaudit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    tmp = tmp_path_factory.mktemp("sepsis_reaudit")
    home = ClinauditHome(root=str(tmp / "var"))
    policy = fast_policy(tmp / "policy")
    model = tiny_model()
    STUDY.simulate(home.landing, tmp / "truth", scale="tiny", seed=0, workers=1, months=FIRST)
    mp = pytest.MonkeyPatch()
    for what in ("MODEL", "SCORES", "THRESHOLD", "POLICY"):
        mp.delenv(f"CLINAUDIT_SEPSIS_EWS_{what}", raising=False)
    (tmp / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp / "dagster_home")) as instance:
        defs = build_defs(
            home, studies=[STUDY], models={P: model},
            policies={P: StudyPolicy(study=P, path=str(policy))},
        )  # fmt: skip
        runner = PipelineRunner(
            instance, home, STUDY, model=model, policy_path=str(policy), workers=1,
            console_level="CRITICAL",
        )  # fmt: skip
        baseline = runner.run_all(register_partitions(instance, home, STUDY))
        assert not [r for r in baseline if r.blocking_failure], baseline
        cursor, settle = drain_automation(defs, instance)
        old = _package_meta(instance)
        counts = {k: _count(instance, k) for k in CROSS}

        sensor = build_landing_sensor(STUDY, partition_job(STUDY))
        resources = {"home": home, "landing_watch": LandingWatch()}

        def tick(sensor_cursor: str | None):
            # Evaluated as the daemon does (requests resolved against the definitions). The
            # sensor function itself cannot be called directly: it declares its resources as
            # required_resource_keys, which Dagster's direct invocation passes as keywords.
            ctx = dg.build_sensor_context(
                instance_ref=instance.get_ref(), cursor=sensor_cursor, definitions=defs,
                resources=resources,
            )  # fmt: skip
            return sensor.evaluate_tick(ctx)

        first = tick(None)  # what the runner ingested is recognised: nothing to run
        STUDY.simulate(home.landing, tmp / "truth", scale="tiny", seed=0, months=(NEW,))
        new_month = tick(first.cursor)
        job = defs.resolve_job_def(f"{P}_partition_job")
        partition_runs = [
            job.execute_in_process(
                partition_key=req.partition_key, instance=instance, tags=req.tags,
                raise_on_error=False,
            )
            for req in new_month.run_requests
        ]  # fmt: skip
        cursor, ticks = drain_automation(defs, instance, cursor)
        new = _package_meta(instance)
        after_counts = {k: _count(instance, k) for k in CROSS}

        # The same data again: hosp_a's new batch re-exported (new manifest timestamp, same
        # files) and hosp_b's copied under another batch name.
        again = home.landing / P / "hosp_a" / NEW_BATCH
        manifest = read_manifest(again)
        write_manifest(
            again, study=P, site="hosp_a", batch=NEW_BATCH, label_file=manifest.label_file,
            label_layout=manifest.label_layout, simulated=True,
            created_utc="2030-01-01T00:00:00Z",
        )  # fmt: skip
        copy = home.landing / P / "hosp_b" / "resent-1"
        shutil.copytree(home.landing / P / "hosp_b" / NEW_BATCH, copy)
        (copy / "manifest.json").unlink()
        write_manifest(
            copy, study=P, site="hosp_b", batch="resent-1", label_file="stays.parquet",
            label_layout="sepsis_stays", simulated=True, created_utc="2030-01-01T00:00:00Z",
        )  # fmt: skip
        redelivered = tick(new_month.cursor)
        assert redelivered.skip_message and "handled" in redelivered.skip_message
        cursor, quiet = drain_automation(defs, instance, cursor)
        yield {
            "home": home, "instance": instance, "settle": settle, "first": first,
            "new_month": new_month, "partition_runs": partition_runs, "ticks": ticks,
            "old": old, "new": new, "counts": counts, "after_counts": after_counts,
            "redelivered": redelivered, "quiet": quiet,
        }  # fmt: skip
    mp.undo()


def test_baseline_settles_without_a_reaudit(reaudit) -> None:
    assert _reaudits(reaudit["settle"]) == []
    assert reaudit["first"].run_requests == []


def test_sensor_requests_one_run_per_hospital_with_new_data(reaudit) -> None:
    tick = reaudit["new_month"]
    assert sorted(r.partition_key for r in tick.run_requests) == HOSPITALS
    assert all(r.tags["clinaudit/batches"] == NEW_BATCH for r in tick.run_requests)
    assert not tick.dynamic_partitions_requests  # the hospitals are known partitions
    assert all(run.success for run in reaudit["partition_runs"])
    validated = read_stored(reaudit["home"], f"{P}/validated", "hosp_c")
    assert NEW_BATCH in set(validated["batch"])


def test_one_automation_run_reaudits_across_hospitals(reaudit) -> None:
    [tick] = _reaudits(reaudit["ticks"])
    observed = set(tick.requested) & SOURCES
    assert set(tick.requested) - observed == CROSS
    assert all(parts == (None,) for parts in tick.requested.values())
    assert len(tick.runs) == 1 + bool(observed) and all(ok for _, ok in tick.runs)
    for key in CROSS:
        assert reaudit["after_counts"][key] == reaudit["counts"][key] + 1, key


def test_new_signed_package_covers_the_new_batches_and_the_old_one_is_kept(reaudit) -> None:
    old, new = reaudit["old"], reaudit["new"]
    assert new["audit_id"] != old["audit_id"] and new["verified"] is True
    verdict = verify_pdf(Path(str(new["pdf"])), package_dir=Path(str(new["package_dir"])))
    assert verdict.ok, [c for c in verdict.checks if not c.ok]
    manifest = verdict.manifest
    assert manifest is not None
    assert {f"{P}/{h}/{NEW_BATCH}" for h in HOSPITALS} <= set(manifest["inputs"])
    old_dir = Path(str(old["package_dir"]))
    assert (
        old_dir.is_dir()
        and Path(str(old["pdf"])).is_file()
        and old_dir != Path(str(new["package_dir"]))
    )
    old_inputs = json.loads((old_dir / "manifest.json").read_text())["inputs"]
    assert not any(k.endswith(f"/{NEW_BATCH}") for k in old_inputs)
    evidence = read_stored(reaudit["home"], f"{P}/evidence")
    assert evidence.facts["cohort"]["last_month"] == NEW_BATCH


def test_identical_redelivery_requests_nothing(reaudit) -> None:
    tick = reaudit["redelivered"]
    assert tick.run_requests == [] and not tick.dynamic_partitions_requests
    assert _reaudits(reaudit["quiet"]) == []
