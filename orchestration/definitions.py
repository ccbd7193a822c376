"""The Dagster code location: ``dagster dev -w workspace.yaml`` loads ``defs`` from here."""

from __future__ import annotations

import dagster as dg

from clinaudit.assets import multisite_cxr, multisite_cxr_audit, multisite_cxr_model
from clinaudit.assets.multisite_cxr_model import AuditedModel
from clinaudit.orchestration.resources import ClinauditHome, ParquetIOManager

ALL_ASSETS = [*multisite_cxr.ASSETS, *multisite_cxr_model.ASSETS, *multisite_cxr_audit.ASSETS]


def build_resources(
    home: ClinauditHome, audited_model: AuditedModel | None = None
) -> dict[str, object]:
    """The resources every asset of the project uses, around one ``ClinauditHome``."""
    return {
        "home": home,
        "table_io": ParquetIOManager(home=home),
        "audited_model": audited_model or AuditedModel(),
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
        assets=ALL_ASSETS,
        jobs=[cxr_ingest_job],
        resources=build_resources(home, audited_model),
    )


defs = build_defs()
