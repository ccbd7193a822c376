"""Row-level parsing shared by the label-table layouts (NIH and CheXpert).

A layout reader decodes the file with :func:`read_records`, checks its header with
:func:`check_columns`, walks the padded records (:func:`padded_records`) parsing the common fields
(:func:`parse_age_sex`, :func:`parse_view`) into a :class:`RowCollector`, and finally turns the
collected rows into the canonical label table (:func:`mark_duplicates`, :func:`canonical_frame`).
Every problem becomes a :class:`~clinaudit.validation.errors.QuarantineRecord` naming the file,
the 1-based line, the column and the fix.
"""

from __future__ import annotations

import csv
import difflib
import io
import math
import re
from collections.abc import Iterator
from typing import Literal

import pandas as pd

from clinaudit.sources.cxr_labels import FINDINGS
from clinaudit.validation.errors import BatchStructureError, QuarantineRecord

CANONICAL_COLUMNS: tuple[str, ...] = (
    "image_id",
    "file",
    "patient_id",
    "follow_up",
    "age",
    "sex",
    "view_position",
    "source_row",
    *FINDINGS,
)

_SEX = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F", "U": "U", "UNKNOWN": "U"}
_AGE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([YMWD]?)\s*$", re.IGNORECASE)
_AGE_UNIT_YEARS = {"": 1.0, "Y": 1.0, "M": 1.0 / 12.0, "W": 7.0 / 365.25, "D": 1.0 / 365.25}
_VIEW_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,15}$")


class RowCollector:
    """Collects canonical rows and quarantine records while a table is parsed."""

    def __init__(self, site: str, batch: str, file: str) -> None:
        self.site, self.batch, self.file = site, batch, file
        self.records: list[QuarantineRecord] = []
        self.rows: list[dict[str, object]] = []
        self.referenced: set[str] = set()

    def record(
        self,
        line: int | None,
        column: str | None,
        check: str,
        message: str,
        fix: str,
        severity: Literal["error", "warning"] = "error",
        file: str | None = None,
    ) -> None:
        """Append a quarantine record for ``line`` / ``column`` (``file`` defaults to the table)."""
        self.records.append(
            QuarantineRecord(
                self.site,
                self.batch,
                file or self.file,
                line,
                column,
                check,
                message,
                fix,
                severity,
            )
        )


def structure_error(
    site: str, batch: str, file: str, check: str, message: str, fix: str, column: str | None = None
) -> BatchStructureError:
    """A :class:`BatchStructureError` holding one file-level (row-less) error record."""
    return BatchStructureError(
        [QuarantineRecord(site, batch, file, None, column, check, message, fix, "error")]
    )


def read_records(
    data: bytes, *, site: str, batch: str, file: str
) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Decode and split a CSV; returns the stripped header and ``(start line, fields)`` records."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise structure_error(
            site,
            batch,
            file,
            "unreadable_table",
            f"label table is not UTF-8 (invalid byte at offset {err.start})",
            "re-export the label table as UTF-8 CSV",
        ) from err
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    records: list[tuple[int, list[str]]] = []
    header: list[str] | None = None
    line = 1
    try:
        for fields in reader:
            start = line
            line = reader.line_num + 1
            if not fields or all(not f.strip() for f in fields):
                continue
            if header is None:
                header = [f.strip() for f in fields]
                continue
            records.append((start, fields))
    except csv.Error as err:
        raise structure_error(
            site,
            batch,
            file,
            "unreadable_table",
            f"label table is not valid CSV near line {reader.line_num} ({err})",
            "re-export the label table as comma-separated CSV with '\"' quoting",
        ) from err
    if header is None:
        raise structure_error(
            site,
            batch,
            file,
            "empty_table",
            "label table is empty (no header line)",
            "export the label table with its header line and one row per image",
        )
    return header, records


def check_columns(
    header: list[str], required: tuple[str, ...], *, site: str, batch: str, file: str
) -> None:
    """Raise a :class:`BatchStructureError` for duplicated or missing ``required`` columns.

    A missing column's record names the closest present column, or the delimiter the file seems
    to use when the whole header is one field.
    """
    duplicated = sorted({h for h in header if h and header.count(h) > 1})
    problems = []
    if duplicated:
        problems.append(
            QuarantineRecord(
                site,
                batch,
                file,
                1,
                duplicated[0],
                "duplicate_column",
                f"column names {duplicated} appear more than once in the header",
                "give every column a unique name",
                "error",
            )
        )
    present = [h for h in header if h]
    for name in required:
        if name in header:
            continue
        close = difflib.get_close_matches(
            name, [p for p in present if p not in required], n=1, cutoff=0.5
        )
        hint = f"; the closest present column is {close[0]!r}" if close else ""
        delim = next((d for d in (";", "\t", "|") if len(present) == 1 and d in present[0]), None)
        fix = (
            f"rename {close[0]!r} to {name!r}" if close else f"add the column {name!r}"
        ) + " in the header"
        if delim:
            fix = f"the file seems to use {delim!r} as delimiter: export it with commas"
        problems.append(
            QuarantineRecord(
                site,
                batch,
                file,
                1,
                name,
                "missing_column",
                f"required column {name!r} is missing{hint} (expected columns: {list(required)}, "
                f"present: {present})",
                fix,
                "error",
            )
        )
    if problems:
        raise BatchStructureError(problems)


def padded_records(
    records: list[tuple[int, list[str]]], width: int, acc: RowCollector
) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line, fields)`` padded with blanks to the header's ``width``.

    A record with more non-blank fields than the header has columns is quarantined
    (``field_count``) and skipped.
    """
    for line, raw in records:
        if len(raw) > width and any(f.strip() for f in raw[width:]):
            acc.record(
                line,
                None,
                "field_count",
                f"row has {len(raw)} fields but the header has {width}",
                "quote fields that contain commas, or remove the extra fields",
            )
            continue
        yield line, [*raw, *[""] * (width - len(raw))]


def _parse_age(text: str) -> tuple[float | None, str]:
    m = _AGE_RE.match(text)
    if m is None:
        return None, f"age {text!r} is not a number of years (or the NIH form '058Y')"
    value = float(m.group(1)) * _AGE_UNIT_YEARS[m.group(2).upper()]
    if not math.isfinite(value) or not 0.0 <= value <= 120.0:
        return None, f"age {text!r} = {value:.4g} years is outside [0, 120]"
    return value, ""


def parse_age_sex(
    acc: RowCollector,
    line: int,
    *,
    age_text: str,
    age_col: str,
    sex_text: str,
    sex_col: str,
) -> tuple[float | None, str | None, bool]:
    """Parse age (years, or the NIH form ``058Y``) and sex; returns ``(age, sex, ok)``."""
    ok = True
    age, why = _parse_age(age_text)
    if age is None:
        ok = False
        acc.record(
            line, age_col, "age_range", why, "write the age in years as a number in [0, 120]"
        )
    sex = _SEX.get(sex_text.strip().upper())
    if sex is None:
        ok = False
        acc.record(
            line,
            sex_col,
            "sex_domain",
            f"sex {sex_text!r} is not one of M, F, U (Male, Female, Unknown are accepted)",
            "map the value to M, F or U (U for unknown)",
        )
    return age, sex, ok


def parse_view(acc: RowCollector, line: int, text: str, column: str) -> tuple[str | None, bool]:
    """Normalise a view position (blank -> ``UNKNOWN``, a warning); returns ``(view, ok)``."""
    view = re.sub(r"[\s-]+", "_", text.strip().upper())
    if not view:
        acc.record(
            line,
            column,
            "view_missing",
            "view position is blank; recorded as 'UNKNOWN'",
            "fill in the view position (PA, AP, LL, LATERAL, ...)",
            "warning",
        )
        return "UNKNOWN", True
    if not _VIEW_RE.match(view):
        acc.record(
            line,
            column,
            "view_domain",
            f"view position {text!r} is not a short code such as PA, AP, LL or LATERAL",
            "write the view position as a code of letters, digits and '_' (max 16 characters)",
        )
        return None, False
    return view, True


def mark_duplicates(acc: RowCollector) -> list[dict[str, object]]:
    """Quarantine every copy of a duplicated image id; return the other collected rows."""
    lines: dict[str, list[int]] = {}
    for row in acc.rows:
        lines.setdefault(str(row["image_id"]), []).append(int(row["source_row"]))
    dup = {k: v for k, v in lines.items() if len(v) > 1}
    for image_id, where in dup.items():
        for line in where:
            others = [w for w in where if w != line]
            acc.record(
                line,
                None,
                "duplicate_image_id",
                f"image id {image_id!r} also appears on line(s) {others}; every copy is "
                "quarantined because the labels cannot be told apart",
                "keep exactly one row per image in the label table",
            )
    return [r for r in acc.rows if str(r["image_id"]) not in dup]


def canonical_frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    """The collected rows as a frame with the canonical columns and dtypes."""
    frame = pd.DataFrame(rows, columns=list(CANONICAL_COLUMNS))
    frame = frame.astype(
        {
            "image_id": str,
            "file": str,
            "patient_id": str,
            "follow_up": "int64",
            "age": "float64",
            "sex": str,
            "view_position": str,
            "source_row": "int64",
            **dict.fromkeys(FINDINGS, "float64"),
        }
    )
    return frame.reset_index(drop=True)
