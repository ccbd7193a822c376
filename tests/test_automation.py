"""Declarative automation: which assets carry which condition, and what the conditions request.

The behaviour tests run ``with_automation`` on a stand-in graph with the study's shape and asset
names (site-partitioned ingest with a blocking check, predictions, site metrics, vendor_model,
the two observed sources, cross-site multi-assets, decisions, package) whose bodies do nothing,
so every tick is evaluated against real runs in a temporary instance in well under a second.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pytest

from clinaudit.assets.multisite_cxr_mitigation import DecisionPolicy
from clinaudit.assets.multisite_cxr_model import AuditedModel
from clinaudit.assets.multisite_cxr_sources import MODEL_SOURCE, POLICY_SOURCE
from clinaudit.audit.policy import PolicyError, shipped_policies
from clinaudit.orchestration.automation import (
    AUTOMATION_SENSOR,
    StudyGraph,
    automation_sensor,
    drain_automation,
    with_automation,
)
from clinaudit.orchestration.definitions import ALL_ASSETS, build_defs
from clinaudit.sources.landing import sha256_file

G = "multisite_cxr"
ALL = dg.AllPartitionMapping()
# Cross-site assets re-audited on every accepted change; re-training (RETRAINING) runs nightly.
CROSS = ["cxr_audit_package", "cxr_cohort_summary", "cxr_decisions", "cxr_metrics"]
CROSS += ["cxr_worst_cells"]
SITES = ["vendor_dev", "site_a", "site_b"]


# --- the real definitions -------------------------------------------------------------------


def test_conditions_are_applied_by_selection_to_the_real_graph() -> None:
    graph = build_defs().resolve_asset_graph()
    label = {
        k.to_user_string(): (n.automation_condition.get_label() if n.automation_condition else None)
        for k in graph.get_all_asset_keys()
        for n in [graph.get(k)]
    }
    study = StudyGraph.of(ALL_ASSETS)
    cross = {k.to_user_string() for k in study.cross_site_keys}
    assert {"cxr_cohort_summary", "cxr_metrics", "cxr_drift", "cxr_recalibration"} <= cross
    assert {"cxr_decisions", "cxr_monitoring_plan", "cxr_retrained_model"} <= cross
    assert "vendor_model" not in cross and "cxr_predictions" not in cross
    for key, value in label.items():
        node = graph.get(dg.AssetKey(key))
        if key in cross:
            # Re-training (minutes of fine-tuning, never decision-changing) runs nightly.
            retraining = key in ("cxr_retraining", "cxr_retrained_model")
            assert value == ("nightly_retraining" if retraining else "cross_site_reaudit"), key
            assert node.partitions_def is None and node.group_name == G
    assert label["cxr_predictions"] == label["cxr_site_metrics"] == "site_rescore_on_model_change"
    assert label["vendor_model"] == "model_inputs_changed"
    assert label[MODEL_SOURCE] == label[POLICY_SOURCE] == "observe_on_start_and_cron"
    assert label["cxr_validated_images"] is None and label["cxr_quarantine"] is None  # sensor's
    assert dg.AssetKey(MODEL_SOURCE) in graph.get(dg.AssetKey("vendor_model")).parent_keys
    assert dg.AssetKey(POLICY_SOURCE) in graph.get(dg.AssetKey("cxr_decisions")).parent_keys


def test_automation_sensor_is_on_by_default_and_targets_the_study() -> None:
    defs = build_defs()
    sensor = defs.resolve_sensor_def(AUTOMATION_SENSOR)
    assert sensor is automation_sensor
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == 30
    graph = defs.resolve_asset_graph()
    targeted = automation_sensor.asset_selection.resolve(graph)
    conditioned = {k for k in graph.get_all_asset_keys() if graph.get(k).automation_condition}
    assert conditioned <= targeted


# --- observed sources -----------------------------------------------------------------------


def _observe(source: dg.AssetsDefinition, resources: dict[str, object]) -> str:
    """Observe ``source`` once in a fresh instance; its data version."""
    job = dg.define_asset_job("observe", selection=dg.AssetSelection.assets(*source.keys))
    defs = dg.Definitions(assets=[source], jobs=[job], resources=resources)
    with dg.DagsterInstance.ephemeral() as instance:
        defs.resolve_job_def("observe").execute_in_process(instance=instance)
        [key] = source.keys
        [record] = instance.fetch_observations(key, limit=1).records
        return record.asset_observation.tags["dagster/data_version"]


def _source(name: str) -> dg.AssetsDefinition:
    return next(a for a in ALL_ASSETS if dg.AssetKey(name) in a.keys)


def test_policy_source_version_is_the_file_sha256_and_follows_edits(tmp_path: Path) -> None:
    source = _source(POLICY_SOURCE)
    shipped = shipped_policies()["multisite_cxr"]
    assert _observe(source, {"policy": DecisionPolicy()}) == sha256_file(shipped)
    mine = tmp_path / "policy.yaml"
    shutil.copyfile(shipped, mine)
    assert _observe(source, {"policy": DecisionPolicy(path=str(mine))}) == sha256_file(shipped)
    mine.write_text(mine.read_text() + "# reviewed\n")
    assert _observe(source, {"policy": DecisionPolicy(path=str(mine))}) == sha256_file(mine)
    mine.write_text(mine.read_text() + "surprise_key: 1\n")
    with pytest.raises(PolicyError, match="surprise_key"):
        _observe(source, {"policy": DecisionPolicy(path=str(mine))})


def test_model_source_version_per_mode(tmp_path: Path) -> None:
    from clinaudit.models.model_card import ModelCard
    from clinaudit.models.package import package_sha256, save_package
    from clinaudit.models.registry import create_adapter
    from clinaudit.sources.cxr_labels import FINDINGS

    source = _source(MODEL_SOURCE)
    adapter = create_adapter("tiny_cnn", input_size=32)
    card = ModelCard(
        vendor="Acme",
        intended_use="test",
        operating_thresholds=dict.fromkeys(FINDINGS, 0.5),
        created_utc="2026-01-01T00:00:00+00:00",
    )
    pkg = save_package(tmp_path / "pkg", adapter, adapter.create_model(seed=1).eval(), card)
    version = _observe(source, {"audited_model": AuditedModel(package_dir=str(pkg))})
    assert version == package_sha256(pkg)

    scores = tmp_path / "scores"
    scores.mkdir()
    (scores / "site_a.csv").write_text("Image Index,Effusion\na.png,0.1\n")
    first = _observe(source, {"audited_model": AuditedModel(scores_dir=str(scores))})
    assert first == f"scores:site_a.csv={sha256_file(scores / 'site_a.csv')[:16]}"
    (scores / "site_a.csv").write_text("Image Index,Effusion\na.png,0.2\n")
    assert _observe(source, {"audited_model": AuditedModel(scores_dir=str(scores))}) != first

    small = _observe(source, {"audited_model": AuditedModel(epochs=2)})
    assert small.startswith("embedded-spec:")
    assert _observe(source, {"audited_model": AuditedModel(epochs=2)}) == small
    assert _observe(source, {"audited_model": AuditedModel(epochs=3)}) != small


# --- behaviour on a stand-in graph ----------------------------------------------------------


@dataclass
class Toy:
    """Stand-in study: versions the sources report and whether ingest passes, per site."""

    partitioned_checks: bool
    model_version: str = "m1"
    policy_version: str = "p1"
    bad_sites: set[str] = field(default_factory=set)


@pytest.fixture(autouse=True)
def _partitioned_checks_are_a_preview() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=dg.PreviewWarning)
        yield


def toy_assets(toy: Toy) -> list[dg.AssetsDefinition]:
    sites = dg.DynamicPartitionsDefinition(name="cxr_sites")
    check = dg.AssetCheckSpec(
        "batch_structure",
        asset="cxr_validated_images",
        blocking=True,
        **({"partitions_def": sites} if toy.partitioned_checks else {}),
    )

    @dg.multi_asset(
        outs={n: dg.AssetOut(group_name=G) for n in ("cxr_validated_images", "cxr_quarantine")},
        partitions_def=sites,
        check_specs=[check],
    )
    def cxr_ingest(context):  # untyped: annotations are strings here (__future__)
        yield dg.MaterializeResult(asset_key="cxr_validated_images")
        yield dg.MaterializeResult(asset_key="cxr_quarantine")
        ok = context.partition_key not in toy.bad_sites
        yield dg.AssetCheckResult(check_name="batch_structure", passed=ok)

    @dg.multi_observable_source_asset(specs=[dg.AssetSpec(MODEL_SOURCE, group_name=G)])
    def model_source():
        yield dg.ObserveResult(data_version=dg.DataVersion(toy.model_version))

    @dg.multi_observable_source_asset(specs=[dg.AssetSpec(POLICY_SOURCE, group_name=G)])
    def policy_source():
        yield dg.ObserveResult(data_version=dg.DataVersion(toy.policy_version))

    reference = dg.SpecificPartitionsPartitionMapping(["vendor_dev"])

    @dg.asset(
        group_name=G,
        deps=[dg.AssetDep("cxr_validated_images", partition_mapping=reference), MODEL_SOURCE],
    )
    def vendor_model() -> dg.MaterializeResult:
        return dg.MaterializeResult(data_version=dg.DataVersion(toy.model_version))

    @dg.asset(group_name=G, partitions_def=sites, deps=["cxr_validated_images", vendor_model])
    def cxr_predictions() -> None: ...

    @dg.asset(group_name=G, partitions_def=sites, deps=[cxr_predictions, vendor_model])
    def cxr_site_metrics() -> None: ...

    every = [
        dg.AssetDep(k, partition_mapping=ALL) for k in ("cxr_validated_images", "cxr_quarantine")
    ]

    @dg.asset(group_name=G, deps=every)
    def cxr_cohort_summary() -> None: ...

    @dg.multi_asset(
        outs={n: dg.AssetOut(group_name=G) for n in ("cxr_metrics", "cxr_worst_cells")},
        deps=[*every, dg.AssetDep(cxr_predictions, partition_mapping=ALL), vendor_model],
    )
    def cxr_audit_metrics():
        yield dg.MaterializeResult(asset_key="cxr_metrics")
        yield dg.MaterializeResult(asset_key="cxr_worst_cells")

    @dg.asset(group_name=G, deps=["cxr_worst_cells", vendor_model, every[0]])
    def cxr_retraining() -> None: ...

    @dg.asset(group_name=G, deps=["cxr_metrics", cxr_retraining, POLICY_SOURCE])
    def cxr_decisions() -> None: ...

    @dg.asset(group_name=G, deps=[cxr_decisions, cxr_cohort_summary, *every, vendor_model])
    def cxr_audit_package() -> None: ...

    return with_automation(
        [
            cxr_ingest,
            model_source,
            policy_source,
            vendor_model,
            cxr_predictions,
            cxr_site_metrics,
            cxr_cohort_summary,
            cxr_audit_metrics,
            cxr_retraining,
            cxr_decisions,
            cxr_audit_package,
        ]
    )


class ToyStudy:
    """The stand-in graph on a temporary instance, with a site job like ``cxr_site_job``."""

    def __init__(self, toy: Toy, instance: dg.DagsterInstance) -> None:
        self.toy, self.instance, self.cursor = toy, instance, None
        site_assets = ["cxr_validated_images", "cxr_quarantine", "cxr_predictions"]
        site_job = dg.define_asset_job("site", selection=[*site_assets, "cxr_site_metrics"])
        self.defs = dg.Definitions(assets=toy_assets(toy), jobs=[site_job])

    def land(self, site: str, *, ok: bool = True) -> bool:
        """A ready batch of ``site``: partition added and its site run, as the sensor does."""
        (self.toy.bad_sites.discard if ok else self.toy.bad_sites.add)(site)
        self.instance.add_dynamic_partitions("cxr_sites", [site])
        job = self.defs.resolve_job_def("site")
        run = job.execute_in_process(
            partition_key=site, instance=self.instance, raise_on_error=False
        )
        return run.success

    def drain(self) -> list[dict[str, tuple[str | None, ...]]]:
        """Automation ticks until nothing is requested; what each tick requested (and ran)."""
        self.cursor, ticks = drain_automation(self.defs, self.instance, self.cursor)
        assert all(ok for t in ticks for _, ok in t.runs), ticks
        return [t.requested for t in ticks]

    def evaluate(self) -> int:
        """One tick without running anything; the number of partitions it requested."""
        result = dg.evaluate_automation_conditions(
            defs=self.defs, instance=self.instance, cursor=self.cursor
        )
        self.cursor = result.cursor
        return result.total_requested


def everything(keys: list[str]) -> dict[str, tuple[None]]:
    return {k: (None,) for k in sorted(keys)}


@pytest.fixture
def study(request: pytest.FixtureRequest) -> Iterator[ToyStudy]:
    """Three audited sites and observed sources: the state after ``clinaudit demo``."""
    partitioned = getattr(request, "param", True)
    with dg.DagsterInstance.ephemeral() as instance:
        s = ToyStudy(Toy(partitioned_checks=partitioned), instance)
        for site in SITES:
            assert s.land(site)
        job = s.defs.resolve_implicit_global_asset_job_def()
        job.execute_in_process(
            instance=instance,
            asset_selection=[dg.AssetKey(MODEL_SOURCE), dg.AssetKey(POLICY_SOURCE)],
        )
        job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("vendor_model")])
        cross = [dg.AssetKey(k) for k in [*CROSS, "cxr_retraining"]]
        job.execute_in_process(instance=instance, asset_selection=cross)
        # First ticks: the sources are observed once more (unchanged): nothing else runs.
        assert s.drain() == [{MODEL_SOURCE: (None,), POLICY_SOURCE: (None,)}]
        yield s


def test_a_new_site_gives_one_cross_site_run_after_its_site_run(study: ToyStudy) -> None:
    study.instance.add_dynamic_partitions("cxr_sites", ["site_c"])
    assert study.evaluate() == 0  # a partition without data requests nothing
    assert study.land("site_c")
    assert study.drain() == [everything(CROSS)]  # one tick, one run: every cross-site asset
    assert study.drain() == []  # once per change
    assert study.evaluate() == 0


def test_nothing_runs_while_a_site_run_is_in_flight(study: ToyStudy) -> None:
    study.instance.add_dynamic_partitions("cxr_sites", ["site_c"])
    job = study.defs.resolve_job_def("site")
    run = study.instance.create_run_for_job(job, tags={"dagster/partition": "site_c"})
    assert run.status == dg.DagsterRunStatus.NOT_STARTED  # queued: in flight for automation
    graph_job = study.defs.resolve_implicit_global_asset_job_def()
    ingest = [dg.AssetKey("cxr_validated_images"), dg.AssetKey("cxr_quarantine")]
    graph_job.execute_in_process(
        instance=study.instance, asset_selection=ingest, partition_key="site_c"
    )
    assert study.evaluate() == 0  # ingest done, predictions of the open run still planned
    study.instance.report_run_failed(run)  # the run ends (here: without predictions)
    assert study.drain() == [everything(CROSS)]  # the accepted ingest is audited once
    assert study.drain() == []


def test_a_failed_site_starts_nothing_and_blocks_no_other_site(study: ToyStudy) -> None:
    assert not study.land("site_bad", ok=False)  # blocking check failed: no predictions
    assert study.drain() == []
    assert study.land("site_c")  # a good site still re-audits
    assert study.drain() == [everything(CROSS)]
    study.toy.model_version = "m2"  # a new model package: observed on the next cron tick
    graph_job = study.defs.resolve_implicit_global_asset_job_def()
    graph_job.execute_in_process(
        instance=study.instance, asset_selection=[dg.AssetKey(MODEL_SOURCE)]
    )
    scored = ("site_a", "site_b", "site_c", "vendor_dev")  # not site_bad: its checks failed
    assert study.drain() == [
        {"vendor_model": (None,)},
        {"cxr_predictions": scored, "cxr_site_metrics": scored},
        everything([k for k in CROSS if k != "cxr_cohort_summary"]),  # cohort: no model input
    ]
    assert study.drain() == []


@pytest.mark.parametrize("study", [False], indirect=True)
def test_why_site_checks_must_be_partitioned(study: ToyStudy) -> None:
    """Without ``partitions_def`` on the check specs, a check's status is its latest evaluation
    at any site: after a failed site a model change is held back, and the next good ingest
    lets it through for every site, the failed one included (its failed table gets scored)."""
    assert not study.land("site_bad", ok=False)
    study.toy.model_version = "m2"
    graph_job = study.defs.resolve_implicit_global_asset_job_def()
    graph_job.execute_in_process(
        instance=study.instance, asset_selection=[dg.AssetKey(MODEL_SOURCE)]
    )
    assert study.drain() == []  # held back by another site's failure
    assert study.land("site_c")
    ticks = study.drain()
    assert ticks[0] == {"vendor_model": (None,)}
    assert "site_bad" in ticks[1]["cxr_predictions"]  # what partitioned checks prevent


def test_site_blocking_checks_are_partitioned_like_their_asset() -> None:
    """The real graph: per-site gating needs each blocking check of a site asset partitioned by
    site (``AssetCheckSpec(..., partitions_def=cxr_sites)`` in assets/multisite_cxr.py)."""
    graph = build_defs().resolve_asset_graph()
    site_keys = StudyGraph.of(ALL_ASSETS).site_keys
    checks = [c for c in graph.asset_check_keys if c.asset_key in site_keys]
    blocking = [c for c in checks if graph.get(c).blocking]
    assert blocking
    unpartitioned = sorted(c.name for c in blocking if graph.get(c).partitions_def is None)
    assert not unpartitioned, f"add partitions_def=cxr_sites to the check specs {unpartitioned}"


def test_a_policy_edit_redecides_once_and_an_unchanged_file_does_not(study: ToyStudy) -> None:
    graph_job = study.defs.resolve_implicit_global_asset_job_def()
    policy = [dg.AssetKey(POLICY_SOURCE)]
    graph_job.execute_in_process(instance=study.instance, asset_selection=policy)
    assert study.drain() == []  # same bytes, same data version: not a change
    study.toy.policy_version = "p2"
    graph_job.execute_in_process(instance=study.instance, asset_selection=policy)
    assert study.drain() == [everything(["cxr_audit_package", "cxr_decisions"])]
    assert study.drain() == []


# --- docs/operations.md ---------------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[1] / "docs" / "operations.md"


def _yaml_blocks() -> dict[str, dict]:
    """First comment line of each YAML block of docs/operations.md -> the parsed block."""
    import re

    import yaml

    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(encoding="utf-8"), flags=re.S)
    return {b.splitlines()[0]: yaml.safe_load(b) for b in blocks}


def test_documented_instance_configs_are_valid(tmp_path: Path, monkeypatch) -> None:
    from dagster._core.instance.config import dagster_instance_config

    blocks = _yaml_blocks()
    instance_blocks = [doc for head, doc in blocks.items() if head.startswith("# dagster.yaml")]
    assert len(instance_blocks) == 2
    for var in ("CLINAUDIT_PG_HOST", "CLINAUDIT_PG_USER", "CLINAUDIT_PG_PASSWORD"):
        monkeypatch.setenv(var, "x")
    for doc in instance_blocks:  # schema only: dagster-postgres / dagster-k8s are not imported
        config, _ = dagster_instance_config(str(tmp_path), overrides=doc)
        assert set(doc) <= set(config)
    postgres = next(d for d in instance_blocks if "storage" in d)["storage"]["postgres"]
    assert postgres["postgres_db"]["password"] == {"env": "CLINAUDIT_PG_PASSWORD"}
    typo = {"storage": {"postgres": {"postgres_db": {**postgres["postgres_db"], "dbname": "x"}}}}
    with pytest.raises(dg.DagsterInvalidConfigError, match="dbname"):
        dagster_instance_config(str(tmp_path), overrides=typo)


def test_documented_run_config_is_valid_for_the_site_job() -> None:
    [run_config] = [doc for head, doc in _yaml_blocks().items() if head.startswith("# run config")]
    job = build_defs().resolve_job_def("cxr_site_job")
    resolved = dg.validate_run_config(job, run_config)["execution"]
    assert resolved["multi_or_in_process_executor"]["multiprocess"]["max_concurrent"] == 2
    bad = {"execution": {"config": {"multiprocess": {"max_concurent": 2}}}}
    with pytest.raises(dg.DagsterInvalidConfigError, match="max_concurent"):
        dg.validate_run_config(job, bad)
