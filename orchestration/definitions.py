"""The Dagster code location: ``dagster dev -w workspace.yaml`` loads ``defs`` from here."""

from __future__ import annotations

import os

import dagster as dg

from clinaudit.assets import (
    multisite_cxr,
    multisite_cxr_audit,
    multisite_cxr_mitigation,
    multisite_cxr_model,
    multisite_cxr_report,
    multisite_cxr_sources,
    sepsis_ews,
)
from clinaudit.assets.multisite_cxr_mitigation import DecisionPolicy
from clinaudit.assets.multisite_cxr_model import AuditedModel
from clinaudit.assets.packages import ReportSigner
from clinaudit.assets.sepsis_ews import SepsisModel, SepsisPolicyFile
from clinaudit.orchestration.automation import automation_sensor, with_automation
from clinaudit.orchestration.resources import ClinauditHome, ParquetIOManager
from clinaudit.orchestration.sensors import LandingWatch, cxr_landing_sensor, cxr_site_job

ALL_ASSETS = [
    *multisite_cxr.ASSETS,
    *multisite_cxr_model.ASSETS,
    *multisite_cxr_audit.ASSETS,
    *multisite_cxr_mitigation.ASSETS,
    *multisite_cxr_report.ASSETS,
    *multisite_cxr_sources.ASSETS,
    *sepsis_ews.ASSETS,
]


def build_resources(
    home: ClinauditHome,
    audited_model: AuditedModel | None = None,
    sepsis_model: SepsisModel | None = None,
) -> dict[str, object]:
    """The resources every asset of the project uses, around one ``ClinauditHome``.

    Without an explicit ``audited_model``, ``$CLINAUDIT_MODEL_PACKAGE`` (a vendor package) or
    ``$CLINAUDIT_VENDOR_SCORES`` (a scores directory) choose what is audited, else the embedded
    model; ``$CLINAUDIT_POLICY`` names a decision policy file other than the shipped one. So runs
    started by the sensor, the automation or the UI audit what ``clinaudit audit`` audited.
    """
    env = os.environ
    model = audited_model or AuditedModel(
        package_dir=env.get("CLINAUDIT_MODEL_PACKAGE") or None,
        scores_dir=env.get("CLINAUDIT_VENDOR_SCORES") or None,
    )
    return {
        "home": home,
        "table_io": ParquetIOManager(home=home),
        "audited_model": model,
        "policy": DecisionPolicy(path=env.get("CLINAUDIT_POLICY") or None),
        "signer": ReportSigner(),
        # Study sepsis_ews: $CLINAUDIT_SEPSIS_MODEL (a tabular vendor package), else the
        # embedded vendor model; $CLINAUDIT_SEPSIS_POLICY, else the shipped sepsis policy.
        "sepsis_model": sepsis_model
        or SepsisModel(package_dir=env.get("CLINAUDIT_SEPSIS_MODEL") or None),
        "sepsis_policy": SepsisPolicyFile(path=env.get("CLINAUDIT_SEPSIS_POLICY") or None),
    }


def build_defs(
    home: ClinauditHome | None = None, audited_model: AuditedModel | None = None
) -> dg.Definitions:
    """Build the project's ``Definitions``.

    Parameters
    ----------
    home : ClinauditHome, optional
        Run-time directories. By default ``$CLINAUDIT_HOME`` (else ``./var``) and the optional
        ``$CLINAUDIT_PSEUDONYM_KEY``, both read when a run uses them.
    audited_model : AuditedModel, optional
        What is audited; by default the embedded vendor model.
    """
    home = home or ClinauditHome()
    cxr_ingest_job = dg.define_asset_job(
        "cxr_ingest_job",
        selection=dg.AssetSelection.assets(multisite_cxr.cxr_ingest),
        description="Validate and de-identify one site's landed batches.",
    )
    return dg.Definitions(
        assets=with_automation(ALL_ASSETS),
        jobs=[cxr_ingest_job, cxr_site_job],
        sensors=[cxr_landing_sensor, automation_sensor],
        resources={**build_resources(home, audited_model), "landing_watch": LandingWatch()},
    )


defs = build_defs()
