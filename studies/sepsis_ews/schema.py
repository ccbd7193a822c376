"""Validation of ``sepsis_ews`` stays tables: named row errors, quarantine, a pandera contract.

:func:`validate_stays` runs in two layers:

1. **Explicit row checks** (every failing cell becomes a
   :class:`~clinaudit.validation.errors.QuarantineRecord` naming the file, the 1-based line, the
   column, the value and the fix): missing required values, numbers that do not parse, negative
   values (``negative_value``, e.g. a negative age), physically impossible values
   (``impossible_value``: heart rate outside 0-300, SpO2 outside 0-100, temperature outside
   25-45 C, ...; units in :data:`~clinaudit.sources.sepsis_tables.FEATURE_SPECS`), unknown
   group labels (``unknown_category``), age below 18 (``under_18``) or inconsistent with its
   age band (``age_band_mismatch``), MAP above SBP, non-integer GCS, labels other than 0/1
   (an *empty* label is kept: the stay is unlabelled, its outcome not coded yet; ``sepsis`` is
   then ``<NA>``, and every labelled metric leaves the stay out), malformed months, unsafe
   hospital names, and duplicate stay ids (``duplicate_stay_id``: every copy is quarantined and
   each record lists all lines holding that id).
2. **The pandera contract** :class:`SepsisStays` (``strict``, ``coerce``, lazy) on the rows that
   passed, through :func:`clinaudit.validation.schemas.validate_frame`.

A row with any error is quarantined (kept in the errors table, never dropped silently); the other
rows proceed. A table without the required columns
(:data:`~clinaudit.sources.sepsis_tables.REQUIRED_COLUMNS`: what a scores-only audit needs) cannot
be validated at all and raises :class:`StaysStructureError` (a
:class:`~clinaudit.validation.errors.BatchStructureError`) with one record per missing column. An
optional column (:data:`~clinaudit.sources.sepsis_tables.OPTIONAL_COLUMNS`) that is present is
checked like any other; one that is absent stays absent from the valid rows, with one
``absent_column`` warning (a model-package audit then names the card features it lacks).
"""

from __future__ import annotations

import difflib
import re
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from clinaudit.audit.schemas import schema_columns, validate_table
from clinaudit.sources.landing import LandingError, validate_name
from clinaudit.sources.sepsis_tables import (
    AGE_BAND_LOWER,
    CATEGORIES,
    FEATURES,
    FORMAT_COLUMNS,
    LABEL,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    REQUIRED_VALUES,
    SPEC_BY_NAME,
    STAY_COLUMNS,
    WINDOW_COLUMNS,
    age_band,
)
from clinaudit.validation.errors import (
    BatchStructureError,
    QuarantineRecord,
    QuarantineTable,
    records_to_frame,
)
from clinaudit.validation.schemas import validate_frame

_MONTH_RE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
_NA_TEXT = {"", "na", "nan", "null", "none", "n/a"}
_TRUE_TEXT = {"true", "1", "yes"}
_FALSE_TEXT = {"false", "0", "no"}


class StayQuarantine(QuarantineTable):
    """The study's quarantine records: :class:`~clinaudit.validation.errors.QuarantineTable`
    plus the offending ``value`` as text (``""`` when a record is not about one value) and the
    ``stay_id`` of the row it is about (``""`` when it is about no row, or the row has no id):
    a score of a quarantined stay is set aside, not taken for an unknown id.

    The errors of :func:`validate_stays`, every ingest record
    (:func:`~clinaudit.studies.sepsis_ews.ingest.quarantine_frame`), the stays left out as landed
    at several hospitals and the scores of stays nobody landed.
    """

    value: Series[str]
    stay_id: Series[str]


#: Columns of the errors table: the quarantine record columns plus the offending value.
ERROR_COLUMNS: tuple[str, ...] = schema_columns(StayQuarantine)


def _feature(name: str) -> object:
    spec = SPEC_BY_NAME[name]
    required = name in REQUIRED_COLUMNS
    return pa.Field(ge=spec.low, le=spec.high, nullable=not required, required=required)


def _category(name: str) -> object:
    return pa.Field(isin=list(CATEGORIES[name]))


class SepsisStays(pa.DataFrameModel):
    """Validated stays table: one row per ICU stay, canonical columns and order; an optional
    column (:data:`~clinaudit.sources.sepsis_tables.OPTIONAL_COLUMNS`) the sender left out stays
    absent."""

    stay_id: Series[str] = pa.Field(unique=True, str_length={"min_value": 1})
    hospital: Series[str] = pa.Field(str_length={"min_value": 1})
    admit_month: Series[str] = pa.Field(str_matches=_MONTH_RE.pattern)
    window_hours: Series[float] = pa.Field(gt=0.0, le=72.0)
    window_end_hour: Series[float] = pa.Field(ge=0.0, nullable=True, required=False)
    sex: Series[str] = _category("sex")
    race_ethnicity: Series[str] = _category("race_ethnicity")
    age_band: Series[str] = _category("age_band")
    heart_rate: Series[float] = _feature("heart_rate")
    resp_rate: Series[float] = _feature("resp_rate")
    temperature_c: Series[float] = _feature("temperature_c")
    sbp: Series[float] = _feature("sbp")
    map: Series[float] = _feature("map")
    spo2: Series[float] = _feature("spo2")
    wbc: Series[float] = _feature("wbc")
    lactate: Series[float] = _feature("lactate")
    creatinine: Series[float] = _feature("creatinine")
    bilirubin: Series[float] = _feature("bilirubin")
    platelets: Series[float] = _feature("platelets")
    gcs: Series[float] = _feature("gcs")
    age: Series[float] = pa.Field(ge=18.0, le=SPEC_BY_NAME["age"].high)
    comorbidity_index: Series[float] = _feature("comorbidity_index")
    #: 0/1; ``<NA>`` for an unlabelled stay (outcome not coded yet): nullable integer.
    sepsis: Series[pd.Int64Dtype] = pa.Field(isin=[0, 1], nullable=True)
    simulated: Series[bool]
    source_row: Series[int] = pa.Field(ge=2)

    class Config:
        strict = True
        coerce = True


assert tuple(SepsisStays.to_schema().columns) == STAY_COLUMNS, "schema and format disagree"


class StaysStructureError(BatchStructureError):
    """The stays table lacks required columns; ``records`` names each one."""

    def __init__(self, source: str, records: Sequence[QuarantineRecord]) -> None:
        super().__init__(records)
        shown = "; ".join(f"{r.column!r}: {r.message}" for r in self.records[:8])
        self.args = (
            f"{source}: the stays table cannot be validated, {len(self.records)} required "
            f"column(s) missing: {shown}. Fix: {self.records[0].fix}",
        )


class _Problems:
    """Row-level problems: records, their values and the positions of rows with errors."""

    def __init__(self, source: str, site: str, batch: str, lines: np.ndarray) -> None:
        self.source, self.site, self.batch, self.lines = source, site, batch, lines
        self.records: list[QuarantineRecord] = []
        self.values: list[str] = []
        self.bad_rows: set[int] = set()

    def add(
        self, pos: int | None, column: str | None, check: str, message: str, fix: str, value: object
    ) -> None:
        line = None if pos is None else int(self.lines[pos])
        self.records.append(
            QuarantineRecord(self.site, self.batch, self.source, line, column, check, message, fix)
        )
        self.values.append(f"{value:g}" if isinstance(value, float) else str(value))
        if pos is not None:
            self.bad_rows.add(pos)

    def warn(self, column: str, check: str, message: str, fix: str) -> None:
        self.records.append(
            QuarantineRecord(
                self.site, self.batch, self.source, None, column, check, message, fix, "warning"
            )
        )
        self.values.append("")


def _suggest(value: str, allowed: Sequence[str]) -> str:
    lower = {a.lower(): a for a in allowed}
    close = lower.get(value.lower()) or lower.get(value[:1].lower() if len(value) > 1 else "")
    close = close or next(iter(difflib.get_close_matches(value, list(allowed), n=1)), None)
    return f" (did you mean {close!r}?)" if close else ""


def _text(column: pd.Series) -> pd.Series:
    return column.astype(object).where(column.notna(), "").astype(str).str.strip()


def _check_columns(frame: pd.DataFrame, source: str, site: str, batch: str) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if not missing:
        return
    unknown = [str(c) for c in frame.columns if c not in STAY_COLUMNS]
    records = []
    for column in missing:
        close = [c for c in unknown if c.lower().startswith(column.lower()[:4])]
        close = close or difflib.get_close_matches(column, unknown, n=1)
        hint = f" (found {close[0]!r}: rename it)" if close else ""
        records.append(
            QuarantineRecord(
                site,
                batch,
                source,
                None,
                column,
                "missing_column",
                f"required column {column!r} is absent{hint}",
                f"add every required column, named exactly: {list(REQUIRED_COLUMNS)} "
                "(docs/sepsis_formats.md; the model features but age are optional)",
            )
        )
    raise StaysStructureError(source, records)


def _absent_optional(frame: pd.DataFrame, p: _Problems) -> None:
    """One warning per optional format column the table leaves out (it stays absent)."""
    for column in (c for c in OPTIONAL_COLUMNS if c in FORMAT_COLUMNS and c not in frame):
        p.warn(
            column,
            "absent_column",
            f"optional column {column!r} is absent: a scores-only audit proceeds without it",
            f"add {column!r} if the audit uses a model package whose card lists it "
            "(docs/sepsis_formats.md)",
        )


def _check_ids(text: pd.DataFrame, p: _Problems) -> None:
    ids = text["stay_id"]
    lines_by_id: dict[str, list[int]] = defaultdict(list)
    for pos, stay in enumerate(ids):
        if stay:
            lines_by_id[stay].append(int(p.lines[pos]))
    for pos in np.flatnonzero(ids.eq("").to_numpy()):
        p.add(pos, "stay_id", "missing_value", "stay id is empty", "fill in the stay id", "")
    for pos in np.flatnonzero(ids.duplicated(keep=False).to_numpy() & ids.ne("").to_numpy()):
        stay = ids.iloc[pos]
        p.add(
            pos,
            "stay_id",
            "duplicate_stay_id",
            f"stay id {stay!r} appears on lines {lines_by_id[stay]}",
            "keep exactly one row per stay (all copies are quarantined until fixed)",
            stay,
        )
    for pos in np.flatnonzero(text["hospital"].eq("").to_numpy()):
        p.add(pos, "hospital", "missing_value", "hospital is empty", "fill in the hospital", "")
    for name in sorted(set(text["hospital"]) - {""}):
        try:
            validate_name("site", name)
        except LandingError as err:
            for pos in np.flatnonzero(text["hospital"].eq(name).to_numpy()):
                p.add(pos, "hospital", "unsafe_name", err.message, err.fix, name)
    for pos in np.flatnonzero(~text["admit_month"].str.fullmatch(_MONTH_RE.pattern).to_numpy()):
        value = text["admit_month"].iloc[pos]
        p.add(pos, "admit_month", "bad_month", f"{value!r} is not YYYY-MM", "e.g. 2024-03", value)


def _check_categories(text: pd.DataFrame, p: _Problems) -> None:
    for column, allowed in CATEGORIES.items():
        values = text[column]
        for pos in np.flatnonzero(~values.isin(allowed).to_numpy()):
            value = values.iloc[pos]
            if value == "":
                fix = f"use one of {list(allowed)}"
                p.add(pos, column, "missing_value", f"{column} is empty", fix, "")
            else:
                p.add(
                    pos,
                    column,
                    "unknown_category",
                    f"{value!r} is not an allowed {column} label{_suggest(value, allowed)}",
                    f"map it to one of {list(allowed)} (docs/sepsis_formats.md)",
                    value,
                )


def _numbers(raw: pd.Series, text: pd.Series, column: str, p: _Problems) -> pd.Series:
    """Parse a numeric column; report unparseable and missing required values."""
    if pd.api.types.is_bool_dtype(raw):
        raw = raw.astype(float)
    unparsed = np.zeros(len(raw), dtype=bool)
    if pd.api.types.is_numeric_dtype(raw):
        values = pd.to_numeric(raw, errors="coerce").astype(float)
    else:
        blank = text.str.lower().isin(_NA_TEXT)
        values = pd.to_numeric(text.where(~blank, ""), errors="coerce").astype(float)
        unparsed = (values.isna() & ~blank).to_numpy()
        for pos in np.flatnonzero(unparsed):
            value = text.iloc[pos]
            p.add(
                pos,
                column,
                "not_a_number",
                f"{value!r} is not a number",
                "write a plain decimal number (dot as decimal separator), or leave it blank",
                value,
            )
    values = values.where(np.isfinite(values))
    # An empty sepsis label is not missing data: the stay's outcome is not coded yet (unlabelled).
    if column in REQUIRED_VALUES or column == "window_hours":
        for pos in np.flatnonzero(values.isna().to_numpy() & ~unparsed):
            p.add(pos, column, "missing_value", f"{column} is missing", "fill it in", "")
    return values


def _check_range(values: pd.Series, column: str, p: _Problems) -> None:
    spec = SPEC_BY_NAME[column]
    for pos in np.flatnonzero((values < 0).to_numpy()):
        v = values.iloc[pos]
        p.add(pos, column, "negative_value", f"{column} {v:g} is negative", "correct the value", v)
    outside = ((values >= 0) & ((values < spec.low) | (values > spec.high))).to_numpy()
    for pos in np.flatnonzero(outside):
        v = values.iloc[pos]
        hint = f" ({spec.unit_hint})" if spec.unit_hint else ""
        p.add(
            pos,
            column,
            "impossible_value",
            f"{column} {v:g} is outside the possible range [{spec.low:g}, {spec.high:g}] "
            f"{spec.unit}",
            f"correct the value or its unit{hint}; leave it blank if not measured",
            v,
        )


def _check_numbers(frame: pd.DataFrame, text: pd.DataFrame, p: _Problems) -> pd.DataFrame:
    columns = [c for c in (*FEATURES, *WINDOW_COLUMNS, LABEL) if c in text]
    numbers = pd.DataFrame({c: _numbers(frame[c], text[c], c, p) for c in columns})
    for column in (c for c in FEATURES if c in numbers):
        _check_range(numbers[column], column, p)
    hours = numbers["window_hours"]
    for pos in np.flatnonzero(((hours <= 0) | (hours > 72)).to_numpy()):
        v = hours.iloc[pos]
        p.add(
            pos,
            "window_hours",
            "impossible_value",
            f"window of {v:g} h is outside (0, 72] h",
            "write the prediction window length in hours",
            v,
        )
    end = numbers.get("window_end_hour", pd.Series(np.nan, index=numbers.index))
    for pos in np.flatnonzero((end < 0).to_numpy()):
        v = end.iloc[pos]
        p.add(
            pos,
            "window_end_hour",
            "negative_value",
            f"window end {v:g} h is negative",
            "write hours from ICU admission to the end of the window",
            v,
        )
    label = numbers[LABEL]
    for pos in np.flatnonzero((label.notna() & ~label.isin([0.0, 1.0])).to_numpy()):
        v = label.iloc[pos]
        p.add(pos, LABEL, "invalid_label", f"sepsis {v:g} is not 0 or 1", "write 1 or 0", v)
    return numbers


def _check_consistency(numbers: pd.DataFrame, text: pd.DataFrame, p: _Problems) -> None:
    age = numbers["age"]
    for pos in np.flatnonzero(((age >= 0) & (age < 18)).to_numpy()):
        v = age.iloc[pos]
        p.add(
            pos,
            "age",
            "under_18",
            f"age {v:g} is below 18",
            "the study covers adult stays only: remove the row or correct the age",
            v,
        )
    expected = age_band(age.where((age >= 18) & (age <= SPEC_BY_NAME["age"].high)))
    given = text["age_band"]
    mismatch = expected.ne("") & given.isin(list(AGE_BAND_LOWER)) & expected.ne(given)
    for pos in np.flatnonzero(mismatch.to_numpy()):
        p.add(
            pos,
            "age_band",
            "age_band_mismatch",
            f"age {age.iloc[pos]:g} lies in band {expected.iloc[pos]!r}, not {given.iloc[pos]!r}",
            "correct the age or the age band",
            given.iloc[pos],
        )
    gcs = numbers.get("gcs", pd.Series(np.nan, index=numbers.index))
    for pos in np.flatnonzero((gcs.notna() & (gcs != gcs.round())).to_numpy()):
        v = gcs.iloc[pos]
        p.add(pos, "gcs", "not_integer", f"GCS {v:g} is not a whole number", "write 3-15", v)
    absent = pd.Series(np.nan, index=numbers.index)
    sbp, mean_ap = numbers.get("sbp", absent), numbers.get("map", absent)
    for pos in np.flatnonzero((mean_ap > sbp).to_numpy()):
        v = mean_ap.iloc[pos]
        p.add(
            pos,
            "map",
            "map_above_sbp",
            f"MAP {v:g} exceeds SBP {sbp.iloc[pos]:g}",
            "check that the columns are not swapped (the window minimum of MAP is below SBP's)",
            v,
        )


def _simulated(frame: pd.DataFrame, p: _Problems) -> pd.Series:
    if "simulated" not in frame.columns:
        return pd.Series(False, index=frame.index)
    raw = frame["simulated"]
    if pd.api.types.is_bool_dtype(raw):
        return raw.astype(bool)
    text = _text(raw).str.lower()
    for pos in np.flatnonzero(~text.isin(_TRUE_TEXT | _FALSE_TEXT).to_numpy()):
        v = text.iloc[pos]
        p.add(pos, "simulated", "not_a_boolean", f"{v!r} is not true/false", "write true/false", v)
    return text.isin(_TRUE_TEXT)


def validate_stays(
    frame: pd.DataFrame, *, source: str = "<frame>", site: str = "", batch: str = ""
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate a stays table; quarantine bad rows with named errors.

    Parameters
    ----------
    frame : pandas.DataFrame
        Output of :func:`clinaudit.sources.sepsis_tables.read_stays` (text or typed columns) or
        a simulator table. ``source_row`` gives each row's line; without it row ``k`` (0-based)
        is line ``k + 2``.
    source : str
        File named in every error (e.g. the CSV path).
    site, batch : str
        Recorded in every error (the landing site and batch, when known).

    Returns
    -------
    valid : pandas.DataFrame
        Rows without errors, columns ``STAY_COLUMNS`` less the optional ones the input lacks
        (typed, validated by :class:`SepsisStays`; ``simulated`` is False when the input has no
        such column).
    errors : pandas.DataFrame
        One row per problem, :class:`StayQuarantine` (quarantine record + ``value``);
        ``severity == "error"`` rows removed their table row, warnings (ignored or absent
        optional columns) did not; ``stay_id`` is the id of the row a record is about.

    Raises
    ------
    StaysStructureError
        If required columns are missing (one record per column, with the fix).

    Examples
    --------
    >>> valid, errors = validate_stays(read_stays("s.csv"), source="s.csv")  # doctest: +SKIP
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"frame must be a pandas DataFrame, got {type(frame).__name__}")
    frame = frame.rename(columns=lambda c: str(c).strip()).reset_index(drop=True)
    _check_columns(frame, source, site, batch)
    if "source_row" in frame.columns:
        lines = pd.to_numeric(frame["source_row"], errors="coerce").fillna(0).astype(int)
        lines = lines.to_numpy()
    else:
        lines = np.arange(len(frame)) + 2
    p = _Problems(source, site, batch, lines)
    for extra in (c for c in frame.columns if c not in STAY_COLUMNS):
        p.warn(
            extra,
            "extra_column",
            f"column {extra!r} is not in the format and is ignored",
            "remove it, or check its spelling against docs/sepsis_formats.md",
        )
    _absent_optional(frame, p)
    text = pd.DataFrame({c: _text(frame[c]) for c in FORMAT_COLUMNS if c in frame})
    _check_ids(text, p)
    _check_categories(text, p)
    numbers = _check_numbers(frame, text, p)
    _check_consistency(numbers, text, p)
    simulated = _simulated(frame, p)
    good = np.array(sorted(set(range(len(frame))) - p.bad_rows), dtype=int)
    typed = pd.DataFrame({c: text[c] for c in ("stay_id", "hospital", "admit_month", *CATEGORIES)})
    typed = typed.assign(**{c: numbers[c] for c in numbers}, simulated=simulated, source_row=lines)
    typed = typed.iloc[good].loc[:, [c for c in STAY_COLUMNS if c in typed]]
    typed[LABEL] = typed[LABEL].astype("Int64")
    valid, schema_records = validate_frame(SepsisStays, typed, site=site, batch=batch, file=source)
    records = p.records + schema_records
    errors = records_to_frame(records)
    errors["value"] = pd.Series(p.values + [""] * len(schema_records), dtype=object)
    id_of_line = dict(zip(lines.tolist(), text["stay_id"], strict=True))
    errors["stay_id"] = [id_of_line.get(r, "") if pd.notna(r) else "" for r in errors["row"]]
    errors = errors.sort_values("row", kind="stable", na_position="first")
    errors = errors.loc[:, list(ERROR_COLUMNS)].reset_index(drop=True)
    return valid.reset_index(drop=True), validate_table(errors, StayQuarantine)
