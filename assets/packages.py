"""What the signed-package assets of every study share: who signs (:class:`ReportSigner`) and what
a package materialization records (:func:`package_result`). Bodies wire ``clinaudit.reporting``."""

from pathlib import Path
from typing import Any

import dagster as dg

from clinaudit.reporting.package import PackageResult
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


def package_result(
    context: dg.AssetExecutionContext, written: PackageResult, **extra: Any
) -> dg.MaterializeResult:
    """What a signed-package asset records, for either study: where the package is, whether it
    verified, who signed it, whether its data were simulated, and the study's ``extra`` entries.

    ``written`` is a study's :class:`clinaudit.reporting.package.PackageResult`. The data version
    is the audit id, so every new package is a new version downstream.
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
