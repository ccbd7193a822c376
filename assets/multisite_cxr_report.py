"""Study ``multisite_cxr``, stage 5: the committee's deployment plan as a signed audit package.

Builds the report's view model from the audit, mitigation and decision tables, renders it to PDF
with the evidence embedded (tables, decisions, maps, policy, manifest of every input hash), signs
it (PAdES) and writes ``<reports>/multisite_cxr/<audit-id>/``; every run is a new package, older
ones are never overwritten. Bodies wire ``clinaudit.reporting``.
"""

from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from clinaudit.assets.multisite_cxr import GROUP, OWNERS
from clinaudit.assets.multisite_cxr_mitigation import DecisionPolicy
from clinaudit.orchestration.resources import ClinauditHome
from clinaudit.reporting.cxr_package import TABLES, PolicyMismatchError, write_cxr_package
from clinaudit.reporting.signing import SignerSpec, ensure_dev_signer


class ReportSigner(dg.ConfigurableResource):
    """Who signs the audit packages.

    Set ``pkcs12_path`` (e.g. ``dg.EnvVar("CLINAUDIT_SIGNING_P12")``, passphrase in the variable
    named by ``passphrase_env``) or ``key_pem`` + ``cert_pem``; otherwise the
    ``CLINAUDIT_SIGNING_*`` environment variables; otherwise a local development key and
    self-signed certificate are created once under ``<home>/keys`` (0600) and every report says
    it carries a development signature. Keys never enter the repository, logs or metadata.
    """

    pkcs12_path: str | None = None
    key_pem: str | None = None
    cert_pem: str | None = None
    passphrase_env: str | None = None

    def spec(self, key_dir: Path) -> SignerSpec:
        if self.pkcs12_path or self.key_pem or self.cert_pem:
            return SignerSpec(
                pkcs12_path=Path(self.pkcs12_path) if self.pkcs12_path else None,
                key_pem=Path(self.key_pem) if self.key_pem else None,
                cert_pem=Path(self.cert_pem) if self.cert_pem else None,
                passphrase_env=self.passphrase_env,
            )
        return SignerSpec.from_env() or ensure_dev_signer(key_dir)


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


def package_result(
    context: dg.AssetExecutionContext, written: Any, **extra: Any
) -> dg.MaterializeResult:
    """What a signed-package asset records, for either study: where the package is, whether it
    verified, who signed it, whether its data were simulated, and the study's ``extra`` entries.

    ``written`` is a study's package result (``audit_id``, ``package``, ``signer``,
    ``development_signature``, ``simulated``, ``n_inputs``, ``seconds``). The data version is the
    audit id, so every new package is a new version downstream.
    """
    package = written.package
    context.log.info(f"signed audit package {package.dir} (verified: {package.verdict.ok})")
    return dg.MaterializeResult(
        metadata={
            "audit_id": written.audit_id,
            "package_dir": dg.MetadataValue.path(str(package.dir)),
            "pdf": dg.MetadataValue.path(str(package.pdf_path)),
            "verified": package.verdict.ok,
            "signer": written.signer,
            "development_signature": written.development_signature,
            "simulated": written.simulated,
            **extra,
            "inputs": written.n_inputs,
            "seconds": dg.MetadataValue.json({k: round(v, 2) for k, v in written.seconds.items()}),
        },
        data_version=dg.DataVersion(written.audit_id),
    )


ASSETS = [cxr_audit_package]
