"""Study ``multisite_cxr``, stage 5: the committee's deployment plan as a signed audit package.

Builds the report's view model from the audit, mitigation and decision tables, renders it to PDF
with the evidence embedded (tables, decisions, maps, policy, manifest of every input hash), signs
it (PAdES) and writes ``<reports>/multisite_cxr/<audit-id>/``; every run is a new package, older
ones are never overwritten. Bodies wire ``clinaudit.reporting``.
"""

import dagster as dg
import pandas as pd

from clinaudit.assets.multisite_cxr import GROUP, OWNERS
from clinaudit.assets.multisite_cxr_mitigation import DecisionPolicy
from clinaudit.assets.packages import ReportSigner, package_result
from clinaudit.orchestration.resources import ClinauditHome
from clinaudit.reporting.cxr_package import TABLES, PolicyMismatchError, write_cxr_package


@dg.asset(
    group_name=GROUP,
    owners=OWNERS,
    ins={
        "cxr_validated_images": dg.AssetIn(partition_mapping=dg.AllPartitionMapping()),
        "cxr_quarantine": dg.AssetIn(partition_mapping=dg.AllPartitionMapping()),
        **{name: dg.AssetIn() for name in TABLES},
    },
    description="The committee's deployment plan (executive summary, cohorts and data quality, "
    "discrimination, calibration, drift, worst cells and mitigations, per-site plan, appendix) "
    "as a PAdES-signed PDF with the evidence and a manifest of every input hash embedded; "
    "written to reports/multisite_cxr/<audit-id>/ and verified. Older packages are kept.",
)
def cxr_audit_package(
    context: dg.AssetExecutionContext,
    home: ClinauditHome,
    policy: DecisionPolicy,
    signer: ReportSigner,
    **tables: pd.DataFrame,
) -> dg.MaterializeResult:
    validated = tables.pop("cxr_validated_images")
    quarantine = tables.pop("cxr_quarantine")
    try:
        result = write_cxr_package(
            tables,
            validated=validated,
            quarantine=quarantine,
            policy=policy.load(),
            signer=signer.spec(home.key_dir),
            landing_root=home.landing,
            artifacts_root=home.artifacts,
            reports_root=home.reports,
        )
    except PolicyMismatchError as err:
        raise dg.Failure(str(err)) from err
    counts = tables["cxr_decisions"]["decision"].value_counts().to_dict()
    decisions = dg.MetadataValue.json({str(k): int(v) for k, v in counts.items()})
    return package_result(context, result, decisions=decisions)


ASSETS = [cxr_audit_package]
