"""Study ``multisite_cxr``: a 14-finding chest X-ray classifier audited at several sites.

Stage 1 (this module so far): landed site batches -> validated, de-identified image table with
quality features (one dynamic partition per site) + a cross-site cohort summary. Asset bodies only
wire: the logic lives in ``clinaudit.validation`` and ``clinaudit.sources``.
"""

import warnings

import dagster as dg
import pandas as pd

from clinaudit.orchestration.resources import ClinauditHome
from clinaudit.validation.cohort import cohort_summary, prevalence_table
from clinaudit.validation.gx_suite import LabelSuiteConfig, run_label_suite
from clinaudit.validation.ingest import IngestConfig
from clinaudit.validation.privacy import phi_leaks
from clinaudit.validation.site_ingest import ingest_site, write_quarantine_reports

# Output(data_version=...) is marked beta in Dagster 1.13; it is the documented way to version data.
warnings.filterwarnings("ignore", message=r"Parameter `data_version`", category=dg.BetaWarning)
# Partitioned asset checks (a preview in 1.13) keep each site's blocking checks to that site.
warnings.filterwarnings(
    "ignore",
    message=r"Specifying a partitions_def on an AssetCheckSpec",
    category=dg.PreviewWarning,
)

GROUP = "multisite_cxr"
STUDY_DIR = "cxr"
OWNERS = ["team:clinical-ai-governance"]

#: One partition per site, added when a site's first ready batch is found (``clinaudit`` commands).
cxr_sites = dg.DynamicPartitionsDefinition(name="cxr_sites")

#: Quarantine checks that mean the landed bytes are not what the sender's manifest promised.
INTEGRITY_CHECKS = frozenset(
    {
        "manifest",
        "hash_mismatch",
        "file_missing",
        "not_in_manifest",
        "unlisted_file",
        "label_file_missing",
        "label_file_unlisted",
    }
)


class CxrIngestConfig(dg.Config):
    """Run configuration of the ingest step (converted into the core ``IngestConfig``)."""

    uncertainty: str = "zeros"
    max_pixels: int = 50_000_000
    workers: int = 2
    max_quarantine_rate: float = 0.02
    min_rows: int = 20

    def core(self) -> IngestConfig:
        return IngestConfig(
            uncertainty=self.uncertainty,  # type: ignore[arg-type]
            max_pixels=self.max_pixels,
            workers=self.workers,
        )


def _of_checks(records: pd.DataFrame, checks: frozenset[str] | set[str]) -> pd.DataFrame:
    """The quarantine records produced by the given checks."""
    return records[records["check"].isin(checks)] if len(records) else records


def _records_md(frame: pd.DataFrame, limit: int = 25) -> str:
    if frame.empty:
        return "No quarantine records."
    cols = ["batch", "file", "row", "column", "check", "message", "fix"]
    shown = frame[cols].head(limit).astype(object).fillna("")  # Int64 rows may be <NA>
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in shown.itertuples(index=False):
        cells = [str(v).replace("|", "/").replace("\n", " ") for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    more = len(frame) - limit
    return "\n".join(lines) + (f"\n\n... and {more} more records." if more > 0 else "")


_CHECKS = [
    dg.AssetCheckSpec(
        "batch_structure",
        asset="cxr_validated_images",
        partitions_def=cxr_sites,
        blocking=True,
        description="Every ready batch of the site has a readable manifest and label table with "
        "the required columns, and at least one image was ingested.",
    ),
    dg.AssetCheckSpec(
        "manifest_integrity",
        asset="cxr_validated_images",
        partitions_def=cxr_sites,
        blocking=True,
        description="Every file listed in manifest.json is present with the listed size and "
        "sha256, and no unlisted file lies in the batch.",
    ),
    dg.AssetCheckSpec(
        "deidentified",
        asset="cxr_validated_images",
        partitions_def=cxr_sites,
        blocking=True,
        description="No PHI column or raw patient identifier leaves ingest; pseudonyms are keyed.",
    ),
    dg.AssetCheckSpec(
        "label_expectations",
        asset="cxr_validated_images",
        partitions_def=cxr_sites,
        blocking=True,
        description="Great Expectations 1.x suite: row count, null rates, age/sex domains, "
        "prevalence bounds per finding.",
    ),
    dg.AssetCheckSpec(
        "image_ids_opaque",
        asset="cxr_validated_images",
        partitions_def=cxr_sites,
        blocking=False,
        description="No image id or file name contains the row's Patient ID (image ids leave "
        "ingest as given, so vendor scores can be matched on them).",
    ),
    dg.AssetCheckSpec(
        "image_quarantine_rate",
        asset="cxr_validated_images",
        partitions_def=cxr_sites,
        blocking=False,
        description="Share of label rows quarantined by row/image checks is below the limit.",
    ),
]


@dg.multi_asset(
    outs={
        "cxr_validated_images": dg.AssetOut(
            io_manager_key="table_io",
            description="Validated, de-identified image table of one site: labels (0/1/NaN per "
            "finding), keyed patient pseudonyms, image-quality features and categorical DICOM "
            "metadata. PHI never leaves this step.",
            owners=OWNERS,
        ),
        "cxr_quarantine": dg.AssetOut(
            io_manager_key="table_io",
            description="Quarantine records of the site: file / row / column / check / message / "
            "fix for every refused row, image or batch. Landed files are never modified.",
            owners=OWNERS,
        ),
    },
    partitions_def=cxr_sites,
    group_name=GROUP,
    check_specs=_CHECKS,
    can_subset=False,
)
def cxr_ingest(context: dg.AssetExecutionContext, config: CxrIngestConfig, home: ClinauditHome):
    """Ingest every ready landed batch of the site partition."""
    site = context.partition_key

    def progress(batch: str, done: int, total: int) -> None:
        if done == total or done % 500 == 0:
            context.log.info(f"{site}/{batch}: {done}/{total} images validated")

    result = ingest_site(
        home.landing,
        site,
        study=STUDY_DIR,
        pseudonym_key=home.pseudonym_secret(),
        config=config.core(),
        progress=progress,
    )
    reports = write_quarantine_reports(result, home.quarantine, STUDY_DIR)
    table, quarantine = result.table, result.quarantine
    batches_md = pd.DataFrame([b.__dict__ for b in result.batches]).to_markdown(index=False)
    version = dg.DataVersion(result.data_version)
    yield dg.Output(
        table,
        "cxr_validated_images",
        data_version=version,
        metadata={
            "site": site,
            "simulated": result.simulated,
            "pseudonym_key": home.pseudonym_key_source(),
            "n_images": len(table),
            "n_patients": int(table["patient_pseudonym"].nunique()) if len(table) else 0,
            "batches": dg.MetadataValue.md(batches_md),
            "prevalence": dg.MetadataValue.md(prevalence_table(table).to_markdown()),
        },
    )
    yield dg.Output(
        quarantine,
        "cxr_quarantine",
        data_version=version,
        metadata={
            "n_records": len(quarantine),
            "records": dg.MetadataValue.md(_records_md(quarantine)),
            "reports": [str(p) for p in reports],
        },
    )
    integrity = _of_checks(quarantine, INTEGRITY_CHECKS)
    yield dg.AssetCheckResult(
        check_name="batch_structure",
        asset_key="cxr_validated_images",
        passed=not result.failed_batches and len(table) > 0,
        metadata={
            "failed_batches": [b.batch for b in result.failed_batches],
            "n_images": len(table),
        },
    )
    integrity_errors = int((integrity["severity"] == "error").sum()) if len(integrity) else 0
    yield dg.AssetCheckResult(
        check_name="manifest_integrity",
        asset_key="cxr_validated_images",
        passed=integrity.empty,
        # Errors (changed or missing bytes) block the site; stray unlisted files only warn.
        severity=dg.AssetCheckSeverity.ERROR if integrity_errors else dg.AssetCheckSeverity.WARN,
        metadata={
            "n_problems": len(integrity),
            "problems": dg.MetadataValue.md(_records_md(integrity)),
        },
    )
    leaks = phi_leaks(table)
    yield dg.AssetCheckResult(
        check_name="deidentified",
        asset_key="cxr_validated_images",
        passed=not leaks,
        metadata={"problems": leaks or ["none"]},
    )
    suite_cfg = LabelSuiteConfig(
        min_rows=config.min_rows,
        # Under the "ignore" policy uncertain labels are NaN by design, not missing data.
        max_unlabelled_rate=1.0 if config.uncertainty == "ignore" else 0.05,
    )
    suite = run_label_suite(table, suite_cfg) if len(table) else None
    yield dg.AssetCheckResult(
        check_name="label_expectations",
        asset_key="cxr_validated_images",
        passed=bool(suite and suite.success),
        metadata={
            "results": dg.MetadataValue.md(suite.to_markdown() if suite else "no rows ingested"),
            "n_failed": len(suite.failures) if suite else 1,
            "findings_not_labelled": list(suite.unlabelled) if suite else [],
        },
    )
    embedded = _of_checks(quarantine, {"identifier_in_image_id"})
    yield dg.AssetCheckResult(
        check_name="image_ids_opaque",
        asset_key="cxr_validated_images",
        passed=embedded.empty,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"findings": dg.MetadataValue.md(_records_md(embedded))},
    )
    n_in = sum(b.n_rows_in for b in result.batches)
    n_refused = sum(b.n_rows_in - b.n_images_ok for b in result.batches)
    yield dg.AssetCheckResult(
        check_name="image_quarantine_rate",
        asset_key="cxr_validated_images",
        passed=n_in > 0 and n_refused / n_in <= config.max_quarantine_rate,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            # Rows refused / rows received (a row with several problems counts once).
            "rate": n_refused / n_in if n_in else "no rows received",
            "limit": config.max_quarantine_rate,
            "n_rows_in": n_in,
            "n_rows_refused": n_refused,
        },
    )


@dg.asset(
    group_name=GROUP,
    io_manager_key="table_io",
    owners=OWNERS,
    ins={
        "cxr_validated_images": dg.AssetIn(partition_mapping=dg.AllPartitionMapping()),
        "cxr_quarantine": dg.AssetIn(partition_mapping=dg.AllPartitionMapping()),
    },
    description="Cross-site cohort and data-quality summary: images, patients, demographics, "
    "views, quarantined records and prevalence per finding for every site.",
)
def cxr_cohort_summary(
    context: dg.AssetExecutionContext,
    cxr_validated_images: dict[str, pd.DataFrame],
    cxr_quarantine: dict[str, pd.DataFrame],
) -> dg.Output[pd.DataFrame]:
    summary = cohort_summary(cxr_validated_images, cxr_quarantine)
    context.log.info(f"cohort summary over {len(summary)} sites")
    return dg.Output(
        summary,
        metadata={
            "sites": len(summary),
            "n_images": int(summary["n_images"].sum()),
            "summary": dg.MetadataValue.md(summary.to_markdown(index=False)),
        },
    )


ASSETS = [cxr_ingest, cxr_cohort_summary]
