"""The study platform: registry, per-study resources and environment, generic definitions."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from clinaudit.assets.resources import LEGACY_ENV, StudyModel, StudyPolicy, study_env
from clinaudit.audit.policy_base import Decision
from clinaudit.audit.records import ModelRef, TableSet, record_from_json, record_to_json
from clinaudit.orchestration.definitions import build_defs
from clinaudit.studies import UnknownStudyError, get_study, register_study, registered_studies


def test_unknown_study_lists_the_known_ones_and_the_closest() -> None:
    with pytest.raises(UnknownStudyError) as err:
        get_study("multisite_cx")
    message = str(err.value)
    assert "did you mean 'multisite_cxr'" in message
    assert all(s.name in message for s in registered_studies())
    with pytest.raises(UnknownStudyError, match="register it with register_study"):
        get_study("zzz")


def test_register_refuses_bad_names_and_a_second_class_under_one_name() -> None:
    study = get_study("multisite_cxr")
    assert register_study(study) is study  # the same study again: a no-op

    class Impostor(type(study)):  # type: ignore[misc]
        pass

    with pytest.raises(ValueError, match="already registered by MultisiteCxr"):
        register_study(Impostor())

    class BadName(type(study)):  # type: ignore[misc]
        name = "Multi-Site"

    with pytest.raises(ValueError, match="not a lowercase identifier"):
        register_study(BadName())


def test_every_registered_study_gets_its_prefixed_graph_sensors_and_jobs() -> None:
    defs = build_defs()
    keys = defs.resolve_asset_graph().get_all_asset_keys()
    for study in registered_studies():
        own = {k for k in keys if k.path[0] == study.name}
        stages = {k.path[-1] for k in own}
        assert {"validated", "model", "predictions", "evidence", "decisions", "package"} <= stages
        assert {f"mitigation_{m.name}" for m in study.mitigations} <= stages
        assert defs.resolve_sensor_def(f"{study.name}_landing_sensor")
        assert defs.resolve_sensor_def(f"{study.name}_automation_sensor")
        assert defs.resolve_job_def(f"{study.name}_partition_job")
    assert all(len(k.path) == 2 for k in keys)  # nothing outside a study's prefix


def test_model_and_policy_resources_read_the_environment_when_used(monkeypatch, tmp_path) -> None:
    resource = StudyModel(study="multisite_cxr")
    assert resource.spec().mode == "embedded"
    monkeypatch.setenv(study_env("multisite_cxr", "scores"), str(tmp_path))
    monkeypatch.setenv(study_env("multisite_cxr", "threshold"), "0.3")
    spec = resource.spec()  # the same resource object, read again when used
    assert (spec.mode, spec.scores, spec.threshold) == ("scores", str(tmp_path), 0.3)
    explicit = StudyModel(study="multisite_cxr", package_dir="/pkg")
    assert explicit.spec().mode == "package"  # explicit config wins over the environment
    monkeypatch.setenv(study_env("multisite_cxr", "threshold"), "high")
    with pytest.raises(ValueError, match="CLINAUDIT_MULTISITE_CXR_THRESHOLD='high' is not a num"):
        resource.spec()
    policy = StudyPolicy(study="multisite_cxr")
    assert policy.resolved_path() == get_study("multisite_cxr").shipped_policy()
    monkeypatch.setenv(study_env("multisite_cxr", "policy"), str(tmp_path / "p.yaml"))
    assert policy.resolved_path() == tmp_path / "p.yaml"


def test_embedded_model_settings_come_from_the_environment_unless_configured(
    monkeypatch,
) -> None:
    """A daemon and its run workers must fingerprint the model the run that built it used."""
    name = study_env("multisite_cxr", "training")
    monkeypatch.setenv(name, '{"scale": "tiny"}')
    assert StudyModel(study="multisite_cxr").spec().training == {"scale": "tiny"}
    configured = StudyModel(study="multisite_cxr", training={"epochs": 1})
    assert configured.spec().training == {"epochs": 1}
    monkeypatch.setenv(name, "[1]")
    with pytest.raises(ValueError, match="is not a JSON object"):
        StudyModel(study="multisite_cxr").spec()
    monkeypatch.setenv(name, "scale=tiny")
    with pytest.raises(
        ValueError, match="CLINAUDIT_MULTISITE_CXR_TRAINING='scale=tiny' is not JSON"
    ):
        StudyModel(study="multisite_cxr").spec()


@pytest.mark.parametrize("old", sorted(LEGACY_ENV))
def test_a_renamed_variable_is_refused_not_ignored(monkeypatch, old: str) -> None:
    monkeypatch.setenv(old, "/somewhere")
    # Import-time code never reads the environment: the code location still loads ...
    importlib.reload(importlib.import_module("clinaudit.orchestration.definitions"))
    # ... but a run that would audit something else than asked refuses, naming the new name.
    with pytest.raises(ValueError, match=rf"{old} -> {LEGACY_ENV[old]}"):
        StudyModel(study="multisite_cxr").spec()
    with pytest.raises(ValueError, match=rf"{old} -> {LEGACY_ENV[old]}"):
        StudyPolicy(study="multisite_cxr").load()


def test_records_and_table_sets_round_trip_without_pickle(tmp_path: Path) -> None:
    import pandas as pd

    from clinaudit.assets.resources import read_value, write_value

    ref = ModelRef(
        study="s", kind="k", mode="scores", identity="a" * 64, source="/x", targets=("t",),
        thresholds={"t": 0.5}, threshold_source="configured", card={"b": 1, "a": [1, 2]},
        scores_files={"*": "b" * 64},
    )  # fmt: skip
    again = record_from_json(record_to_json(ref))
    assert again == ref and list(again.card) == ["b", "a"]  # insertion order kept
    assert again.partition_identity("site_q") == "b" * 64
    tables = TableSet(
        {"m": pd.DataFrame({"x": [1.0, float("nan")], "d": [Decision.GO, "NO-GO"]})},
        {"settings": {"n_boot": 10}, "left_out": {}},
        {"maps.json": b"{}"},
    )
    write_value(tmp_path / "v", tables)
    back = read_value(tmp_path / "v")
    pd.testing.assert_frame_equal(back["m"], tables["m"])
    assert back.facts == tables.facts and back.files == tables.files
    assert back.digest() == tables.digest()
    assert tables.with_facts(extra=1).digest() != tables.digest()
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        TableSet({}, {"bad": object()})
    with pytest.raises(ValueError, match="one of \\['m'\\]"):
        tables["missing"]
    with pytest.raises(ValueError, match="thresholds"):
        ModelRef(
            study="s", kind="k", mode="embedded", identity="a", source="", targets=("t",),
            thresholds={}, threshold_source="",
        )  # fmt: skip


def test_demo_all_runs_in_registration_order_so_triage_finds_the_vendor_model() -> None:
    from clinaudit.orchestration.cli import _studies

    names = [s.name for s in _studies("all")]
    assert names == [s.name for s in registered_studies(order="registration")]
    assert names.index("multisite_cxr") < names.index("cxr_triage")
    assert sorted(names) == [s.name for s in registered_studies()]
    with pytest.raises(ValueError, match="registration"):
        registered_studies(order="random")
