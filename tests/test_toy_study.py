"""A study defined entirely in this module runs the whole generic pipeline to a signed package.

The toy study (a tiny tabular binary task at two sites) supplies only what a study supplies: its
policy schema, per-batch ingest, model, evaluation, decisions, monitoring and report sections.
Nothing shared is edited: it is registered here, its assets come from
``assets.factory.build_study_assets`` and the generic runner materializes them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from system_tools import require_tool

from clinaudit.assets.resources import ClinauditHome, StudyPolicy, read_stored
from clinaudit.audit.discrimination import audit_discrimination
from clinaudit.audit.policy_base import Criterion, Decision, PolicyBase
from clinaudit.audit.policy_yaml import leaf, section
from clinaudit.audit.records import ModelRef, TableSet
from clinaudit.orchestration.runner import PipelineRunner, register_partitions
from clinaudit.reporting.kit import (
    SIMULATED_BAND,
    Appendix,
    MethodNote,
    ReportView,
    Section,
    fmt_ci,
    left_out_table,
    provenance_tables,
    table,
)
from clinaudit.reporting.package import AuditStamp
from clinaudit.reporting.pdf import render_template, report_environment
from clinaudit.reporting.provenance import AuditBundle
from clinaudit.reporting.study_package import ReportContent
from clinaudit.reporting.verify import verify_pdf
from clinaudit.sources.landing import BatchRef, read_manifest, verify_batch, write_manifest
from clinaudit.studies import get_study, register_study
from clinaudit.studies.base import AuditData, ModelSpec, SimSummary, Study
from clinaudit.validation.errors import BatchStructureError, QuarantineRecord, records_to_frame
from clinaudit.validation.ingest_loop import BatchIngest
from clinaudit.validation.privacy import PHI_COLUMNS

NAME = "toy_tabular"
POLICY_TEXT = """\
policy_id: toy.site_deployment
version: "1.0.0"
study: toy_tabular
title: Toy policy
auroc:
  enabled: true
  statistic: ci_low
  floor: 0.55
"""


@dataclass(frozen=True, kw_only=True)
class ToyPolicy(PolicyBase):
    SCHEMA: ClassVar = {
        "policy_id": leaf("str"),
        "version": leaf("str"),
        "study": leaf("str"),
        "title": leaf("str", default=""),
        "auroc": section(
            enabled=leaf("bool", default=True),
            statistic=leaf("option", default="ci_low", options=("ci_low", "estimate")),
            floor=leaf("fraction"),
        ),
    }
    STUDY: ClassVar = NAME
    auroc: Criterion

    @classmethod
    def from_values(cls, values: dict[str, Any], *, text: str, sha256: str, source: str) -> Self:
        return cls(
            policy_id=values["policy_id"], version=values["version"], study=values["study"],
            title=values["title"], text=text, sha256=sha256, source=source,
            auroc=Criterion.from_values(values["auroc"], "floor"),
        )  # fmt: skip

    def describe(self) -> str:
        return f"GO when the {self.auroc.phrase('AUROC', '>=')} at a site."


def _score(frame: pd.DataFrame) -> np.ndarray:
    return 1 / (1 + np.exp(-(1.5 * frame["x1"].to_numpy(float) - 0.2)))


class ToyStudy(Study):
    name = NAME
    title = "Toy tabular study: site audit"
    unit = "case"
    partition_by = "site"
    targets = ("outcome",)
    model_kind = "toy_logistic"
    policy_type = ToyPolicy
    sort_by = ("batch", "case_id")
    page_budget = (1, 4)
    identifiers = ("case_id",)
    policy_attachment = "toy_policy"
    policy_dir: ClassVar[Path]

    def shipped_policy(self) -> Path:
        return self.policy_dir / "policy.yaml"

    def empty_table(self) -> pd.DataFrame:
        return pd.DataFrame(columns=["case_id", "site", "batch", "x1", "outcome"])

    def ingest_batch(self, batch: BatchRef, *, key: bytes, options: Any) -> BatchIngest:
        manifest = read_manifest(batch.path)
        check = verify_batch(batch.path, manifest)
        if not check.ok:
            file, problem, fix = check.problems()[0]
            raise BatchStructureError(
                [
                    QuarantineRecord(
                        batch.site, batch.batch, file, None, None, "integrity", problem, fix
                    )
                ]  # fmt: skip
            )
        raw = pd.read_csv(batch.path / manifest.label_file)
        bad = ~raw["outcome"].isin([0, 1])
        records = [
            QuarantineRecord(batch.site, batch.batch, manifest.label_file, int(i) + 2, "outcome",
                             "outcome_domain", f"outcome {v!r} is not 0 or 1", "code 0 or 1")
            for i, v in raw.loc[bad, "outcome"].items()
        ]  # fmt: skip
        table = raw[~bad].assign(site=batch.site, batch=batch.batch)
        return BatchIngest(
            table=table[["case_id", "site", "batch", "x1", "outcome"]],
            quarantine=records_to_frame(records),
            content_hash=manifest.content_hash,
            simulated=manifest.simulated,
            n_rows_in=len(raw),
        )

    def privacy_problems(self, table: pd.DataFrame) -> list[str]:
        return [f"column {c!r} is PHI" for c in table.columns if c in PHI_COLUMNS]

    def cohort(self, validated, quarantine) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {"site": s, "n": len(t), "quarantined": len(quarantine.get(s, []))}
                for s, t in sorted(validated.items())
            ]  # fmt: skip
        )

    def model_fingerprint(self, spec: ModelSpec) -> tuple[str, dict[str, Any]]:
        return "toy-logistic-v1", {"mode": spec.mode}

    def resolve_model(self, spec, *, reference, dirs, log, policy=None) -> ModelRef:
        identity = hashlib.sha256(b"toy-logistic-v1").hexdigest()
        return ModelRef(
            study=NAME, kind=self.model_kind, mode="embedded", identity=identity,
            source="built in", targets=self.targets, thresholds={"outcome": 0.5},
            threshold_source="the toy card", card={"vendor": "toy", "version": "1"},
        )  # fmt: skip

    def predict(self, model, table, *, partition, spec, dirs, log):
        scores = pd.DataFrame(
            {
                "case_id": table["case_id"],
                "outcome": _score(table),
                "model_sha256": model.partition_identity(partition),
            }  # fmt: skip
        )
        return scores, {"n": len(scores)}

    def evaluate(self, data: AuditData, *, policy, options) -> TableSet:
        parts = [
            data.validated[s].merge(data.predictions[s], on="case_id", suffixes=("", "_score"))
            for s in sorted(data.predictions)
        ]
        frame = pd.concat(parts, ignore_index=True)
        result = audit_discrimination(
            frame["outcome"].to_numpy(float), frame["outcome_score"].to_numpy(float),
            groups=frame["site"].to_numpy(), targets=["outcome"], thresholds=0.5,
            n_boot=200, min_pos=5, min_neg=5, seed=0,
        )  # fmt: skip
        return TableSet({"metrics": result.table}, {"settings": {"n_boot": 200}, "left_out": {}})

    def decide(self, evidence, mitigations, *, policy) -> TableSet:
        rows = []
        for r in evidence["metrics"].itertuples():
            value = r.auroc_ci_low if policy.auroc.statistic == "ci_low" else r.auroc
            ok = bool(value >= policy.auroc.threshold)
            decision = Decision.GO if ok else Decision.NO_GO
            rows.append({"site": r.group, "decision": decision.value, "value": value})
        return TableSet({"decisions": pd.DataFrame(rows)})

    def monitor(self, evidence, mitigations, decisions, data, *, policy) -> TableSet:
        table = decisions["decisions"]
        deployed = table[table["decision"] != Decision.NO_GO]
        plan = pd.DataFrame({"site": deployed["site"], "item": "AUROC", "cadence": "monthly"})
        return TableSet({"plan": plan})

    def report(self, bundle: AuditBundle, stamp: AuditStamp) -> ReportContent:
        metrics = bundle.evidence["metrics"]
        rows = [[r.group, fmt_ci(r.auroc, r.auroc_ci_low, r.auroc_ci_high)]
                for r in metrics.itertuples()]  # fmt: skip
        decisions = bundle.decisions["decisions"]
        prov, inputs, card, note = provenance_tables(
            audit_id=stamp.audit_id, generated_at=stamp.generated_at,
            code_version=stamp.code_version, model_sha256=bundle.model.identity,
            policy=_policy_info(bundle.policy), signer=stamp.signer,
            development_signature=stamp.development_signature,
            input_batches=bundle.provenance.batches, model_card=bundle.model.card,
        )  # fmt: skip
        view = ReportView(
            study_title=self.title, audit_id=stamp.audit_id, generated_at=stamp.generated_at,
            simulated=bundle.provenance.simulated, band_text=SIMULATED_BAND,
            head_title="Toy audit", footnote="Toy audit report",
            subtitle="For the AI governance committee",
            sections=(
                Section("decisions", "1 Decisions",
                        tuple(f"{r.site}: {r.decision}" for r in decisions.itertuples())),
                Section("discrimination", "2 Discrimination", ("AUROC per site.",),
                        tables=(table(("Site", "AUROC (95% CI)"), rows, (40, 60)),)),
            ),
            appendix=Appendix(
                methods=(MethodNote("Bootstrap", "200 replicates."),),
                policy=tuple(bundle.policy.describe().splitlines()), provenance=prov,
                inputs=inputs, model_card=card, signature_note=note,
                left_out=left_out_table(bundle.provenance.left_out),
            ),
            figures=(),
        )  # fmt: skip
        html = render_template(report_environment(), "base_report.html.j2", view)
        csv = bundle.evidence["metrics"].to_csv(index=False).encode()
        return ReportContent(html=html, figures={}, attachments={"metrics.csv": csv})

    def simulate(self, landing: Path, truth: Path, *, scale: str, seed: int, workers: int):
        rng = np.random.default_rng(seed)
        counts = {}
        for site, shift in (("site_a", 0.0), ("site_b", 0.6)):
            batch_dir = landing / NAME / site / "b0001"
            batch_dir.mkdir(parents=True, exist_ok=True)
            n = 160
            x1 = rng.normal(shift, 1.0, n)
            outcome = (rng.random(n) < 1 / (1 + np.exp(-(2.0 * x1 - 0.5)))).astype(int)
            frame = pd.DataFrame({"case_id": [f"{site}-{i:04d}" for i in range(n)],
                                  "x1": x1.round(4), "outcome": outcome})  # fmt: skip
            frame.loc[3, "outcome"] = 7  # one bad row: quarantined, the rest proceeds
            frame.to_csv(batch_dir / "cases.csv", index=False)
            write_manifest(batch_dir, study=NAME, site=site, batch="b0001",
                           label_file="cases.csv", label_layout="toy_cases", simulated=True,
                           created_utc="2026-12-01T00:00:00Z")  # fmt: skip
            counts[site] = n
        return SimSummary(counts, self.unit)


def _policy_info(policy: PolicyBase) -> Any:
    from clinaudit.reporting.kit import PolicyInfo

    return PolicyInfo(policy.policy_id, policy.version, policy.sha256, policy.text)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> Mapping[str, Any]:
    root = tmp_path_factory.mktemp("toy")
    ToyStudy.policy_dir = root / "policy"
    ToyStudy.policy_dir.mkdir()
    (ToyStudy.policy_dir / "policy.yaml").write_text(POLICY_TEXT, encoding="utf-8")
    study = register_study(ToyStudy())
    home = ClinauditHome(root=str(root / "home"))
    study.simulate(home.landing, root / "truth", scale="demo", seed=0, workers=1)
    instance = dg.DagsterInstance.ephemeral()
    partitions = register_partitions(instance, home, study)
    runner = PipelineRunner(instance, home, study, console_level="WARNING")
    runs = runner.run_all(partitions)
    return {"home": home, "runs": runs, "instance": instance, "study": study}


def test_toy_study_is_registered_and_found_by_name(toy_run) -> None:
    assert get_study(NAME) is toy_run["study"]
    with pytest.raises(KeyError, match="did you mean 'toy_tabular'"):
        get_study("toy_tabluar")


def test_every_stage_ran_to_a_verified_signed_package(toy_run) -> None:
    runs = toy_run["runs"]
    assert all(r.success and not r.blocking_failure for r in runs), runs
    stages = [r.stage for r in runs]
    assert stages.count("validated") == 2 and stages.count("predictions") == 2
    assert stages[-4:] == ["evidence", "decisions", "monitoring", "package"]
    packages = list((toy_run["home"].reports / NAME).iterdir())
    assert len(packages) == 1
    verdict = verify_pdf(packages[0] / "report.pdf", package_dir=packages[0])
    assert verdict.ok, verdict
    manifest = json.loads((packages[0] / "manifest.json").read_text())
    assert manifest["inputs"]["toy_policy"] == hashlib.sha256(POLICY_TEXT.encode()).hexdigest()
    assert sorted(k for k in manifest["inputs"] if k.startswith(NAME)) == [
        f"{NAME}/site_a/b0001",
        f"{NAME}/site_b/b0001",
    ]
    assert manifest["metadata"]["simulated"] is True
    assert {"metrics.csv", "toy_policy.yaml"} <= set(manifest["outputs"])


def test_bad_row_is_quarantined_and_the_rest_proceeds(toy_run) -> None:
    home = toy_run["home"]
    for site in ("site_a", "site_b"):
        table = read_stored(home, f"{NAME}/validated", site)
        quarantine = read_stored(home, f"{NAME}/quarantine", site)
        assert len(table) == 159 and quarantine["check"].tolist() == ["outcome_domain"]
        assert quarantine["row"].tolist() == [5]  # data row 4 is line 5 (header = line 1)
    report = json.loads((home.quarantine / NAME / "site_a" / "b0001.json").read_text())
    assert report["records"][0]["fix"] == "code 0 or 1"


def test_stages_hand_each_other_typed_values(toy_run) -> None:
    home = toy_run["home"]
    model = read_stored(home, f"{NAME}/model")
    assert isinstance(model, ModelRef) and model.thresholds == {"outcome": 0.5}
    evidence = read_stored(home, f"{NAME}/evidence")
    assert isinstance(evidence, TableSet)
    assert evidence.facts["policy_sha256"] == hashlib.sha256(POLICY_TEXT.encode()).hexdigest()
    decisions = read_stored(home, f"{NAME}/decisions")["decisions"]
    assert set(decisions["decision"]) <= {d.value for d in Decision}
    assert sorted(decisions["site"]) == ["site_a", "site_b"]


def test_report_is_marked_simulated_on_every_page(toy_run) -> None:
    import subprocess

    pdftotext = require_tool("pdftotext", "poppler-utils")

    package = next((toy_run["home"].reports / NAME).iterdir())
    text = subprocess.run(
        [pdftotext, "-layout", str(package / "report.pdf"), "-"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    pages = [p for p in text.split("\f") if p.strip()]
    assert pages and all(SIMULATED_BAND in p for p in pages)
    assert "site_a-0000" not in text  # identifiers never reach the report


def test_a_policy_edit_is_refused_by_the_package_until_the_audit_reruns(toy_run, tmp_path) -> None:
    edited = tmp_path / "policy.yaml"
    edited.write_text(POLICY_TEXT.replace("0.55", "0.56"), encoding="utf-8")
    runner = PipelineRunner(
        toy_run["instance"], toy_run["home"], toy_run["study"], policy_path=str(edited),
        console_level="CRITICAL",
    )  # fmt: skip
    refused = runner._run("package", None)
    assert not refused.success
    event = next(
        e for e in toy_run["instance"].all_logs(refused.run_id) if e.dagster_event
        and e.dagster_event.event_type_value == "STEP_FAILURE"
    )  # fmt: skip
    message = str(event.dagster_event.event_specific_data.error.message)
    assert "re-materialize toy_tabular/evidence" in message


def test_policy_resource_reads_the_environment_when_used(toy_run, monkeypatch, tmp_path) -> None:
    edited = tmp_path / "env_policy.yaml"
    edited.write_text(POLICY_TEXT.replace("1.0.0", "1.0.1"), encoding="utf-8")
    resource = StudyPolicy(study=NAME)
    assert resource.load().version == "1.0.0"
    monkeypatch.setenv("CLINAUDIT_TOY_TABULAR_POLICY", str(edited))
    assert resource.load().version == "1.0.1"


def test_the_package_cites_the_batch_hashes_ingest_read(toy_run, tmp_path) -> None:
    """Provenance is carried from ingest: the package stage never re-reads the landing folder."""
    home = toy_run["home"]
    ingested = {
        f"{NAME}/{site}/b0001": read_stored(home, f"{NAME}/batches", site)["content_hash"].iloc[0]
        for site in ("site_a", "site_b")
    }
    moved = tmp_path / "landing_elsewhere"
    home.landing.rename(moved)  # the landed data is gone from where ingest read it
    try:
        runner = PipelineRunner(
            toy_run["instance"], home, toy_run["study"], console_level="CRITICAL"
        )
        again = runner._run("package", None)
    finally:
        moved.rename(home.landing)
    assert again.success
    newest = sorted((home.reports / NAME).iterdir())[-1]
    inputs = json.loads((newest / "manifest.json").read_text())["inputs"]
    assert {k: v for k, v in inputs.items() if k.startswith(f"{NAME}/")} == ingested


def test_audit_stages_are_versioned_by_the_content_of_their_tables(toy_run) -> None:
    """A stage's data version is a hash of what it produced (tables, facts, files), so a
    downstream stage re-runs exactly when the content changed, not when a summary text did."""
    home, instance = toy_run["home"], toy_run["instance"]
    for stage in ("evidence", "decisions", "monitoring"):
        key = dg.AssetKey([NAME, stage])
        event = instance.get_latest_materialization_event(key)
        version = event.asset_materialization.tags["dagster/data_version"]
        assert version == read_stored(home, f"{NAME}/{stage}").digest(), stage


def test_the_same_inputs_audited_again_within_the_second_get_a_new_package(
    toy_run, monkeypatch
) -> None:
    """Audit ids are the time to the second plus a hash of the inputs: a second audit of the
    same inputs in the same second must wait for the next second, not fail on the first
    package (packages are never overwritten)."""
    from clinaudit.assets.audit_stages import stored_bundle
    from clinaudit.reporting import study_package
    from clinaudit.reporting.signing import ensure_dev_signer

    home, study = toy_run["home"], toy_run["study"]
    bundle = stored_bundle(home, study)
    signer = ensure_dev_signer(home.key_dir)
    inputs = study_package.package_inputs(bundle, study.policy_attachment)
    real = study_package.stamp_audit
    taken = real(study.name, inputs, signer)
    (home.reports / study.name / taken.audit_id).mkdir(parents=True, exist_ok=True)  # this second
    stamps = []

    def stamp(*args: Any, **kwargs: Any) -> Any:
        stamps.append(taken if not stamps else real(*args, **kwargs))
        return stamps[-1]

    monkeypatch.setattr(study_package, "stamp_audit", stamp)
    written = study_package.write_study_package(
        bundle,
        lambda s: study.report(bundle, s),
        policy_name=study.policy_attachment,
        signer=signer,
        reports_root=home.reports,
    )
    assert len(stamps) == 2 and stamps[1].now > taken.now
    assert written.audit_id == stamps[1].audit_id != taken.audit_id
    assert (home.reports / study.name / written.audit_id / "report.pdf").is_file()
