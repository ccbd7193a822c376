"""Study ``sepsis_ews``: subgroup audit of a sepsis early-warning score across a hospital network.

Asset group ``sepsis_ews``::

    landing/sepsis_ews/<hospital>/<batch>/ --> sepsis_stays + sepsis_quarantine
    sepsis_vendor_model (package dir | scores CSV | embedded simulated vendor model)
    sepsis_stays + sepsis_vendor_model --> sepsis_predictions
    sepsis_stays + sepsis_predictions + sepsis_vendor_model --> sepsis_audit (one table per asset)
    every audit table + stays + quarantine + model --> sepsis_audit_package (signed, verified)

Bodies wire the core: ``clinaudit.validation.sepsis_ingest``, ``clinaudit.models.tabular``,
``clinaudit.audit.sepsis_audit`` and ``clinaudit.reporting.sepsis_report``.
"""

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import dagster as dg
import pandas as pd

from clinaudit.assets.packages import ReportSigner, package_result
from clinaudit.audit.sepsis_audit import SepsisAuditResult, run_sepsis_audit
from clinaudit.audit.sepsis_policy import SepsisPolicy, load_sepsis_policy
from clinaudit.models.scores_csv import ScoresError
from clinaudit.models.sepsis_scores import read_sepsis_scores
from clinaudit.models.tabular import (
    HgbConfig,
    TabularModel,
    TabularModelError,
    load_tabular_package,
    predict_stays,
    save_tabular_package,
    train_tabular_vendor_model,
)
from clinaudit.orchestration.resources import ClinauditHome
from clinaudit.reporting.sepsis_report import PolicyMismatchError, write_sepsis_package
from clinaudit.sources.landing import scan_landing, sha256_file
from clinaudit.sources.sepsis_simulator import (
    SepsisCohort,
    land_network,
    simulate_network,
    simulate_vendor_population,
    write_sepsis_batch,
)
from clinaudit.sources.sepsis_tables import STUDY
from clinaudit.validation.sepsis_ingest import ingest_sepsis_landing, write_sepsis_quarantine

GROUP = "sepsis_ews"
OWNERS = ["team:clinical-ai-governance"]
#: Audit tables, one asset each (``sepsis_<name>``), plus the one-row ``sepsis_decision``.
AUDIT_TABLES: tuple[str, ...] = (
    "burden", "calibration", "cohort", "composition", "criteria", "disadvantaged",
    "discrimination", "drift", "fairness_gaps", "fairness_rates", "mitigation",
    "mitigation_effects", "mitigation_thresholds", "monitoring", "reliability",
)  # fmt: skip
AUDIT_ASSETS: tuple[str, ...] = (*(f"sepsis_{t}" for t in AUDIT_TABLES), "sepsis_decision")


# --------------------------------------------------------------------------- resources
class SepsisModel(dg.ConfigurableResource):
    """What the sepsis audit evaluates.

    ``package_dir``: a vendor tabular package (``clinaudit.tabular_model/v1``, verified and loaded
    with skops' trusted-type check, never unpickled); ``scores_csv``: a vendor ``stay_id,score``
    CSV with ``threshold`` its operating threshold; neither: the embedded vendor model trained on
    the simulated vendor population (``vendor_scale``, ``seed``), deterministic, saved once under
    ``<artifacts>/models/sepsis_vendor/<key>/`` and reused.
    """

    package_dir: str | None = None
    scores_csv: str | None = None
    threshold: float | None = None
    vendor_scale: str = "demo"
    seed: int = 0

    def mode(self) -> Literal["package", "scores", "embedded"]:
        if self.package_dir and self.scores_csv:
            raise ValueError(
                "sepsis_model: both package_dir and scores_csv are set; audit either a model "
                "package or a scores CSV, not both"
            )
        if self.scores_csv and self.threshold is None:
            raise ValueError(
                "sepsis_model: scores_csv needs threshold= the vendor's operating threshold "
                "(alert when score >= threshold)"
            )
        return "package" if self.package_dir else "scores" if self.scores_csv else "embedded"


class SepsisPolicyFile(dg.ConfigurableResource):
    """The sepsis audit policy: the one shipped with clinaudit unless ``path`` names another."""

    path: str | None = None

    def load(self) -> SepsisPolicy:
        """The parsed, strictly validated policy."""
        return load_sepsis_policy(self.path)


class SepsisAuditConfig(dg.Config):
    """Run configuration of the audit (bootstrap replicates default to the policy's)."""

    seed: int = 0
    n_boot: int | None = None


# --------------------------------------------------------------------------- demo landing
def land_simulated_network(
    landing_root: Path,
    truth_root: Path,
    *,
    scale: str = "demo",
    seed: int = 0,
    months: tuple[int, ...] | None = None,
) -> SepsisCohort:
    """Land the simulated network (one batch per hospital and month); already landed batches stay.

    First call: :func:`clinaudit.sources.sepsis_simulator.land_network` (batches + truth sidecar
    under ``<truth_root>/sepsis_ews/``). Later calls (e.g. a new month, ``months=(13,)``) land
    only the batches that do not exist yet and rewrite the sidecar for the cohort drawn now.
    """
    landed = {(b.site, b.batch) for b in scan_landing(landing_root, STUDY).batches}
    if not landed:
        return land_network(landing_root, truth_root, scale=scale, seed=seed, months=months)
    cohort = simulate_network(scale, seed=seed, months=months)
    for (hospital, month), part in cohort.stays.groupby(["hospital", "admit_month"], sort=True):
        if (str(hospital), str(month)) not in landed:
            write_sepsis_batch(landing_root, part, str(month), site=str(hospital))
    truth = Path(truth_root) / STUDY
    truth.mkdir(parents=True, exist_ok=True)
    doc = json.dumps(cohort.truth, indent=1, sort_keys=True, allow_nan=False) + "\n"
    (truth / "truth.json").write_text(doc, encoding="utf-8")
    return cohort


# --------------------------------------------------------------------------- ingest
@dg.multi_asset(
    outs={
        "sepsis_stays": dg.AssetOut(
            io_manager_key="table_io",
            description="Validated ICU stays of every ready landed batch (one row per stay, with "
            "its landing batch). Rows with errors are quarantined, never dropped silently.",
            owners=OWNERS,
        ),
        "sepsis_quarantine": dg.AssetOut(
            io_manager_key="table_io",
            description="Quarantine records: site / batch / file / line / column / check / "
            "message / fix / value of every refused row or batch. Landed files are never changed.",
            owners=OWNERS,
        ),
    },
    group_name=GROUP,
    check_specs=[
        dg.AssetCheckSpec(
            "batches_intact",
            asset="sepsis_stays",
            description="Every ready batch verifies against its manifest and has the required "
            "columns (a failed batch contributes no rows; the others proceed).",
        ),
        dg.AssetCheckSpec(
            "stay_quarantine_rate",
            asset="sepsis_stays",
            description="Share of landed rows quarantined is at most 2%.",
        ),
    ],
    can_subset=False,
)
def sepsis_ingest(context: dg.AssetExecutionContext, home: ClinauditHome):
    """Verify, read and validate every ready batch under ``<landing>/sepsis_ews/``."""
    result = ingest_sepsis_landing(home.landing)
    reports = write_sepsis_quarantine(result.quarantine, home.quarantine)
    version = dg.DataVersion(hashlib.sha256(result.data_version.encode()).hexdigest())
    batches = pd.DataFrame([asdict(b) for b in result.batches])
    context.log.info(f"{len(result.stays)} stays from {len(result.batches)} batches")
    yield dg.Output(
        result.stays,
        "sepsis_stays",
        data_version=version,
        metadata={
            "n_stays": len(result.stays),
            "hospitals": sorted(set(result.stays["hospital"].astype(str))),
            "simulated": result.simulated,
            "batches": dg.MetadataValue.md(batches.to_markdown(index=False)),
        },
    )
    yield dg.Output(
        result.quarantine,
        "sepsis_quarantine",
        data_version=version,
        metadata={"n_records": len(result.quarantine), "reports": [str(p) for p in reports]},
    )
    yield dg.AssetCheckResult(
        check_name="batches_intact",
        asset_key="sepsis_stays",
        passed=not result.failed,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"failed_batches": [f"{b.site}/{b.batch}" for b in result.failed] or ["none"]},
    )
    n_in = sum(b.n_rows_in for b in result.batches)
    refused = n_in - sum(b.n_rows_ok for b in result.batches)
    yield dg.AssetCheckResult(
        check_name="stay_quarantine_rate",
        asset_key="sepsis_stays",
        passed=n_in > 0 and refused / n_in <= 0.02,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"n_rows_in": n_in, "n_rows_refused": refused},
    )


# --------------------------------------------------------------------------- model
def _embedded_package(root: Path, scale: str, seed: int) -> tuple[TabularModel, Path]:
    """Train (or reuse) the simulated vendor's model; the key hashes everything that shapes it."""
    spec = {"scale": scale, "seed": seed, "hgb": asdict(HgbConfig()), "format": 1}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    target = root / key
    if not target.is_dir():
        stays = simulate_vendor_population(scale, seed=seed).stays
        model = train_tabular_vendor_model(stays, seed=seed)
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
        try:
            save_tabular_package(model, tmp / "package")
            os.replace(tmp / "package", target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return load_tabular_package(target), target


def _load_model(sepsis_model: SepsisModel, home: ClinauditHome) -> tuple[TabularModel, Path]:
    if sepsis_model.package_dir:
        return load_tabular_package(sepsis_model.package_dir), Path(sepsis_model.package_dir)
    root = home.artifacts / "models" / "sepsis_vendor"
    return _embedded_package(root, sepsis_model.vendor_scale, sepsis_model.seed)


@dg.asset(
    group_name=GROUP,
    io_manager_key="table_io",
    owners=OWNERS,
    description="The sepsis model under audit (one row): a verified vendor tabular package, a "
    "scores CSV, or the embedded model trained on the simulated vendor population. The card "
    "(threshold, held-out validation, training-data summary) travels as JSON.",
)
def sepsis_vendor_model(sepsis_model: SepsisModel, home: ClinauditHome) -> dg.Output[pd.DataFrame]:
    mode = sepsis_model.mode()
    if mode == "scores":
        path = Path(sepsis_model.scores_csv).resolve()  # type: ignore[arg-type]
        if not path.is_file():
            raise dg.Failure(f"sepsis_model.scores_csv={str(path)!r} does not exist")
        digest, threshold, card = sha256_file(path), float(sepsis_model.threshold), ""  # type: ignore[arg-type]
        identity = model_sha = digest
    else:
        try:
            model, path = _load_model(sepsis_model, home)
        except TabularModelError as err:
            raise dg.Failure(f"vendor model refused: {err}") from err
        identity, model_sha, threshold = model.package_sha256, model.model_sha256, model.threshold
        card = json.dumps(model.card, sort_keys=True)
    row = {
        "mode": mode, "source": str(Path(path).resolve()), "package_sha256": identity,
        "model_sha256": model_sha, "threshold": threshold, "card_json": card,
    }  # fmt: skip
    meta = {k: v for k, v in row.items() if k != "card_json"}
    return dg.Output(pd.DataFrame([row]), metadata=meta, data_version=dg.DataVersion(identity))


# --------------------------------------------------------------------------- predictions
@dg.asset(
    group_name=GROUP,
    io_manager_key="table_io",
    owners=OWNERS,
    description="One sepsis probability per validated stay (stay_id, score, model_sha256): the "
    "verified package scored here, or the vendor's scores CSV checked against the stays.",
)
def sepsis_predictions(
    context: dg.AssetExecutionContext,
    sepsis_stays: pd.DataFrame,
    sepsis_vendor_model: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    row = sepsis_vendor_model.iloc[0]
    if row["mode"] == "scores":
        try:
            preds = read_sepsis_scores(row["source"], sepsis_stays)
        except ScoresError as err:
            raise dg.Failure(f"vendor scores refused: {err}") from err
    else:
        try:
            model = load_tabular_package(row["source"])
        except TabularModelError as err:
            raise dg.Failure(f"vendor model refused: {err}") from err
        if model.package_sha256 != row["package_sha256"]:
            raise dg.Failure(
                f"{row['source']}: package sha256 {model.package_sha256} differs from the audited "
                f"{row['package_sha256']}; re-materialize sepsis_vendor_model"
            )
        preds = predict_stays(model, sepsis_stays)
    context.log.info(f"{len(preds)} stays scored ({row['mode']})")
    alerts = float((preds["score"] >= float(row["threshold"])).mean()) if len(preds) else 0.0
    return dg.Output(
        preds,
        metadata={
            "n_stays": len(preds),
            "alert_rate": alerts,
            "model_sha256": row["package_sha256"],
        },
    )


# --------------------------------------------------------------------------- audit
def _card(vendor_model: pd.DataFrame) -> dict | None:
    text = str(vendor_model.iloc[0]["card_json"])
    return json.loads(text) if text else None


@dg.multi_asset(
    outs={
        name: dg.AssetOut(io_manager_key="table_io", owners=OWNERS, is_required=True)
        for name in AUDIT_ASSETS
    },
    ins={n: dg.AssetIn() for n in ("sepsis_stays", "sepsis_predictions", "sepsis_vendor_model")},
    group_name=GROUP,
    description="The sepsis audit (clinaudit.audit.sepsis_audit): discrimination, calibration, "
    "fairness rates and paired gap CIs, alert burden, drift against the card's training-data "
    "summary, the cross-fitted mitigation of the largest gap, the recommendation and the "
    "monitoring plan; one table per asset.",
    can_subset=False,
)
def sepsis_audit(
    context: dg.AssetExecutionContext,
    config: SepsisAuditConfig,
    sepsis_policy: SepsisPolicyFile,
    sepsis_stays: pd.DataFrame,
    sepsis_predictions: pd.DataFrame,
    sepsis_vendor_model: pd.DataFrame,
):
    policy = sepsis_policy.load()
    row = sepsis_vendor_model.iloc[0]
    result = run_sepsis_audit(
        sepsis_stays.drop(columns=["batch"]), sepsis_predictions, card=_card(sepsis_vendor_model),
        threshold=float(row["threshold"]), policy=policy, seed=config.seed, n_boot=config.n_boot,
    )  # fmt: skip
    version = dg.DataVersion(
        hashlib.sha256(
            (result.decision_table()["summary"].iloc[0] + result.recommendation).encode()
        ).hexdigest()
    )
    tables = result.tables()
    for name in AUDIT_TABLES:
        yield dg.Output(tables[name], f"sepsis_{name}", data_version=version,
                        metadata={"rows": len(tables[name])})  # fmt: skip
    context.log.info(f"recommendation {result.recommendation}: {'; '.join(result.reasons)}")
    yield dg.Output(
        result.decision_table(),
        "sepsis_decision",
        data_version=version,
        metadata={
            "recommendation": result.recommendation,
            "reasons": dg.MetadataValue.json(list(result.reasons)),
            "conditions": dg.MetadataValue.json(list(result.conditions)),
            "mitigation": f"{result.summary['mitigation_method']} on "
            f"{result.summary['mitigation_attribute']} ({result.summary['mitigation_metric']})",
        },
    )


# --------------------------------------------------------------------------- package
@dg.asset(
    group_name=GROUP,
    owners=OWNERS,
    ins={
        n: dg.AssetIn()
        for n in (*AUDIT_ASSETS, "sepsis_stays", "sepsis_quarantine", "sepsis_vendor_model")
    },  # fmt: skip
    description="The committee's sepsis audit report (summary and recommendation, cohort, "
    "discrimination, calibration, fairness gaps, mitigation, monitoring plan, appendix) as a "
    "PAdES-signed PDF with the evidence embedded; written to reports/sepsis_ews/<audit-id>/ "
    "and verified. Older packages are kept.",
)
def sepsis_audit_package(
    context: dg.AssetExecutionContext,
    home: ClinauditHome,
    signer: ReportSigner,
    sepsis_policy: SepsisPolicyFile,
    **tables: pd.DataFrame,
) -> dg.MaterializeResult:
    result = SepsisAuditResult.from_tables(
        {n: tables[f"sepsis_{n}"] for n in AUDIT_TABLES}, tables["sepsis_decision"]
    )
    try:
        written = write_sepsis_package(
            result,
            stays=tables["sepsis_stays"],
            quarantine=tables["sepsis_quarantine"],
            vendor_model=tables["sepsis_vendor_model"],
            policy=sepsis_policy.load(),
            signer=signer.spec(home.key_dir),
            landing_root=home.landing,
            reports_root=home.reports,
        )
    except PolicyMismatchError as err:
        raise dg.Failure(str(err)) from err
    return package_result(
        context, written, recommendation=result.recommendation, pages=written.pages
    )


ASSETS = [
    sepsis_ingest,
    sepsis_vendor_model,
    sepsis_predictions,
    sepsis_audit,
    sepsis_audit_package,
]
