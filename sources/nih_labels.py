"""The NIH ChestX-ray14 layout (``Data_Entry_2017.csv``) of a label table.

See :mod:`clinaudit.sources.label_tables` for the rules; this module holds the layout's columns and
the parser of its rows.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

from clinaudit.sources.cxr_labels import FINDINGS, NO_FINDING
from clinaudit.sources.label_rows import RowCollector, padded_records, parse_age_sex, parse_view

NIH_REQUIRED: tuple[str, ...] = (
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
)
#: The columns of the real ``Data_Entry_2017_v2020.csv`` as a CSV reader splits its header (the
#: bracketed names hold a comma): the required ones, then the image size and pixel spacing.
NIH_COLUMNS: tuple[str, ...] = (
    *NIH_REQUIRED,
    "OriginalImage[Width",
    "Height]",
    "OriginalImagePixelSpacing[x",
    "y]",
)
#: The header line of NIH ``Data_Entry_2017_v2020.csv``, byte for byte (11 CSV fields).
NIH_HEADER = ",".join(NIH_COLUMNS)
NIH_OPTIONAL: tuple[str, ...] = (
    *NIH_COLUMNS[len(NIH_REQUIRED) :],
    "OriginalImage[Width, Height]",
    "OriginalImagePixelSpacing[x, y]",
)
_KNOWN_LABELS = (*FINDINGS, NO_FINDING)


@dataclass(frozen=True)
class FindingProblem:
    """Why a ``Finding Labels`` text cannot be read, and how to fix it."""

    message: str
    fix: str


def parse_finding_labels(text: str) -> dict[str, float] | FindingProblem:
    """The 14 findings (1.0 present, 0.0 absent) of a non-empty NIH ``Finding Labels`` text.

    Examples
    --------
    >>> labels = parse_finding_labels("Mass|Effusion")
    >>> labels["Mass"], labels["Effusion"], labels["Hernia"]
    (1.0, 1.0, 0.0)
    >>> parse_finding_labels("Masss").message.split(";")[0]
    "unknown finding name(s) ['Masss'] (did you mean 'Mass'?)"
    """
    names = [n.strip() for n in text.split("|")]
    unknown = [n for n in names if n not in _KNOWN_LABELS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], _KNOWN_LABELS, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return FindingProblem(
            f"unknown finding name(s) {unknown}{hint}; known names: {list(_KNOWN_LABELS)}",
            "use the ChestX-ray14 names exactly (case and '_' matter), separated by '|'",
        )
    if NO_FINDING in names and len(names) > 1:
        return FindingProblem(
            f"{NO_FINDING!r} is combined with findings {[n for n in names if n != NO_FINDING]}",
            f"use {NO_FINDING!r} alone, or list only the findings",
        )
    labels = dict.fromkeys(FINDINGS, 0.0)
    for name in names:
        if name != NO_FINDING:
            labels[name] = 1.0
    return labels


def nih_rows(
    header: list[str],
    records: list[tuple[int, list[str]]],
    acc: RowCollector,
    *,
    allow_unlabelled: bool = False,
) -> None:
    """Parse the NIH data rows into ``acc`` (rows, quarantine records, referenced files).

    An empty (or blank) ``Finding Labels`` field means the row is *not labelled*. By default such
    a row is quarantined (``unknown_finding``); with ``allow_unlabelled=True`` it is kept with all
    14 findings NaN.
    """
    idx = {name: header.index(name) for name in NIH_REQUIRED}
    for line, fields in padded_records(records, len(header), acc):

        def get(name: str, fields: list[str] = fields) -> str:
            return fields[idx[name]].strip()

        ok = True
        image_index = get("Image Index")
        if (
            not image_index
            or "/" in image_index
            or "\\" in image_index
            or image_index
            in (
                ".",
                "..",
            )
        ):
            acc.record(
                line,
                "Image Index",
                "image_id",
                f"image index {image_index!r} is not a plain file name",
                "write the image file name (e.g. 00000001_000.png) without directories",
            )
            ok = False
        else:
            acc.referenced.add(f"images/{image_index}")
        patient = get("Patient ID")
        if not patient:
            acc.record(
                line, "Patient ID", "patient_id", "patient id is blank", "fill in the patient id"
            )
            ok = False
        follow_text = get("Follow-up #")
        try:
            follow_f = float(follow_text)
            follow = int(follow_f) if follow_f.is_integer() and follow_f >= 0 else None
        except ValueError:
            follow = None
        if follow is None:
            acc.record(
                line,
                "Follow-up #",
                "follow_up",
                f"follow-up {follow_text!r} is not a whole number >= 0",
                "write the follow-up index as 0, 1, 2, ...",
            )
            ok = False
        age, sex, ok_common = parse_age_sex(
            acc,
            line,
            age_text=get("Patient Age"),
            age_col="Patient Age",
            sex_text=get("Patient Gender"),
            sex_col="Patient Gender",
        )
        view, ok_view = parse_view(acc, line, get("View Position"), "View Position")
        finding_text = get("Finding Labels")
        if not finding_text and allow_unlabelled:
            labels = dict.fromkeys(FINDINGS, math.nan)
        elif not finding_text:
            acc.record(
                line,
                "Finding Labels",
                "unknown_finding",
                "Finding Labels is empty: the row is not labelled, and this ingest needs a "
                "label on every row",
                f"write the findings separated by '|', or {NO_FINDING!r} for a normal study; a "
                "pile of unlabelled studies belongs to a study that accepts them (ingest with "
                "IngestConfig(allow_unlabelled=True), e.g. cxr_triage)",
            )
            ok = False
        else:
            parsed = parse_finding_labels(finding_text)
            if isinstance(parsed, FindingProblem):
                acc.record(line, "Finding Labels", "unknown_finding", parsed.message, parsed.fix)
                ok = False
            else:
                labels = parsed
        if ok and ok_common and ok_view:
            acc.rows.append(
                {
                    "image_id": image_index,
                    "file": f"images/{image_index}",
                    "patient_id": patient,
                    "follow_up": follow,
                    "age": age,
                    "sex": sex,
                    "view_position": view,
                    "source_row": line,
                    **labels,
                }
            )
