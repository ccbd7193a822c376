"""Scores-only audits: a vendor's scores CSV instead of a model, read by one study-neutral core.

:func:`read_scores` is the reader every study uses: one header line, an id column and one
probability column per output, one row per scored unit (image, stay, ...). It reports every problem
at once, each naming the CSV line (1-based, the header is line 1; quoted fields must not contain
line breaks), the column and the fix: missing columns, empty or duplicate ids, ids absent from the
table the file must cover and units of that table without a score (both directions), and
empty/NaN, non-numeric or out-of-range probabilities. Problems are
``clinaudit.validation.errors.QuarantineRecord`` objects (``file`` is the CSV path as given), so
they join an ingest's quarantine table. Any error raises :class:`ScoresError`; warnings are returned
with the scores. A study names its id column and words in :class:`IdRules`; with
``others="ignore"`` one file may serve several partitions (rows of ids outside the partition are
skipped and counted: the caller must check them against every partition). Rows of the ids passed
as ``set_aside`` (units quarantined at ingest) are set aside and counted, never unknown ids.

:func:`clinaudit.models.vendor_scores.read_vendor_scores` reads the ``multisite_cxr`` format
(``Image Index`` + one probability column per finding) with this core.
"""

from __future__ import annotations

import csv
import difflib
import os
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from clinaudit.sources.landing import sha256_file
from clinaudit.validation.errors import QuarantineRecord

__all__ = [
    "IdRules",
    "ProblemCollector",
    "ScoresError",
    "ScoresRead",
    "read_scores",
    "score_ids",
    "suggest_column",
]

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


class ProblemCollector:
    """Collects problems, keeping at most ``cap`` per (check, column) plus one summary each."""

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
        """Every listed problem, then one record per (check, column) counting the unlisted."""
        out = list(self.problems)
        for (check, column), count in self._counts.items():
            if count > self.cap:
                fix, severity = self._fixes[(check, column)]
                message = f"{count - self.cap} more row(s) with the same problem (not listed)"
                out.append(
                    QuarantineRecord(self.site, self.batch, self.file, None, column, check,
                                     message, fix, severity)  # type: ignore[arg-type]
                )  # fmt: skip
        return out

    @property
    def has_errors(self) -> bool:
        return any(p.severity == "error" for p in self.problems)


@dataclass(frozen=True)
class IdRules:
    """How a study's scores file identifies what it scores, and the words of its problems.

    Attributes
    ----------
    column : str
        Header name of the id column (``"Image Index"``, ``"stay_id"``).
    unit, table : str
        What one row scores and the table the file must cover (``"image"``, ``"label table"``).
    missing_fix, unknown_fix, unscored_fix : str
        Fixes of a missing id column, an id absent from the table, a unit without a score.
    others : {"error", "ignore"}
        An id absent from the table is an error (one file per partition), or the row is skipped
        and counted (one file serving several partitions; the caller checks those ids against
        every partition).
    """

    column: str
    unit: str
    table: str
    missing_fix: str
    unknown_fix: str
    unscored_fix: str
    others: Literal["error", "ignore"] = "error"


@dataclass(frozen=True)
class ScoresRead:
    """A validated scores file: ``values[label]`` aligned with the expected ids, the warnings,
    the file's sha256, the rows skipped as ids of other partitions (``others="ignore"``) and the
    rows set aside as ids in ``set_aside`` (``set_aside_ids``: those ids, in file order)."""

    values: Mapping[str, np.ndarray]
    warnings: tuple[QuarantineRecord, ...]
    sha256: str
    n_other_rows: int = 0
    set_aside_ids: tuple[str, ...] = ()

    @property
    def n_set_aside(self) -> int:
        """Rows set aside (ids quarantined at ingest)."""
        return len(self.set_aside_ids)


def suggest_column(name: str, columns: list[str]) -> str:
    """``" (did you mean to rename 'X'?)"`` for the closest column name, else ``""``."""
    close = difflib.get_close_matches(name, columns, n=1, cutoff=0.6)
    return f" (did you mean to rename {close[0]!r}?)" if close else ""


def _read_raw(path: Path, col: ProblemCollector) -> pd.DataFrame | None:
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


def _exact_columns(
    labels: tuple[str, ...], rules: IdRules
) -> Callable[[list[str], ProblemCollector], dict[str, str]]:
    """Column resolver: every label is a column of that exact name; other columns are ignored."""

    def resolve(columns: list[str], col: ProblemCollector) -> dict[str, str]:
        for name in labels:
            if name not in columns:
                col.add(
                    "missing_column",
                    f"no {name!r} column{suggest_column(name, columns)}",
                    f"name the header columns {[rules.column, *labels]}",
                    column=name,
                )
        return {name: name for name in labels if name in columns}

    return resolve


def _check_ids(
    frame: pd.DataFrame,
    expected: pd.Series,
    col: ProblemCollector,
    rules: IdRules,
    set_aside: frozenset[str],
) -> tuple[pd.Series, np.ndarray]:
    """Stripped ids of the file, and which rows score an expected id."""
    ids = frame[rules.column].str.strip()
    lines = np.arange(len(frame)) + 2
    for i in np.flatnonzero(ids.eq("").to_numpy()):
        col.add(
            "empty_id",
            f"{rules.unit} id is empty",
            f"fill in the {rules.unit} id",
            row=int(lines[i]),
            column=rules.column,
        )
    first_line: dict[str, int] = {}
    for unit_id, line in zip(ids, lines, strict=True):
        if unit_id and unit_id in first_line:
            col.add(
                "duplicate_id",
                f"{rules.unit} id {unit_id!r} already scored on line {first_line[unit_id]}",
                f"keep one row per {rules.unit}",
                row=int(line),
                column=rules.column,
            )
        first_line.setdefault(unit_id, int(line))
    known = set(expected)
    used = ids.isin(known).to_numpy()
    if rules.others == "error":
        for unit_id, line in zip(ids, lines, strict=True):
            if unit_id and unit_id not in known and unit_id not in set_aside:
                col.add(
                    "unknown_id",
                    f"{rules.unit} id {unit_id!r} is not in the {rules.table}",
                    rules.unknown_fix,
                    row=int(line),
                    column=rules.column,
                )
    for unit_id in expected:
        if unit_id not in first_line:
            col.add(
                "unscored_id",
                f"{rules.unit} {unit_id!r} of the {rules.table} has no score",
                rules.unscored_fix,
                column=rules.column,
            )
    return ids, used


def _check_probabilities(
    frame: pd.DataFrame,
    found: Mapping[str, str],
    rows: np.ndarray,
    col: ProblemCollector,
    unit: str,
) -> dict[str, np.ndarray]:
    """Probabilities of every label (all rows); problems are reported for ``rows`` only."""
    values: dict[str, np.ndarray] = {}
    for label, column in found.items():
        text = frame[column].str.strip()
        numbers = pd.to_numeric(text, errors="coerce").to_numpy(dtype=float)
        empty = text.str.lower().isin(_NAN_TEXT).to_numpy()
        finite = np.isfinite(numbers) & rows
        in_range = np.isfinite(numbers) & (numbers >= 0.0) & (numbers <= 1.0)
        shown = numbers[finite]
        # The whole column on a 0-100 scale (most values above 1): percentages.
        percent = bool(
            shown.size and np.mean(shown > 1.0) > 0.5 and ((shown >= 0) & (shown <= 100)).all()
        )
        for i in np.flatnonzero(~in_range & rows):
            raw = frame[column].iloc[i]
            if empty[i]:
                check, message = "missing_value", f"probability is missing ({raw!r})"
                fix = f"score every {unit}; a missing score cannot be audited"
            elif np.isnan(numbers[i]):
                check, message = "not_a_number", f"{raw!r} is not a number"
                fix = "write probabilities as decimal numbers, e.g. 0.37"
            else:
                check, message = "out_of_range", f"probability {raw} is outside [0, 1]"
                fix = _range_fix(float(numbers[i]), percent)
            col.add(check, message, fix, row=i + 2, column=column)
        values[label] = numbers
    return values


def _range_fix(value: float, percent_column: bool) -> str:
    """The likely cause of a score outside [0, 1], and its fix."""
    if percent_column:
        return "the column looks like percentages: divide the column by 100"
    if value < 0 or value <= 10:
        return (
            "looks like a logit (a raw model output): export probabilities, i.e. apply the "
            "sigmoid 1 / (1 + exp(-x)) to the logits"
        )
    if value <= 100:
        return f"looks like a percentage: write {value / 100:g} (probabilities are in [0, 1])"
    return "not a probability nor a percentage: export the model's probabilities in [0, 1]"


def read_scores(
    path: str | os.PathLike[str],
    *,
    expected: pd.Series,
    rules: IdRules,
    labels: tuple[str, ...],
    site: str,
    batch: str,
    max_per_check: int = 20,
    resolve_columns: Callable[[list[str], ProblemCollector], dict[str, str]] | None = None,
    set_aside: Collection[str] = (),
) -> ScoresRead:
    """Read and validate a scores CSV against the ids it must cover (the study-neutral core).

    Parameters
    ----------
    path : path
        The CSV: an id column ``rules.column`` and one probability column per label.
    expected : pandas.Series of str
        The ids the file must score (unique), in output order.
    rules : IdRules
        The id column, the words of the problems, and what an id outside ``expected`` is.
    labels : tuple of str
        Outputs that must be scored, in order.
    site, batch : str
        Recorded in every problem.
    max_per_check : int
        At most this many problems per (check, column) are listed; the rest are counted.
    resolve_columns : callable, optional
        ``resolve(columns, collector) -> {label: column}`` (aliases, warnings for extra columns);
        default: each label is a column of that exact name, other columns are ignored.
    set_aside : collection of str, optional
        Ids of units quarantined at ingest (not in ``expected``): their rows are not scores of
        the table, not unknown ids and not checked; they are counted in ``ScoresRead``.

    Returns
    -------
    ScoresRead
        ``values[label]`` in ``expected`` order.

    Raises
    ------
    ScoresError
        If there is any error; ``.problems`` holds all problems (errors and warnings).
    ValueError
        If ``expected`` has duplicate ids, or an id is both expected and set aside.

    Examples
    --------
    >>> rules = IdRules("stay_id", "stay", "stays table", "name it", "fix the id", "add rows")
    >>> read = read_scores("s.csv", expected=ids, rules=rules, labels=("score",),
    ...                    site="hosp_a", batch="")  # doctest: +SKIP
    """
    path = Path(path)
    expected = expected.astype(str)
    duplicated = expected[expected.duplicated()].tolist()
    if duplicated:
        raise ValueError(f"expected ids repeat {duplicated[:5]}; validate the table first")
    aside = frozenset(map(str, set_aside))
    both = sorted(aside & set(expected))[:5]
    if both:
        raise ValueError(f"ids {both} are both expected and set aside; pass each in one only")
    resolve = resolve_columns or _exact_columns(labels, rules)
    col = ProblemCollector(site, batch, str(path), max_per_check)
    frame = _read_raw(path, col)
    if frame is None:
        raise ScoresError(path, col.finish())
    if rules.column not in frame.columns:
        col.add(
            "missing_column",
            f"no {rules.column!r} column{suggest_column(rules.column, list(frame.columns))}",
            rules.missing_fix,
            column=rules.column,
        )
        resolve(list(frame.columns), col)
        raise ScoresError(path, col.finish())
    found = resolve(list(frame.columns), col)
    ids, used = _check_ids(frame, expected, col, rules, aside)
    skipped = ids.isin(aside).to_numpy()
    rows = used if rules.others == "ignore" else ~skipped
    values = _check_probabilities(frame, found, rows, col, rules.unit)
    problems = col.finish()
    if col.has_errors:
        raise ScoresError(path, problems)
    position = pd.Series(np.arange(len(ids)), index=ids.to_numpy())
    order = position.loc[expected.to_numpy()].to_numpy()
    return ScoresRead(
        values={label: values[label][order] for label in labels},
        warnings=tuple(problems),
        sha256=sha256_file(path),
        n_other_rows=int((~used & ~skipped & ids.ne("").to_numpy()).sum()),
        set_aside_ids=tuple(ids[skipped]),
    )


def score_ids(path: str | os.PathLike[str], column: str, missing_fix: str) -> pd.Series:
    """The stripped ids of a scores file's ``column``, one per row (index: row position), e.g.
    to count the rows of units quarantined at ingest.

    Raises
    ------
    ScoresError
        If the file cannot be read or has no ``column`` (``missing_fix`` is the fix).
    """
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        record = QuarantineRecord("*", "", str(path), None, None, "read", str(err),
                                  "export the scores again as UTF-8 CSV")  # fmt: skip
        raise ScoresError(path, [record]) from err
    frame.columns = [str(c).strip() for c in frame.columns]
    if column not in frame.columns:
        record = QuarantineRecord("*", "", str(path), None, column, "missing_column",
                                  f"no {column!r} column", missing_fix)  # fmt: skip
        raise ScoresError(path, [record])
    return frame[column].str.strip().reset_index(drop=True)
