"""Reader of the metadata CSV of dermatology (photo, note) pairs: ours, PAD-UFES-20 and ISIC-like.

:func:`read_derm_metadata` parses one metadata table row by row. Columns are found by name
(:data:`COLUMN_ALIASES`; case-insensitive), so a PAD-UFES-20 ``metadata.csv``, an ISIC-style or
HAM10000-style export and the simulator's own layout load the same way. Every bad row becomes a
:class:`~clinaudit.validation.errors.QuarantineRecord` (file, 1-based line, column, check,
message, fix) and is left out; the rest proceed:

* ``image_name_missing``: blank image id; ``path_traversal``: an id with ``/``, ``\\`` or ``..``
  (the reader resolves files itself and never follows a path from a row); ``image_name``: control
  or other unsafe characters;
* ``unknown_category``: a diagnosis that is none of ACK, BCC, MEL, NEV, SCC, SEK (or an accepted
  alias, :data:`CATEGORY_ALIASES`), with the closest accepted value as did-you-mean;
* ``age_range``: age that is not a number in 0-120 (blank = unknown is fine);
* ``sex_domain``: sex other than male / female / unknown;
* ``fitzpatrick_domain``: a skin type that is not 1-6 or I-VI (blank = not assessed is fine);
* ``duplicate_image_id``: every copy of an image id listed twice (the rows cannot be told apart).

A blank patient id is a warning (the image id stands in); an unknown ``image_type`` is a warning
(recorded as ``""``). Without a ``note`` column, the structured PAD-UFES-20 findings (``itch``,
``grew``, ``hurt``, ``changed``, ``bleed``, ``elevation``, ``skin_cancer_history``) are written
into a plain note (:func:`~clinaudit.sources.derm_notes.structured_note`) and a file-level warning
says so. Other columns (``biopsed``, ``smoke``, diameters, ...) are not used: ``biopsed`` follows
the clinician's suspicion and would leak the label.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from pathlib import Path

import pandas as pd

from clinaudit.sources.derm_notes import structured_note
from clinaudit.sources.derm_sites import CATEGORY_BY_CODE, CATEGORY_CODES
from clinaudit.sources.label_rows import (
    RowCollector,
    check_columns,
    mark_duplicates,
    padded_records,
    read_records,
)
from clinaudit.validation.errors import QuarantineRecord

__all__ = [
    "CATEGORY_ALIASES",
    "COLUMN_ALIASES",
    "METADATA_FIELDS",
    "STRUCTURED_FINDINGS",
    "metadata_image_names",
    "read_derm_metadata",
]

#: Field -> accepted column names, first match wins (compared case-insensitively).
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "img_id": ("img_id", "image_id", "isic_id", "image_name", "image"),
    "diagnostic": ("diagnostic", "diagnosis", "dx", "category"),
    "patient_id": ("patient_id", "patient"),
    "lesion_id": ("lesion_id", "lesion"),
    "age": ("age", "age_approx"),
    "gender": ("gender", "sex"),
    "region": ("region", "anatom_site_general", "anatom_site_general_challenge", "localization"),
    "fitzpatrick_a": ("fitzpatrick_a", "fitspatrick", "fitzpatrick", "fitzpatrick_scale"),
    "fitzpatrick_b": ("fitzpatrick_b",),
    "image_type": ("image_type",),
    "note": ("note", "clinical_note", "notes"),
}
REQUIRED: tuple[str, ...] = ("img_id", "diagnostic")
#: PAD-UFES-20 yes/no findings that become a note when the table has no note column.
STRUCTURED_FINDINGS: tuple[str, ...] = (
    "itch", "grew", "hurt", "changed", "bleed", "elevation", "skin_cancer_history",
)  # fmt: skip
#: Diagnoses accepted besides the six codes (case-insensitive), and what they map to.
CATEGORY_ALIASES: dict[str, str] = {
    "ACTINIC KERATOSIS": "ACK", "AK": "ACK", "AKIEC": "ACK",
    "BASAL CELL CARCINOMA": "BCC",
    "MELANOMA": "MEL",
    "NEVUS": "NEV", "NAEVUS": "NEV", "NV": "NEV", "MELANOCYTIC NEVUS": "NEV",
    "SQUAMOUS CELL CARCINOMA": "SCC",
    "SEBORRHEIC KERATOSIS": "SEK", "SEBORRHOEIC KERATOSIS": "SEK", "SK": "SEK",
}  # fmt: skip
_NOT_MAPPED: dict[str, str] = {
    "BKL": "ISIC's BKL mixes seborrheic keratoses with solar lentigines and lichen-planus-like "
    "keratoses; relabel the seborrheic keratoses as SEK and leave the others out",
}
#: Columns of the table :func:`read_derm_metadata` returns.
METADATA_FIELDS: tuple[str, ...] = (
    "image_id", "img_id", "patient", "lesion", "category", "malignant", "age", "sex", "region",
    "fitzpatrick_a", "fitzpatrick_b", "image_type", "note", "source_row",
)  # fmt: skip

_BLANK = {"", "UNK", "UNKNOWN", "NA", "N/A", "NAN", "NONE"}
_SEX = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F", "U": "U", **dict.fromkeys(_BLANK, "U")}
_ROMAN = {"I": 1, "II": 2, "III": 3, "IV": 4, "V": 5, "VI": 6}
_UNSAFE = re.compile(r"[\x00-\x1f\x7f:*?\"<>|]")
_EXTENSIONS = (".png", ".jpg", ".jpeg")


def _fitzpatrick(text: str) -> tuple[float, bool]:
    t = re.sub(r"^(TYPE|FST|FITZPATRICK)\s*", "", text.strip().upper())
    if t in _BLANK:
        return math.nan, True
    if t in _ROMAN:
        return float(_ROMAN[t]), True
    try:
        value = float(t)
    except ValueError:
        return math.nan, False
    ok = value.is_integer() and 1 <= value <= 6
    return (value if ok else math.nan), ok


def _category(text: str) -> tuple[str | None, str]:
    key = re.sub(r"\s+", " ", text.strip().upper().replace("_", " "))
    if key in CATEGORY_BY_CODE:
        return key, ""
    if key in CATEGORY_ALIASES:
        return CATEGORY_ALIASES[key], ""
    if key in _NOT_MAPPED:
        return None, _NOT_MAPPED[key]
    close = difflib.get_close_matches(key, [*CATEGORY_CODES, *CATEGORY_ALIASES], n=1, cutoff=0.5)
    hint = CATEGORY_ALIASES.get(close[0], close[0]) if close else None
    fix = f"did you mean {hint!r}? " if hint else ""
    return None, fix + f"write one of {list(CATEGORY_CODES)}"


def _image_id(acc: RowCollector, line: int, column: str, raw: str) -> str | None:
    name = raw.strip()
    if not name:
        acc.record(
            line, column, "image_name_missing", "image file name is blank",
            "write the photo's file name (e.g. 'PAT_46_881_939.png') in every row",
        )  # fmt: skip
        return None
    if "/" in name or "\\" in name or ".." in name or name.startswith("."):
        acc.record(
            line, column, "path_traversal",
            f"image name {name!r} contains a path ('/', '\\\\', '..' or a leading '.'); photos are "
            "looked up by file name inside the batch, never by a path from the table",
            "write the bare file name and put the photo under images/ of the batch",
        )  # fmt: skip
        return None
    if _UNSAFE.search(name) or len(name) > 255:
        acc.record(
            line, column, "image_name",
            f"image name {name!r} has control or reserved characters (or is over 255 long)",
            "rename the photo with letters, digits, '_', '-' and '.'",
        )  # fmt: skip
        return None
    return name


def _parse_row(
    acc: RowCollector, line: int, get: dict[str, str], cols: dict[str, str], structured: list[str]
) -> None:
    ok = True
    img = _image_id(acc, line, cols["img_id"], get["img_id"])
    ok &= img is not None
    code, why = _category(get["diagnostic"])
    if code is None:
        ok = False
        acc.record(
            line, cols["diagnostic"], "unknown_category",
            f"diagnosis {get['diagnostic'].strip()!r} is not a known category", why,
        )  # fmt: skip
    age_text = get.get("age", "").strip()
    age = math.nan
    if age_text.upper() not in _BLANK:
        try:
            age = float(age_text)
        except ValueError:
            age = -1.0
        if not (math.isfinite(age) and 0.0 <= age <= 120.0):
            ok = False
            acc.record(
                line, cols["age"], "age_range",
                f"age {age_text!r} is not a number of years in [0, 120]",
                "write the age in years (blank when unknown)",
            )  # fmt: skip
    sex = _SEX.get(get.get("gender", "").strip().upper())
    if sex is None:
        ok = False
        acc.record(
            line, cols["gender"], "sex_domain",
            f"sex {get['gender'].strip()!r} is not one of MALE, FEMALE (M, F) or blank/UNK",
            "map the value to MALE, FEMALE or leave it blank when unknown",
        )  # fmt: skip
    fitz = {}
    for field in ("fitzpatrick_a", "fitzpatrick_b"):
        value, good = _fitzpatrick(get.get(field, ""))
        fitz[field] = value
        if not good:
            ok = False
            acc.record(
                line, cols[field], "fitzpatrick_domain",
                f"Fitzpatrick skin type {get[field].strip()!r} is not 1-6 or I-VI",
                "write the type as 1-6 (or I-VI); leave it blank when not assessed",
            )  # fmt: skip
    if not ok:
        return
    assert img is not None and code is not None
    patient = get.get("patient_id", "").strip()
    if "patient_id" in cols and not patient:
        acc.record(
            line, cols["patient_id"], "patient_missing",
            "patient id is blank; the image id stands in, so this photo counts as its own patient "
            "in patient-level splits", "fill in the patient id", "warning",
        )  # fmt: skip
    image_type = get.get("image_type", "").strip().lower()
    kind = "dermoscopic" if "dermoscop" in image_type else image_type.split(":")[0].strip()
    if kind not in ("", "dermoscopic", "clinical"):
        acc.record(
            line, cols["image_type"], "image_type_domain",
            f"image_type {image_type!r} is neither dermoscopic nor clinical; recorded as ''",
            "write 'dermoscopic' or 'clinical' (ISIC's 'clinical: close-up' is fine)", "warning",
        )  # fmt: skip
        kind = ""
    note = get["note"].strip() if "note" in cols else structured_note(get) if structured else ""
    stem = img[: -len(Path(img).suffix)] if Path(img).suffix.lower() in _EXTENSIONS else img
    acc.rows.append(
        {
            "image_id": stem, "img_id": img, "patient": patient or stem,
            "lesion": get.get("lesion_id", "").strip() or stem, "category": code,
            "malignant": CATEGORY_BY_CODE[code].malignant, "age": age, "sex": sex,
            "region": get.get("region", "").strip().upper(), **fitz, "image_type": kind,
            "note": note, "source_row": line,
        }
    )  # fmt: skip


def _columns(header: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """(lower-case name -> header name, field -> header column) of a table's header."""
    lower = {h.lower(): h for h in reversed(header) if h}
    cols = {}
    for field, aliases in COLUMN_ALIASES.items():
        found = next((lower[a] for a in aliases if a in lower), None)
        if found is not None:
            cols[field] = found
    return lower, cols


def metadata_image_names(data: bytes) -> frozenset[str]:
    """Every non-blank image name the table's rows give, good rows or not (``set()`` when the
    table has no image column): what the batch's files are referenced by."""
    header, records = read_records(data, site="-", batch="-", file="-")
    _, cols = _columns(header)
    if "img_id" not in cols:
        return frozenset()
    i = header.index(cols["img_id"])
    return frozenset(f[i].strip() for _, f in records if len(f) > i and f[i].strip())


def read_derm_metadata(
    path: str | os.PathLike[str], *, site: str, batch: str, data: bytes | None = None
) -> tuple[pd.DataFrame, list[QuarantineRecord]]:
    """Parse a dermatology metadata CSV into a table of good rows and quarantine records.

    Parameters
    ----------
    path : path
        The CSV (its file name names the records' ``file``).
    site, batch : str
        Where the batch landed (recorded in every record).
    data : bytes, optional
        The file's bytes when already read (and hashed) by the caller.

    Returns
    -------
    table : DataFrame
        Good rows, columns :data:`METADATA_FIELDS` (``fitzpatrick_*`` and ``age`` NaN when
        blank; ``sex`` M/F/U; ``note`` ``""`` when missing).
    records : list of QuarantineRecord
        One per problem (see module doc); errors removed their row.

    Raises
    ------
    BatchStructureError
        Unreadable (not UTF-8 / not CSV) or empty table, duplicated column names, or no image id
        or diagnosis column (the record names the closest present column).

    Examples
    --------
    >>> table, records = read_derm_metadata(
    ...     "metadata.csv", site="c", batch="b1",
    ...     data=b"img_id,diagnostic,fitspatrick\\nA.png,MEL,3\\nB.png,melanomma,9\\n")
    >>> table["category"].tolist(), sorted(r.check for r in records)
    (['MEL'], ['fitzpatrick_domain', 'unknown_category'])
    """
    file = Path(path).name
    raw = Path(path).read_bytes() if data is None else data
    header, records = read_records(raw, site=site, batch=batch, file=file)
    lower, cols = _columns(header)
    required = tuple(cols.get(f, f) for f in REQUIRED)
    check_columns(header, required, site=site, batch=batch, file=file)
    structured = [lower[f] for f in STRUCTURED_FINDINGS if f in lower]
    acc = RowCollector(site, batch, file)
    if "note" not in cols and structured:
        acc.record(
            None, None, "note_from_columns",
            f"no note column: each note is composed from the structured columns {structured}",
            "add a free-text 'note' column if the clinical notes exist", "warning",
        )  # fmt: skip
    index = {h: i for i, h in enumerate(header)}
    for line, fields in padded_records(records, len(header), acc):
        get = {f: fields[index[c]] for f, c in cols.items()}
        get.update({f: fields[index[lower[f]]] for f in STRUCTURED_FINDINGS if f in lower})
        get.setdefault("gender", "")
        _parse_row(acc, line, get, cols, structured)
    rows = mark_duplicates(acc)
    table = pd.DataFrame(rows, columns=list(METADATA_FIELDS))
    table = table.astype({"age": "float64", "fitzpatrick_a": "float64", "fitzpatrick_b": "float64"})
    table["source_row"] = table["source_row"].astype("int64")
    table["malignant"] = table["malignant"].astype(bool)
    return table.reset_index(drop=True), acc.records
