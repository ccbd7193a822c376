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

from clinaudit.assets.resources import StudyModel, StudyPolicy
from clinaudit.orchestration.automation import (
    SOURCE_STAGES,
    StudyGraph,
    automation_sensor_name,
    drain_automation,
    with_automation,
)
from clinaudit.orchestration.definitions import build_defs, study_assets
from clinaudit.sources.landing import sha256_file
from clinaudit.studies import get_study, registered_studies
from clinaudit.studies.multisite_cxr.policy import PolicyError, shipped_policy

G = "multisite_cxr"
CXR = get_study(G)
ALL = dg.AllPartitionMapping()
SITES_DEF = f"{G}_sites"
MODEL_SOURCE, POLICY_SOURCE = f"{G}/model_source", f"{G}/policy_source"
# Cross-partition assets re-audited on every accepted change; re-training runs nightly.
CROSS = [f"{G}/{s}" for s in ("cohort", "decisions", "evidence", "monitoring", "package")]
CROSS += [f"{G}/mitigation_recalibration"]
SITES = ["vendor_dev", "site_a", "site_b"]


def K(name: str) -> dg.AssetKey:
    """The asset key of ``"<study>/<stage>"``."""
    return dg.AssetKey(name.split("/"))


# --- the real definitions -------------------------------------------------------------------


def test_conditions_are_applied_by_selection_to_the_real_graph() -> None:
    graph = build_defs().resolve_asset_graph()
    label = {
        k.to_user_string(): (n.automation_condition.get_label() if n.automation_condition else None)
        for k in graph.get_all_asset_keys()
        for n in [graph.get(k)]
    }
    study = StudyGraph.of(study_assets(CXR), CXR)
    cross = {k.to_user_string() for k in study.cross_site_keys}
    assert {f"{G}/cohort", f"{G}/evidence", f"{G}/mitigation_recalibration"} <= cross
    assert {f"{G}/decisions", f"{G}/monitoring", f"{G}/package"} <= cross
    assert f"{G}/model" not in cross and f"{G}/predictions" not in cross
    for key, value in label.items():
        node = graph.get(K(key))
        if key in cross:
            # Re-training (minutes of fine-tuning, never decision-changing) runs nightly.
            nightly = key == f"{G}/mitigation_retraining"
            assert value == ("nightly" if nightly else "cross_site_reaudit"), key
            assert node.partitions_def is None and node.group_name == G
    assert label[f"{G}/predictions"] == label[f"{G}/partition_metrics"]
    assert label[f"{G}/predictions"] == "site_rescore_on_model_change"
    assert label[f"{G}/model"] == "model_inputs_changed"
    assert label[MODEL_SOURCE] == label[POLICY_SOURCE] == "observe_on_start_and_cron"
    assert label[f"{G}/validated"] is None and label[f"{G}/quarantine"] is None  # sensor's
    assert K(MODEL_SOURCE) in graph.get(K(f"{G}/model")).parent_keys
    assert K(POLICY_SOURCE) in graph.get(K(f"{G}/decisions")).parent_keys


def test_every_study_has_an_automation_sensor_on_by_default() -> None:
    defs = build_defs()
    graph = defs.resolve_asset_graph()
    for study in registered_studies():
        sensor = defs.resolve_sensor_def(automation_sensor_name(study))
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
        assert sensor.minimum_interval_seconds == 30
        targeted = sensor.asset_selection.resolve(graph)
        conditioned = {
            k
            for k in graph.get_all_asset_keys()
            if graph.get(k).automation_condition and k.path[0] == study.name
        }
        assert conditioned <= targeted
        assert all(k.path[0] == study.name for k in targeted)  # one study per sensor


# --- observed sources -----------------------------------------------------------------------


def test_a_study_nothing_has_landed_for_starts_no_audit(tmp_path: Path) -> None:
    """When the daemon starts, every study's sources are observed for the first time. A study
    for which nothing has landed (no partition exists) must not start an audit that can only
    fail ("no hospital landed"): the observations, and a study's model where it is built
    without landed data (sepsis_ews trains its vendor model on its own development cohort)."""
    from clinaudit.assets.resources import ClinauditHome

    defs = build_defs(ClinauditHome(root=str(tmp_path / "var")))
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        cursor, ticks = drain_automation(defs, instance)
        sources = {f"{s.name}/{stage}" for s in registered_studies() for stage in SOURCE_STAGES}
        requested = {key for tick in ticks for key in tick.requested}
        models = {f"{s.name}/model" for s in registered_studies()}
        assert ticks and sources <= requested <= sources | models, requested
        assert all(ok for tick in ticks for _, ok in tick.runs)
        _, again = drain_automation(defs, instance, cursor)
        assert again == []


def _observe(name: str, *, model: StudyModel | None = None, policy: StudyPolicy | None = None):
    """Observe the source ``name`` once in a fresh instance; its data version."""
    source = next(a for a in study_assets(CXR) if K(name) in a.keys)
    resources = {
        f"{G}_model": model or StudyModel(study=G),
        f"{G}_policy": policy or StudyPolicy(study=G),
    }
    job = dg.define_asset_job("observe", selection=dg.AssetSelection.assets(K(name)))
    defs = dg.Definitions(assets=[source], jobs=[job], resources=resources)
    with dg.DagsterInstance.ephemeral() as instance:
        defs.resolve_job_def("observe").execute_in_process(instance=instance)
        [record] = instance.fetch_observations(K(name), limit=1).records
        return record.asset_observation.tags["dagster/data_version"]


def test_policy_source_version_is_the_file_sha256_and_follows_edits(tmp_path: Path) -> None:
    shipped = shipped_policy()
    assert _observe(POLICY_SOURCE) == sha256_file(shipped)
    mine = tmp_path / "policy.yaml"
    shutil.copyfile(shipped, mine)
    own = StudyPolicy(study=G, path=str(mine))
    assert _observe(POLICY_SOURCE, policy=own) == sha256_file(shipped)
    mine.write_text(mine.read_text() + "# reviewed\n")
    assert _observe(POLICY_SOURCE, policy=own) == sha256_file(mine)
    mine.write_text(mine.read_text() + "surprise_key: 1\n")
    with pytest.raises(PolicyError, match="surprise_key"):
        _observe(POLICY_SOURCE, policy=own)


def test_model_source_version_per_mode(tmp_path: Path) -> None:
    from clinaudit.models.model_card import ModelCard
    from clinaudit.models.package import package_sha256, save_package
    from clinaudit.models.registry import create_adapter
    from clinaudit.sources.cxr_labels import FINDINGS

    adapter = create_adapter("tiny_cnn", input_size=32)
    card = ModelCard(
        vendor="Acme",
        intended_use="test",
        operating_thresholds=dict.fromkeys(FINDINGS, 0.5),
        created_utc="2026-01-01T00:00:00+00:00",
    )
    pkg = save_package(tmp_path / "pkg", adapter, adapter.create_model(seed=1).eval(), card)
    version = _observe(MODEL_SOURCE, model=StudyModel(study=G, package_dir=str(pkg)))
    assert version == package_sha256(pkg)

    scores = tmp_path / "scores"
    scores.mkdir()
    (scores / "site_a.csv").write_text("Image Index,Effusion\na.png,0.1\n")
    by_scores = StudyModel(study=G, scores=str(scores))
    first = _observe(MODEL_SOURCE, model=by_scores)
    assert first == f"scores:site_a.csv={sha256_file(scores / 'site_a.csv')[:16]}"
    (scores / "site_a.csv").write_text("Image Index,Effusion\na.png,0.2\n")
    assert _observe(MODEL_SOURCE, model=by_scores) != first

    def epochs(n: int) -> StudyModel:
        return StudyModel(study=G, training={"epochs": n})

    small = _observe(MODEL_SOURCE, model=epochs(2))
    assert small.startswith("embedded-spec:")
    assert _observe(MODEL_SOURCE, model=epochs(2)) == small
    assert _observe(MODEL_SOURCE, model=epochs(3)) != small


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
    """The factory's graph shape for multisite_cxr, with bodies that do nothing."""
    sites = dg.DynamicPartitionsDefinition(name=SITES_DEF)
    validated = K(f"{G}/validated")
    check = dg.AssetCheckSpec(
        "batch_structure",
        asset=validated,
        blocking=True,
        **({"partitions_def": sites} if toy.partitioned_checks else {}),
    )
    per_site = ("validated", "quarantine", "batches")

    @dg.multi_asset(
        outs={n: dg.AssetOut(key=K(f"{G}/{n}"), group_name=G) for n in per_site},
        partitions_def=sites,
        check_specs=[check],
    )
    def ingest(context):  # untyped: annotations are strings here (__future__)
        for n in per_site:
            yield dg.MaterializeResult(asset_key=K(f"{G}/{n}"))
        ok = context.partition_key not in toy.bad_sites
        yield dg.AssetCheckResult(check_name="batch_structure", asset_key=validated, passed=ok)

    @dg.multi_observable_source_asset(specs=[dg.AssetSpec(K(MODEL_SOURCE), group_name=G)])
    def model_source():
        yield dg.ObserveResult(data_version=dg.DataVersion(toy.model_version))

    @dg.multi_observable_source_asset(specs=[dg.AssetSpec(K(POLICY_SOURCE), group_name=G)])
    def policy_source():
        yield dg.ObserveResult(data_version=dg.DataVersion(toy.policy_version))

    reference = dg.SpecificPartitionsPartitionMapping(["vendor_dev"])

    @dg.asset(
        key=K(f"{G}/model"),
        group_name=G,
        deps=[dg.AssetDep(validated, partition_mapping=reference), K(MODEL_SOURCE)],
    )
    def model() -> dg.MaterializeResult:
        return dg.MaterializeResult(data_version=dg.DataVersion(toy.model_version))

    def stage(name: str, deps: list, partitioned: bool = False) -> dg.AssetsDefinition:
        @dg.asset(
            key=K(f"{G}/{name}"),
            group_name=G,
            partitions_def=sites if partitioned else None,
            deps=deps,
        )
        def _stage() -> None: ...

        return _stage

    every = [dg.AssetDep(K(f"{G}/{n}"), partition_mapping=ALL) for n in per_site]
    predictions = stage("predictions", [validated, model], partitioned=True)
    data = [*every, dg.AssetDep(predictions, partition_mapping=ALL), model]
    evidence = stage("evidence", [*data, K(POLICY_SOURCE)])
    recalibration = stage("mitigation_recalibration", [evidence, *data, K(POLICY_SOURCE)])
    retraining = stage("mitigation_retraining", [evidence, *data, K(POLICY_SOURCE)])
    decisions = stage("decisions", [evidence, recalibration, retraining, K(POLICY_SOURCE)])
    monitoring = stage("monitoring", [decisions, evidence, recalibration, retraining, *data])
    cohort = stage("cohort", every[:2])
    assets = [
        ingest,
        model_source,
        policy_source,
        model,
        predictions,
        stage("partition_metrics", [validated, predictions, model], partitioned=True),
        cohort,
        evidence,
        recalibration,
        retraining,
        decisions,
        monitoring,
        stage("package", [evidence, decisions, monitoring, cohort, *every, model]),
    ]
    return with_automation(assets, CXR)


class ToyStudy:
    """The stand-in graph on a temporary instance, with a site job like ``cxr_site_job``."""

    def __init__(self, toy: Toy, instance: dg.DagsterInstance) -> None:
        self.toy, self.instance, self.cursor = toy, instance, None
        site_assets = [K(f"{G}/{n}") for n in ("validated", "predictions", "partition_metrics")]
        selection = dg.AssetSelection.assets(*site_assets).required_multi_asset_neighbors()
        site_job = dg.define_asset_job("site", selection=selection)
        self.defs = dg.Definitions(assets=toy_assets(toy), jobs=[site_job])

    def land(self, site: str, *, ok: bool = True) -> bool:
        """A ready batch of ``site``: partition added and its site run, as the sensor does."""
        (self.toy.bad_sites.discard if ok else self.toy.bad_sites.add)(site)
        self.instance.add_dynamic_partitions(SITES_DEF, [site])
        job = self.defs.resolve_job_def("site")
        run = job.execute_in_process(
            partition_key=site, instance=self.instance, raise_on_error=False
        )
        return run.success

    def drain(self, *, with_observations: bool = False) -> list[dict[str, tuple[str | None, ...]]]:
        """Automation ticks until nothing is requested; what each tick requested (and ran).

        The sources are observed on a wall-clock cron (every 5 minutes): a slow test can cross
        such a boundary, so their periodic observations are left out unless asked for."""
        self.cursor, ticks = drain_automation(self.defs, self.instance, self.cursor)
        assert all(ok for t in ticks for _, ok in t.runs), ticks
        if with_observations:
            return [t.requested for t in ticks]
        sources = {MODEL_SOURCE, POLICY_SOURCE}
        kept = [{k: v for k, v in t.requested.items() if k not in sources} for t in ticks]
        return [t for t in kept if t]

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
            instance=instance, asset_selection=[K(MODEL_SOURCE), K(POLICY_SOURCE)]
        )
        job.execute_in_process(instance=instance, asset_selection=[K(f"{G}/model")])
        cross = [K(k) for k in [*CROSS, f"{G}/mitigation_retraining"]]
        job.execute_in_process(instance=instance, asset_selection=cross)
        # First ticks: the sources are observed once more (unchanged): nothing else runs.
        assert s.drain(with_observations=True) == [{MODEL_SOURCE: (None,), POLICY_SOURCE: (None,)}]
        yield s


def test_a_new_site_gives_one_cross_site_run_after_its_site_run(study: ToyStudy) -> None:
    study.instance.add_dynamic_partitions(SITES_DEF, ["site_c"])
    assert study.evaluate() == 0  # a partition without data requests nothing
    assert study.land("site_c")
    assert study.drain() == [everything(CROSS)]  # one tick, one run: every cross-site asset
    assert study.drain() == []  # once per change
    assert study.evaluate() == 0


def test_nothing_runs_while_a_site_run_is_in_flight(study: ToyStudy) -> None:
    study.instance.add_dynamic_partitions(SITES_DEF, ["site_c"])
    job = study.defs.resolve_job_def("site")
    run = study.instance.create_run_for_job(job, tags={"dagster/partition": "site_c"})
    assert run.status == dg.DagsterRunStatus.NOT_STARTED  # queued: in flight for automation
    graph_job = study.defs.resolve_implicit_global_asset_job_def()
    ingest = [K(f"{G}/{n}") for n in ("validated", "quarantine", "batches")]
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
    graph_job.execute_in_process(instance=study.instance, asset_selection=[K(MODEL_SOURCE)])
    scored = ("site_a", "site_b", "site_c", "vendor_dev")  # not site_bad: its checks failed
    assert study.drain() == [
        {f"{G}/model": (None,)},
        {f"{G}/partition_metrics": scored, f"{G}/predictions": scored},
        everything([k for k in CROSS if k != f"{G}/cohort"]),  # cohort: no model input
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
    graph_job.execute_in_process(instance=study.instance, asset_selection=[K(MODEL_SOURCE)])
    assert study.drain() == []  # held back by another site's failure
    assert study.land("site_c")
    ticks = study.drain()
    assert ticks[0] == {f"{G}/model": (None,)}
    assert "site_bad" in ticks[1][f"{G}/predictions"]  # what partitioned checks prevent


def test_site_blocking_checks_are_partitioned_like_their_asset() -> None:
    """The real graph: per-partition gating needs each blocking check of a partitioned asset
    partitioned like it (``AssetCheckSpec(..., partitions_def=...)`` in assets/factory.py)."""
    graph = build_defs().resolve_asset_graph()
    for study in registered_studies():
        site_keys = StudyGraph.of(study_assets(study), study).site_keys
        checks = [c for c in graph.asset_check_keys if c.asset_key in site_keys]
        blocking = [c for c in checks if graph.get(c).blocking]
        assert blocking, study.name
        unpartitioned = sorted(c.name for c in blocking if graph.get(c).partitions_def is None)
        assert not unpartitioned, f"{study.name}: partition the check specs {unpartitioned}"


def test_a_policy_edit_redecides_once_and_an_unchanged_file_does_not(study: ToyStudy) -> None:
    graph_job = study.defs.resolve_implicit_global_asset_job_def()
    policy = [K(POLICY_SOURCE)]
    graph_job.execute_in_process(instance=study.instance, asset_selection=policy)
    assert study.drain() == []  # same bytes, same data version: not a change
    study.toy.policy_version = "p2"
    graph_job.execute_in_process(instance=study.instance, asset_selection=policy)
    # Every stage computed under the policy re-runs once (a study's evidence may use its
    # settings); the cohort and the nightly re-training do not.
    redone = [k for k in CROSS if k != f"{G}/cohort"]
    assert study.drain() == [everything(redone)]
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
    import yaml
    from dagster._core.instance.config import dagster_instance_config

    from clinaudit.orchestration.runner import SCALE_DAGSTER_YAML

    blocks = _yaml_blocks()
    instance_blocks = [doc for head, doc in blocks.items() if head.startswith("# dagster.yaml")]
    assert len(instance_blocks) == 2
    # The scale profile's block is exactly what `clinaudit init-home --profile scale` writes.
    assert yaml.safe_load(SCALE_DAGSTER_YAML) in instance_blocks
    for var in ("HOST", "PORT", "USER", "PASSWORD", "DB"):
        monkeypatch.setenv(f"CLINAUDIT_PG_{var}", "5432" if var == "PORT" else "x")
    monkeypatch.setenv("CLINAUDIT_REDIS_URL", "redis://:x@127.0.0.1:6379/0")
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
    job = build_defs().resolve_job_def("multisite_cxr_partition_job")
    resolved = dg.validate_run_config(job, run_config)["execution"]
    assert resolved["multi_or_in_process_executor"]["multiprocess"]["max_concurrent"] == 2
    bad = {"execution": {"config": {"multiprocess": {"max_concurent": 2}}}}
    with pytest.raises(dg.DagsterInvalidConfigError, match="max_concurent"):
        dg.validate_run_config(job, bad)
