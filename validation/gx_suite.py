"""Great Expectations 1.x suite for a site's validated image table.

``dagster-ge`` only supports GX < 1.0, so the suite is built and run here with GX's own API, in an
ephemeral context (nothing is written to disk), and the result is returned as plain frozen
dataclasses. The ingest asset (``clinaudit.assets.multisite_cxr``) reports it as the blocking
``label_expectations`` asset check.

Expectations (all thresholds in :class:`LabelSuiteConfig`):

* table row count between ``min_rows`` and ``max_rows``;
* no nulls in the identifying / demographic columns;
* per-finding null rate (unlabelled share) at most ``max_unlabelled_rate``, and prevalence within
  ``[0, max_prevalence]``, for every finding the batch labels (a finding with no label at all, e.g.
  a ChestX-ray14 finding that a CheXpert export does not have, is listed in ``unlabelled`` instead);
* the "no finding" share among images with at least one label within ``no_finding_bounds``
  (a site where 90% of images carry a finding is almost always a label-export
  error, not a population);
* patient age within ``[0, 120]`` years and sex in ``{M, F, U}``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from clinaudit.sources.cxr_labels import FINDINGS


@dataclass(frozen=True)
class LabelSuiteConfig:
    """Thresholds of the label-table expectation suite."""

    findings: tuple[str, ...] = FINDINGS
    min_rows: int = 20
    max_rows: int = 5_000_000
    max_unlabelled_rate: float = 0.05
    max_prevalence: float = 0.6
    no_finding_bounds: tuple[float, float] = (0.05, 0.95)
    required_columns: tuple[str, ...] = ("image_id", "patient_pseudonym", "age", "sex")


@dataclass(frozen=True)
class ExpectationOutcome:
    """One expectation's result."""

    expectation: str
    column: str | None
    success: bool
    observed: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SuiteOutcome:
    """The whole suite's result."""

    suite: str
    success: bool
    results: tuple[ExpectationOutcome, ...]
    unlabelled: tuple[str, ...] = ()

    @property
    def failures(self) -> tuple[ExpectationOutcome, ...]:
        return tuple(r for r in self.results if not r.success)

    def to_markdown(self) -> str:
        """A markdown table of every expectation, failures first."""
        rows = ["| expectation | column | observed | result |", "|---|---|---|---|"]
        for r in sorted(self.results, key=lambda r: (r.success, r.expectation, r.column or "")):
            mark = "pass" if r.success else "**FAIL**"
            rows.append(f"| {r.expectation} | {r.column or ''} | {r.observed} | {mark} |")
        return "\n".join(rows)


def _suite(table: pd.DataFrame, cfg: LabelSuiteConfig) -> Any:
    import great_expectations as gx

    suite = gx.ExpectationSuite(name="cxr_validated_images")
    e = gx.expectations
    suite.add_expectation(
        e.ExpectTableRowCountToBeBetween(min_value=cfg.min_rows, max_value=cfg.max_rows)
    )
    for col in cfg.required_columns:
        suite.add_expectation(e.ExpectColumnToExist(column=col))
        suite.add_expectation(e.ExpectColumnValuesToNotBeNull(column=col))
    suite.add_expectation(e.ExpectColumnValuesToBeBetween(column="age", min_value=0, max_value=120))
    suite.add_expectation(e.ExpectColumnValuesToBeInSet(column="sex", value_set=["M", "F", "U"]))
    for finding in cfg.findings:
        if finding not in table.columns:
            suite.add_expectation(e.ExpectColumnToExist(column=finding))
            continue
        if table[finding].isna().all():
            continue  # not labelled by this export: reported, not tested
        suite.add_expectation(
            e.ExpectColumnValuesToNotBeNull(column=finding, mostly=1.0 - cfg.max_unlabelled_rate)
        )
        suite.add_expectation(
            e.ExpectColumnMeanToBeBetween(
                column=finding, min_value=0.0, max_value=cfg.max_prevalence
            )
        )
    suite.add_expectation(
        e.ExpectColumnMeanToBeBetween(
            column="_no_finding",
            min_value=cfg.no_finding_bounds[0],
            max_value=cfg.no_finding_bounds[1],
        )
    )
    return suite


def _observed(result: dict[str, Any]) -> str:
    if "observed_value" in result:
        value = result["observed_value"]
        if isinstance(value, float | np.floating):
            return f"{float(value):.4g}"
        return str(value)
    if "unexpected_count" in result:
        pct = result.get("unexpected_percent")
        pct_txt = f" ({float(pct):.3g}%)" if pct is not None else ""
        return f"{result['unexpected_count']} unexpected{pct_txt}"
    return ""


def run_label_suite(table: pd.DataFrame, cfg: LabelSuiteConfig | None = None) -> SuiteOutcome:
    """Run the expectation suite on a site's validated image table.

    Parameters
    ----------
    table : DataFrame
        The ``ValidatedImages`` table of one site (finding columns 0/1/NaN).
    cfg : LabelSuiteConfig, optional
        Thresholds; defaults documented in the module docstring.

    Returns
    -------
    SuiteOutcome
        Success flag and one :class:`ExpectationOutcome` per expectation.
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    cfg = cfg or LabelSuiteConfig()
    present = [f for f in cfg.findings if f in table.columns]
    frame = table.copy()
    labels = frame[present].to_numpy(dtype=float) if present else np.zeros((len(frame), 0))
    any_label = (~np.isnan(labels)).any(axis=1)
    no_finding = (np.nansum(labels, axis=1) == 0).astype(float)
    frame["_no_finding"] = np.where(any_label, no_finding, np.nan)
    unlabelled = tuple(f for f in present if frame[f].isna().all())
    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("clinaudit")
    asset = source.add_dataframe_asset("validated_images")
    batch = asset.add_batch_definition_whole_dataframe("all").get_batch(
        batch_parameters={"dataframe": frame}
    )
    result = batch.validate(_suite(frame, cfg))
    outcomes = []
    for r in result.results:
        kwargs = {k: v for k, v in r.expectation_config.kwargs.items() if k not in ("batch_id",)}
        outcomes.append(
            ExpectationOutcome(
                expectation=r.expectation_config.type,
                column=kwargs.get("column"),
                success=bool(r.success),
                observed=_observed(r.result or {}),
                kwargs=kwargs,
            )
        )
    return SuiteOutcome(
        suite="cxr_validated_images",
        success=bool(result.success),
        results=tuple(outcomes),
        unlabelled=unlabelled,
    )
