"""The vendor's operating thresholds of a scores-only audit: one JSON file, checked whole.

Vendors state an operating point per output in their instructions for use; a scores-only audit
takes them from a JSON object mapping every target of the study to its threshold (a positive
call is ``score >= threshold``)::

    {"Atelectasis": 0.21, "Cardiomegaly": 0.35, ..., "Hernia": 0.04}

Every problem is reported at once (:class:`ThresholdsFileError`), each with the fix: a file that
is missing or not JSON (with line and column), not an object, unknown targets (with the closest
known name), missing targets, values that are not numbers, and values outside ``(0, 1)`` (a value
in ``(1, 100]`` is called out as a percentage).
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Sequence
from pathlib import Path

from clinaudit.sources.landing import sha256_file

__all__ = ["ThresholdsFileError", "VendorThresholds", "read_thresholds_file"]


class ThresholdsFileError(ValueError):
    """A thresholds file that cannot be used; ``problems`` lists every problem, with its fix."""

    def __init__(self, path: str | Path, problems: Sequence[str]) -> None:
        self.path = str(path)
        self.problems = tuple(problems)
        super().__init__(f"{self.path}: " + "; ".join(self.problems))


class VendorThresholds(dict[str, float]):
    """Target -> operating threshold, read from ``path`` whose bytes hash to ``sha256``."""

    def __init__(self, values: dict[str, float], path: Path, sha256: str) -> None:
        super().__init__(values)
        self.path, self.sha256 = path, sha256

    def source(self) -> str:
        """Where the thresholds come from, in words (printed on the report's first page)."""
        return f"the vendor's thresholds file {self.path.name} (sha256 {self.sha256[:16]})"


def _value_problem(target: str, value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return (
            f"{target!r}: {value!r} is not a number (fix: write the threshold as a number, "
            "e.g. 0.35)"
        )
    if not math.isfinite(value) or not 0.0 < value < 1.0:
        hint = (
            f"; it looks like a percentage: write {value / 100:g}" if 1.0 < value <= 100.0 else ""
        )
        return (
            f"{target!r}: {value!r} is outside (0, 1) (fix: thresholds are probabilities "
            f"strictly between 0 and 1{hint})"
        )
    return None


def read_thresholds_file(path: str | Path, targets: Sequence[str]) -> VendorThresholds:
    """Read and check a vendor thresholds file for ``targets``.

    Parameters
    ----------
    path : str or Path
        JSON file: an object with one number per target.
    targets : sequence of str
        Every output of the audited model (e.g. the 14 findings); each needs a threshold.

    Returns
    -------
    VendorThresholds
        Target -> threshold in the order of ``targets``, with the file's path and sha256.

    Raises
    ------
    ThresholdsFileError
        Listing every problem (missing file, not JSON, not an object, unknown or missing
        targets, non-numbers, values outside ``(0, 1)``) and its fix.

    Examples
    --------
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> p = os.path.join(d, "t.json")
    >>> _ = open(p, "w").write('{"A": 0.2, "B": 0.7}')
    >>> dict(read_thresholds_file(p, ["A", "B"]))
    {'A': 0.2, 'B': 0.7}
    """
    file = Path(path)
    if not file.is_file():
        raise ThresholdsFileError(
            file,
            [
                "no such file (fix: pass the JSON file with the vendor's operating threshold "
                "of every output, docs/model_package.md)"
            ],
        )
    text = file.read_text(encoding="utf-8-sig")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise ThresholdsFileError(
            file,
            [
                f"not JSON: {err.msg} at line {err.lineno}, column {err.colno} (fix: write one "
                'JSON object, e.g. {"Effusion": 0.3, ...})'
            ],
        ) from None
    if not isinstance(doc, dict):
        raise ThresholdsFileError(
            file,
            [
                f"a JSON {type(doc).__name__}, not an object (fix: map each output to its "
                'threshold, e.g. {"Effusion": 0.3, ...})'
            ],
        )
    problems: list[str] = []
    known = list(targets)
    for name in sorted(set(doc) - set(known)):
        close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"use the names {known}"
        problems.append(f"unknown output {name!r} (fix: {hint})")
    missing = [t for t in known if t not in doc]
    if missing:
        problems.append(
            f"no threshold for {missing} (fix: every output needs the vendor's threshold; "
            "ask the vendor for the operating points of their instructions for use)"
        )
    problems += [p for t in known if t in doc if (p := _value_problem(t, doc[t])) is not None]
    if problems:
        raise ThresholdsFileError(file, problems)
    values = {t: float(doc[t]) for t in known}
    return VendorThresholds(values, file.resolve(), sha256_file(file))
