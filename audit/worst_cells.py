"""Worst cells: rank (group, target) cells by evidence of harm; keep the top k with the evidence.

Criteria (each one "fires" only when its confidence interval excludes no-harm):

1. ``auroc_drop``: ``AUROC_reference - AUROC_cell``; fires when the lower bound of its interval is
   above ``auroc_margin``. The interval is the percentile interval of the difference of the two
   independent clustered bootstraps (``drop_ci="bootstrap"``) or the unpaired DeLong interval
   (``drop_ci="delong"``).
2. ``sensitivity_drop``: ``sensitivity_reference - sensitivity_cell`` at the operating threshold
   (bootstrap difference interval); fires when its lower bound is above ``sensitivity_margin``.
3. ``calibration``: the cell's ECE (``ece_binning``); fires when the lower bound of its bootstrap
   interval is above ``ece_tolerance``.

Scoring rule: ``harm_score = sum over fired criteria of (lower bound - margin)``, i.e. the amount of
harm the data support beyond tolerance, in probability units (AUROC points, sensitivity points, ECE
points); criteria that did not fire add 0. Cells are ranked by the number of fired criteria, then
``harm_score`` (both descending), then group and target; only cells with at least one fired
criterion are kept unless ``include_unflagged``; at most ``top_k`` rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from .bootstrap import percentile_ci
from .calibration import BINNINGS, Binning, CalibrationResult
from .discrimination import DiscriminationResult
from .schemas import (
    OutputSchema,
    difference_field,
    probability_field,
    schema_columns,
    validate_table,
)
from .types import STATUS_OK, AuditInputError, check_option, check_positive_int

DropCI = Literal["bootstrap", "delong"]


@dataclass(frozen=True)
class WorstCellsConfig:
    """Options of :func:`worst_cells` (defaults live here only).

    Attributes
    ----------
    top_k : int
        Rows kept.
    drop_ci : {"bootstrap", "delong"}
        Interval used for the AUROC drop.
    auroc_margin, sensitivity_margin : float
        Drops tolerated before a criterion fires (0 = any supported drop).
    ece_binning : {"width", "mass"}
        Which ECE to use.
    ece_tolerance : float
        ECE tolerated before the calibration criterion fires.
    include_unflagged : bool
        Also list cells where no criterion fired (ranked last).
    """

    top_k: int = 10
    drop_ci: DropCI = "bootstrap"
    auroc_margin: float = 0.0
    sensitivity_margin: float = 0.0
    ece_binning: Binning = "width"
    ece_tolerance: float = 0.05
    include_unflagged: bool = False

    def __post_init__(self) -> None:
        check_positive_int("top_k", self.top_k)
        check_option("drop_ci", self.drop_ci, ("bootstrap", "delong"))
        check_option("ece_binning", self.ece_binning, BINNINGS)
        for name in ("auroc_margin", "sensitivity_margin", "ece_tolerance"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0.0 <= value < 1.0):
                raise AuditInputError(name, repr(value), "a float in [0, 1)", f"e.g. {name}=0.0")


#: The criteria of the module docstring, in the order they are listed in ``criteria``.
WORST_CRITERIA: tuple[str, ...] = ("auroc_drop", "sensitivity_drop", "calibration")
_CRITERION = "|".join(WORST_CRITERIA)


class WorstCellsTable(OutputSchema):
    """The worst cells, ranked: the evidence of each criterion and whether it fired.

    Only cells with status ``"ok"`` are ranked (their AUROC and sensitivity are defined); the
    reference-comparison columns are ``NaN`` when the reference cell is missing or insufficient,
    the calibration columns when no calibration result was given or its cell is insufficient.
    The column order of the schema is the order of the table.
    """

    rank: Series[int] = pa.Field(ge=1)
    group: Series[str]
    target: Series[str]
    n_criteria: Series[int] = pa.Field(ge=0, le=len(WORST_CRITERIA))
    criteria: Series[str] = pa.Field(str_matches=rf"^$|^({_CRITERION})(;({_CRITERION}))*$")
    harm_score: Series[float] = pa.Field(ge=0.0)
    auroc: Series[float] = probability_field(nullable=False)
    auroc_reference: Series[float] = probability_field()
    auroc_drop: Series[float] = difference_field()
    # The DeLong interval of the drop (drop_ci="delong") is not clipped to [-1, 1].
    auroc_drop_ci_low: Series[float] = pa.Field(nullable=True)
    auroc_drop_ci_high: Series[float] = pa.Field(nullable=True)
    auroc_drop_fired: Series[bool]
    delong_p_adj: Series[float] = probability_field()
    sensitivity: Series[float] = probability_field(nullable=False)
    sensitivity_reference: Series[float] = probability_field()
    sensitivity_drop: Series[float] = difference_field()
    sensitivity_drop_ci_low: Series[float] = difference_field()
    sensitivity_drop_ci_high: Series[float] = difference_field()
    sensitivity_drop_fired: Series[bool]
    ece: Series[float] = probability_field()
    ece_ci_low: Series[float] = probability_field()
    ece_ci_high: Series[float] = probability_field()
    calibration_fired: Series[bool]

    class Config:
        ordered = True


_COLUMNS: tuple[str, ...] = schema_columns(WorstCellsTable)


def worst_cells(
    discrimination: DiscriminationResult,
    calibration: CalibrationResult | None = None,
    *,
    config: WorstCellsConfig | None = None,
) -> pd.DataFrame:
    """Rank cells by evidence of harm against the reference group (see the module docstring).

    Parameters
    ----------
    discrimination : DiscriminationResult
        From :func:`clinaudit.audit.discrimination.audit_discrimination` with a
        ``reference_group`` and ``n_boot > 0``.
    calibration : CalibrationResult, optional
        From :func:`clinaudit.audit.calibration.audit_calibration` on the same cells; without it
        the calibration criterion is not evaluated (its columns are ``NaN``/``False``).
    config : WorstCellsConfig, optional, keyword-only
        Options (defaults: ``WorstCellsConfig()``).

    Returns
    -------
    pandas.DataFrame
        Columns of :class:`WorstCellsTable` (checked before it is returned), at most ``top_k``
        rows, ``rank`` from 1; ``criteria`` lists the fired criteria separated by ``";"``.

    Raises
    ------
    AuditInputError
        If the discrimination result has no reference group or no bootstrap replicates.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 2, 600)
    >>> g = np.repeat(["ref", "a"], 300)
    >>> s = y * np.where(g == "ref", 2.0, 0.2) + rng.normal(size=600)
    >>> from clinaudit.audit.discrimination import audit_discrimination
    >>> d = audit_discrimination(y, s, groups=g, reference_group="ref", n_boot=200)
    >>> worst_cells(d)[["group", "criteria"]].values.tolist()
    [['a', 'auroc_drop;sensitivity_drop']]
    """
    config = WorstCellsConfig() if config is None else config
    ref = discrimination.reference_group
    if ref is None:
        raise AuditInputError(
            "discrimination",
            "a result without reference_group",
            "audit_discrimination(..., reference_group=...)",
            "name the group that holds the reference (vendor held-out) sample",
        )
    if discrimination.n_boot == 0:
        raise AuditInputError(
            "discrimination", "n_boot=0", "bootstrap replicates (n_boot > 0)", "re-run with n_boot"
        )
    if calibration is not None and calibration.n_boot == 0:
        raise AuditInputError(
            "calibration", "n_boot=0", "bootstrap replicates (n_boot > 0)", "re-run with n_boot"
        )
    level = discrimination.ci_level
    table = discrimination.table
    by_key = {(r["group"], r["target"]): r for r in table.to_dict("records")}
    cal_rows: dict[tuple[str, str], dict[str, Any]] = {}
    if calibration is not None:
        cal_rows = {(r["group"], r["target"]): r for r in calibration.table.to_dict("records")}
    ece_col = f"ece_{config.ece_binning}"
    out: list[dict[str, Any]] = []
    for key, row in by_key.items():
        g, target = key
        if g == ref or row["status"] != STATUS_OK:
            continue
        ref_row = by_key.get((ref, target))
        rec: dict[str, Any] = {c: np.nan for c in _COLUMNS}
        rec.update(
            group=g,
            target=target,
            auroc=row["auroc"],
            sensitivity=row["sensitivity"],
            delong_p_adj=row["delong_p_adj"],
            auroc_drop_fired=False,
            sensitivity_drop_fired=False,
            calibration_fired=False,
        )
        fired: list[str] = []
        score = 0.0
        if ref_row is not None and ref_row["status"] == STATUS_OK:
            reps, ref_reps = (
                discrimination.replicates[key],
                discrimination.replicates[(ref, target)],
            )
            rec["auroc_reference"] = ref_row["auroc"]
            rec["auroc_drop"] = ref_row["auroc"] - row["auroc"]
            if config.drop_ci == "bootstrap":
                lo, hi = percentile_ci(ref_reps["auroc"] - reps["auroc"], level)
            else:
                lo, hi = -row["delong_diff_ci_high"], -row["delong_diff_ci_low"]
            rec.update(auroc_drop_ci_low=lo, auroc_drop_ci_high=hi)
            if np.isfinite(lo) and lo > config.auroc_margin:
                fired.append("auroc_drop")
                rec["auroc_drop_fired"] = True
                score += lo - config.auroc_margin
            rec["sensitivity_reference"] = ref_row["sensitivity"]
            rec["sensitivity_drop"] = ref_row["sensitivity"] - row["sensitivity"]
            lo, hi = percentile_ci(ref_reps["sensitivity"] - reps["sensitivity"], level)
            rec.update(sensitivity_drop_ci_low=lo, sensitivity_drop_ci_high=hi)
            if np.isfinite(lo) and lo > config.sensitivity_margin:
                fired.append("sensitivity_drop")
                rec["sensitivity_drop_fired"] = True
                score += lo - config.sensitivity_margin
        cal = cal_rows.get(key)
        if cal is not None and cal["status"] == STATUS_OK:
            rec.update(
                ece=cal[ece_col],
                ece_ci_low=cal[f"{ece_col}_ci_low"],
                ece_ci_high=cal[f"{ece_col}_ci_high"],
            )
            lo = rec["ece_ci_low"]
            if np.isfinite(lo) and lo > config.ece_tolerance:
                fired.append("calibration")
                rec["calibration_fired"] = True
                score += lo - config.ece_tolerance
        rec.update(n_criteria=len(fired), criteria=";".join(fired), harm_score=score)
        if fired or config.include_unflagged:
            out.append(rec)
    out.sort(key=lambda r: (-r["n_criteria"], -r["harm_score"], r["group"], r["target"]))
    out = out[: config.top_k]
    for i, rec in enumerate(out, start=1):
        rec["rank"] = i
    result = pd.DataFrame(out, columns=list(_COLUMNS))
    return validate_table(result.astype({"rank": "int64", "n_criteria": "int64"}), WorstCellsTable)
