"""The Dagster code location: ``dagster dev -w workspace.yaml`` loads ``defs`` from here."""

from __future__ import annotations

import dagster as dg

from clinaudit.assets import multisite_cxr
from clinaudit.orchestration.resources import ClinauditHome, ParquetIOManager


def build_resources(home: ClinauditHome) -> dict[str, object]:
    """The resources every asset of the project uses, around one ``ClinauditHome``."""
    return {"home": home, "table_io": ParquetIOManager(home=home)}


def build_defs(home: ClinauditHome | None = None) -> dg.Definitions:
    """Build the project's ``Definitions``.

    Parameters
    ----------
    home : ClinauditHome, optional
        Run-time directories. By default ``$CLINAUDIT_HOME`` (else ``./var``) and the optional
        ``$CLINAUDIT_PSEUDONYM_KEY``, both read when a run uses them.
    """
    home = home or ClinauditHome()
    cxr_ingest_job = dg.define_asset_job(
        "cxr_ingest_job",
        selection=dg.AssetSelection.assets(multisite_cxr.cxr_ingest),
        description="Validate and de-identify one site's landed batches.",
    )
    return dg.Definitions(
        assets=multisite_cxr.ASSETS,
        jobs=[cxr_ingest_job],
        resources=build_resources(home),
    )


defs = build_defs()
