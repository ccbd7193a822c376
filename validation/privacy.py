"""De-identification checks on tables that leave the ingest stage."""

from __future__ import annotations

import re

import pandas as pd

#: Column names that must never appear downstream of ingest (raw identifiers and DICOM PHI).
PHI_COLUMNS: frozenset[str] = frozenset(
    {
        "patient_id",
        "Patient ID",
        "PatientID",
        "PatientName",
        "Patient Name",
        "PatientBirthDate",
        "OtherPatientIDs",
        "PatientAddress",
        "AccessionNumber",
        "InstitutionName",
        "ReferringPhysicianName",
    }
)
_PSEUDONYM_RE = re.compile(r"^[0-9a-f]{16}$")
# DICOM person names are written FAMILY^GIVEN; a caret in any text cell is a PHI smell.
_PERSON_NAME_RE = re.compile(r"[A-Za-z]\^[A-Za-z]")


class PhiLeakError(ValueError):
    """A table about to leave ingest still carries PHI; nothing is written."""

    def __init__(self, site: str, problems: list[str]) -> None:
        self.site = site
        self.problems = tuple(problems)
        super().__init__(
            f"site {site!r}: de-identification failed, the validated table is not written: "
            + "; ".join(problems)
            + ". Fix the export (or the reader) so that no identifier reaches these columns."
        )


def phi_leaks(table: pd.DataFrame) -> list[str]:
    """List de-identification problems in a table produced by ingest (empty list = clean).

    Parameters
    ----------
    table : DataFrame
        A validated table; it must hold ``patient_pseudonym`` and no PHI column.

    Returns
    -------
    list of str
        One human-readable problem per finding: a PHI column present, a malformed pseudonym, or a
        text cell that looks like a DICOM person name.
    """
    problems = [
        f"column {c!r} is PHI and must not leave ingest" for c in table.columns if c in PHI_COLUMNS
    ]
    if "patient_pseudonym" not in table.columns:
        problems.append("column 'patient_pseudonym' is missing")
    elif len(table):
        bad = ~table["patient_pseudonym"].astype(str).str.fullmatch(_PSEUDONYM_RE)
        if bad.any():
            problems.append(
                f"{int(bad.sum())} patient_pseudonym values are not 16-hex keyed hashes "
                f"(first: {table.loc[bad, 'patient_pseudonym'].iloc[0]!r})"
            )
    for col in table.select_dtypes(include=["object", "string"]).columns:
        hits = table[col].astype(str).str.contains(_PERSON_NAME_RE, na=False)
        if hits.any():
            problems.append(
                f"column {col!r} holds {int(hits.sum())} values shaped like person names"
            )
    return problems
