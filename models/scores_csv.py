"""Scores-only audits: a vendor's predictions CSV instead of a model.

Format: one header line, then one row per image::

    Image Index,Atelectasis,Cardiomegaly,...,Hernia
    00000001_000.png,0.12,0.80,...,0.01

``Image Index`` holds the image id used by the label table (the NIH column name); there is one
probability column (in ``[0, 1]``, never percent) per finding, named exactly as
``clinaudit.sources.cxr_labels.FINDINGS`` (CheXpert's ``Pleural Effusion`` is accepted for
``Effusion``). Other columns are ignored with a warning.

Validation reports every problem at once, each naming the CSV line (1-based, the header is line 1;
quoted fields must not contain line breaks), the column and the fix: ids missing from or absent in
the label table (both directions), duplicate or empty ids, empty/NaN, non-numeric or out-of-range
probabilities, missing finding columns. Problems are
``clinaudit.validation.errors.QuarantineRecord`` objects (``file`` is the CSV path as given), so
they join the ingest's quarantine table. Any error raises :class:`ScoresError`; warnings are
returned next to the predictions table.
"""

from __future__ import annotations

import csv
import difflib
import os
from collections import defaultdict
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from clinaudit.models.inference import ID_COLUMNS, predictions_frame
from clinaudit.sources.cxr_labels import CHEXPERT_ALIASES, FINDINGS
from clinaudit.sources.landing import sha256_file
from clinaudit.validation.errors import QuarantineRecord

ID_COLUMN = "Image Index"
_NAN_TEXT = {"", "nan", "na", "n/a", "null", "none"}


class ScoresError(ValueError):
    """A scores CSV that cannot be used; ``problems`` lists every problem found."""

    def __init__(self, path: str | os.PathLike[str], problems: list[QuarantineRecord]) -> None:
        self.path = str(path)
        self.problems = tuple(problems)
        errors = [p for p in problems if p.severity == "error"]
        shown = "; ".join(
            f"line {p.row}, column {p.column!r}: {p.message} (fix: {p.fix})"
            if p.row is not None
            else f"column {p.column!r}: {p.message} (fix: {p.fix})"
            for p in errors[:5]
        )
        more = f"; and {len(errors) - 5} more" if len(errors) > 5 else ""
        super().__init__(f"{self.path}: {len(errors)} problem(s) in the scores CSV: {shown}{more}")


class _Collector:
    """Collects problems, keeping at most ``cap`` per (check, column) plus one summary."""

    def __init__(self, site: str, batch: str, file: str, cap: int) -> None:
        self.site, self.batch, self.file, self.cap = site, batch, file, cap
        self.problems: list[QuarantineRecord] = []
        self._counts: dict[tuple[str, str | None], int] = defaultdict(int)
        self._fixes: dict[tuple[str, str | None], tuple[str, str]] = {}

    def add(
        self,
        check: str,
        message: str,
        fix: str,
        *,
        row: int | None = None,
        column: str | None = None,
        severity: Literal["error", "warning"] = "error",
    ) -> None:
        key = (check, column)
        self._counts[key] += 1
        self._fixes[key] = (fix, severity)
        if self._counts[key] <= self.cap:
            self.problems.append(
                QuarantineRecord(
                    self.site, self.batch, self.file, row, column, check, message, fix, severity
                )
            )

    def finish(self) -> list[QuarantineRecord]:
        out = list(self.problems)
        for (check, column), count in self._counts.items():
            if count > self.cap:
                fix, severity = self._fixes[(check, column)]
                out.append(
                    QuarantineRecord(
                        self.site,
                        self.batch,
                        self.file,
                        None,
                        column,
                        check,
                        f"{count - self.cap} more row(s) with the same problem (not listed)",
                        fix,
                        severity,
                    )
                )
        return out

    @property
    def has_errors(self) -> bool:
        return any(p.severity == "error" for p in self.problems)


def _read_raw(path: Path, col: _Collector) -> pd.DataFrame | None:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except FileNotFoundError:
        col.add("read", f"file {path} does not exist", "pass the path of the vendor's scores CSV")
        return None
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, csv.Error) as err:
        col.add(
            "read",
            f"not a readable UTF-8 CSV ({type(err).__name__}: {err})",
            "export the scores as a comma-separated UTF-8 file with one header line",
        )
        return None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _suggest(name: str, columns: list[str]) -> str:
    close = difflib.get_close_matches(name, columns, n=1, cutoff=0.6)
    return f" (did you mean to rename {close[0]!r}?)" if close else ""


def _score_columns(frame: pd.DataFrame, labels: tuple[str, ...], col: _Collector) -> dict[str, str]:
    """label -> CSV column that holds it."""
    columns = list(frame.columns)
    aliases = {finding: alias for alias, finding in CHEXPERT_ALIASES.items()}
    found: dict[str, str] = {}
    for label in labels:
        if label in columns:
            found[label] = label
        elif aliases.get(label) in columns:
            found[label] = aliases[label]
            col.add(
                "alias",
                f"column {aliases[label]!r} read as finding {label!r} (CheXpert name)",
                f"name the column {label!r} to silence this warning",
                column=aliases[label],
                severity="warning",
            )
        else:
            col.add(
                "missing_column",
                f"no probability column for finding {label!r}{_suggest(label, columns)}",
                f"add a column named exactly {label!r} with one probability per image",
                column=label,
            )
    used = set(found.values()) | {ID_COLUMN}
    for extra in (c for c in columns if c not in used):
        col.add(
            "extra_column",
            f"column {extra!r} is not a finding and is ignored",
            "remove it or check its spelling against the finding names",
            column=extra,
            severity="warning",
        )
    return found


def _check_ids(frame: pd.DataFrame, table_ids: pd.Series, col: _Collector) -> pd.Series:
    ids = frame[ID_COLUMN].str.strip()
    lines = pd.Series(np.arange(len(frame)) + 2, index=frame.index)
    for i in np.flatnonzero(ids.eq("").to_numpy()):
        col.add(
            "empty_id",
            "image id is empty",
            "fill in the image id",
            row=int(lines.iloc[i]),
            column=ID_COLUMN,
        )
    first_line: dict[str, int] = {}
    for image_id, line in zip(ids, lines, strict=True):
        if image_id and image_id in first_line:
            col.add(
                "duplicate_id",
                f"image id {image_id!r} already scored on line {first_line[image_id]}",
                "keep one row per image",
                row=int(line),
                column=ID_COLUMN,
            )
        first_line.setdefault(image_id, int(line))
    known = set(table_ids)
    for image_id, line in zip(ids, lines, strict=True):
        if image_id and image_id not in known:
            col.add(
                "unknown_id",
                f"image id {image_id!r} is not in the label table",
                "score only images of this site/batch, or fix the id spelling",
                row=int(line),
                column=ID_COLUMN,
            )
    scored = set(ids)
    for image_id in table_ids:
        if image_id not in scored:
            col.add(
                "unscored_id",
                f"image {image_id!r} of the label table has no score",
                "add a row for every image of the label table",
                column=ID_COLUMN,
            )
    return ids


def _check_probabilities(
    frame: pd.DataFrame, found: dict[str, str], col: _Collector
) -> dict[str, np.ndarray]:
    values: dict[str, np.ndarray] = {}
    for label, column in found.items():
        text = frame[column].str.strip()
        numbers = pd.to_numeric(text, errors="coerce").to_numpy(dtype=float)
        empty = text.str.lower().isin(_NAN_TEXT).to_numpy()
        finite = np.isfinite(numbers)
        in_range = finite & (numbers >= 0.0) & (numbers <= 1.0)
        percent = bool(finite.any() and np.nanmax(np.where(finite, numbers, np.nan)) > 1.0)
        percent = percent and bool(((numbers[finite] >= 0) & (numbers[finite] <= 100)).all())
        for i in np.flatnonzero(~in_range):
            raw = frame[column].iloc[i]
            if empty[i]:
                check, message = "missing_value", f"probability is missing ({raw!r})"
                fix = "score every image; a missing score cannot be audited"
            elif np.isnan(numbers[i]):
                check, message = "not_a_number", f"{raw!r} is not a number"
                fix = "write probabilities as decimal numbers, e.g. 0.37"
            else:
                check, message = "out_of_range", f"probability {raw} is outside [0, 1]"
                fix = (
                    "values look like percentages: divide the column by 100"
                    if percent
                    else "write probabilities between 0 and 1 (apply the sigmoid to logits)"
                )
            col.add(check, message, fix, row=i + 2, column=column)
        values[label] = numbers
    return values


def read_vendor_scores(
    path: str | os.PathLike[str],
    *,
    label_table: pd.DataFrame,
    labels: tuple[str, ...] = FINDINGS,
    site: str,
    batch: str,
    max_per_check: int = 20,
) -> tuple[pd.DataFrame, list[QuarantineRecord]]:
    """Read and validate a vendor scores CSV against the label table it must cover.

    Parameters
    ----------
    path : path
        The CSV (``Image Index`` + one probability column per label).
    label_table : pandas.DataFrame
        Exactly the images the CSV must score (e.g. the validated images of the site), with
        ``image_id``, ``site`` and ``patient_pseudonym``.
    labels : tuple of str
        Findings that must be scored, in output order.
    site, batch : str
        Recorded in every problem (for the quarantine table).
    max_per_check : int
        At most this many problems per (check, column) are listed; the rest are counted.

    Returns
    -------
    predictions : pandas.DataFrame
        Rows in label-table order, validated by the ``Predictions`` schema; ``model_sha256`` is
        the sha256 of the CSV file.
    warnings : list of QuarantineRecord
        Non-blocking problems (ignored columns, alias names).

    Raises
    ------
    ScoresError
        If there is any error; ``.problems`` holds all problems (errors and warnings).
    ValueError
        If ``label_table`` lacks the identifier columns or has duplicate image ids.

    Examples
    --------
    >>> preds, warnings = read_vendor_scores(  # doctest: +SKIP
    ...     "scores.csv", label_table=table, site="site_a", batch="b001")
    """
    path = Path(path)
    missing = [c for c in ID_COLUMNS if c not in label_table.columns]
    if missing:
        raise ValueError(
            f"label_table lacks columns {missing} (has {list(label_table.columns)}); pass the "
            "validated images table"
        )
    duplicated = label_table["image_id"][label_table["image_id"].duplicated()].tolist()
    if duplicated:
        raise ValueError(f"label_table has duplicate image ids {duplicated[:5]}; ingest first")
    col = _Collector(site, batch, str(path), max_per_check)
    frame = _read_raw(path, col)
    if frame is None:
        raise ScoresError(path, col.finish())
    if ID_COLUMN not in frame.columns:
        col.add(
            "missing_column",
            f"no {ID_COLUMN!r} column{_suggest(ID_COLUMN, list(frame.columns))}",
            f"name the image id column {ID_COLUMN!r} (header line 1)",
            column=ID_COLUMN,
        )
        _score_columns(frame, labels, col)
        raise ScoresError(path, col.finish())
    found = _score_columns(frame, labels, col)
    table_ids = label_table["image_id"].astype(str)
    ids = _check_ids(frame, table_ids, col)
    values = _check_probabilities(frame, found, col)
    problems = col.finish()
    if col.has_errors:
        raise ScoresError(path, problems)
    position = pd.Series(np.arange(len(ids)), index=ids.to_numpy())
    order = position.loc[table_ids.to_numpy()].to_numpy()
    probs = np.column_stack([values[label][order] for label in labels])
    table = label_table.reset_index(drop=True)
    return predictions_frame(table, probs, labels, sha256_file(path)), problems
