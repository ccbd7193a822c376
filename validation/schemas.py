"""Pandera schemas of the ingest stage and the conversion of their failures into quarantine records.

``CanonicalLabels``
    The label table both readers return (``clinaudit.sources.label_tables``); it still holds the
    raw ``patient_id`` (PHI) and never leaves ingest.
``ValidatedImages(CanonicalLabels)``
    The ingest output, one row per good image: the label columns, where the image came from
    (``site``, ``batch``, ``split``, ``sha256``), the keyed ``patient_pseudonym``, the quality
    features of ``clinaudit.validation.quality`` and categorical DICOM metadata ``meta_*``. It
    inherits every column of ``CanonicalLabels`` *except* ``patient_id``, which it removes: with
    ``strict=True`` a table that still carries ``patient_id`` fails validation.

Both schemas are ``strict`` and ``coerce``; validate them with ``lazy=True`` (see
:func:`validate_frame`) so every failure is reported at once.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors
from pandera.typing import Series

from clinaudit.sources.cxr_labels import FINDINGS
from clinaudit.validation.errors import BatchStructureError, QuarantineRecord

SEX_VALUES: tuple[str, ...] = ("M", "F", "U")
SPLIT_VALUES: tuple[str, ...] = ("train", "test", "eval")
IMAGE_FORMATS: tuple[str, ...] = ("dicom", "png", "jpeg")
#: Categorical metadata columns of ValidatedImages (DICOM keywords; "" when absent).
META_COLUMNS: tuple[str, ...] = (
    "meta_Modality",
    "meta_Manufacturer",
    "meta_ManufacturerModelName",
    "meta_ViewPosition",
    "meta_KVP",
    "meta_PhotometricInterpretation",
    "meta_BitsStored",
)
_LABEL = {"nullable": True, "isin": [0.0, 1.0]}


class CanonicalLabels(pa.DataFrameModel):
    """Canonical label table: one row per image, 14 ChestX-ray14 findings as 0/1/NaN."""

    image_id: Series[str] = pa.Field(unique=True, str_length={"min_value": 1})
    file: Series[str] = pa.Field(str_length={"min_value": 1})
    patient_id: Series[str] = pa.Field(str_length={"min_value": 1})
    follow_up: Series[int] = pa.Field(ge=0)
    age: Series[float] = pa.Field(ge=0.0, le=120.0)
    sex: Series[str] = pa.Field(isin=list(SEX_VALUES))
    view_position: Series[str] = pa.Field(str_matches=r"^[A-Z][A-Z0-9_]{0,15}$")
    source_row: Series[int] = pa.Field(ge=2)
    Atelectasis: Series[float] = pa.Field(**_LABEL)
    Cardiomegaly: Series[float] = pa.Field(**_LABEL)
    Effusion: Series[float] = pa.Field(**_LABEL)
    Infiltration: Series[float] = pa.Field(**_LABEL)
    Mass: Series[float] = pa.Field(**_LABEL)
    Nodule: Series[float] = pa.Field(**_LABEL)
    Pneumonia: Series[float] = pa.Field(**_LABEL)
    Pneumothorax: Series[float] = pa.Field(**_LABEL)
    Consolidation: Series[float] = pa.Field(**_LABEL)
    Edema: Series[float] = pa.Field(**_LABEL)
    Emphysema: Series[float] = pa.Field(**_LABEL)
    Fibrosis: Series[float] = pa.Field(**_LABEL)
    Pleural_Thickening: Series[float] = pa.Field(**_LABEL)
    Hernia: Series[float] = pa.Field(**_LABEL)

    class Config:
        strict = True
        coerce = True


class ValidatedImages(CanonicalLabels):
    """Ingest output: labels + provenance + pseudonym + quality features + metadata, no PHI."""

    site: Series[str] = pa.Field(str_length={"min_value": 1})
    batch: Series[str] = pa.Field(str_length={"min_value": 1})
    split: Series[str] = pa.Field(isin=list(SPLIT_VALUES))
    patient_pseudonym: Series[str] = pa.Field(str_matches=r"^[0-9a-f]{16}$")
    sha256: Series[str] = pa.Field(str_matches=r"^[0-9a-f]{64}$")
    image_format: Series[str] = pa.Field(isin=list(IMAGE_FORMATS))
    mean_intensity: Series[float] = pa.Field(ge=0.0, le=1.0)
    contrast: Series[float] = pa.Field(ge=0.0, le=0.5)
    entropy: Series[float] = pa.Field(ge=0.0, le=8.0)
    sharpness: Series[float] = pa.Field(ge=0.0)
    noise_sigma: Series[float] = pa.Field(ge=0.0)
    clipped_fraction: Series[float] = pa.Field(ge=0.0, le=1.0)
    dynamic_range: Series[float] = pa.Field(ge=0.0, le=1.0)
    pixel_spacing_mm: Series[float] = pa.Field(nullable=True, gt=0.0)
    rows: Series[int] = pa.Field(ge=1)
    cols: Series[int] = pa.Field(ge=1)
    meta_Modality: Series[str]
    meta_Manufacturer: Series[str]
    meta_ManufacturerModelName: Series[str]
    meta_ViewPosition: Series[str]
    meta_KVP: Series[str]
    meta_PhotometricInterpretation: Series[str]
    meta_BitsStored: Series[str]

    class Config:
        strict = True
        coerce = True

    @classmethod
    def build_schema_(cls, **kwargs: Any) -> pa.DataFrameSchema:
        """Build the schema of CanonicalLabels' columns plus ours, without ``patient_id``."""
        return super().build_schema_(**kwargs).remove_columns(["patient_id"])


#: Column order of the ingest output (ValidatedImages).
VALIDATED_COLUMNS: tuple[str, ...] = tuple(ValidatedImages.to_schema().columns)

assert set(FINDINGS) <= set(CanonicalLabels.to_schema().columns), "schema lacks a finding column"


def schema_failures_to_records(
    err: SchemaErrors, site: str, batch: str, *, file: str | None = None
) -> list[QuarantineRecord]:
    """Turn a lazy pandera validation's failure cases into quarantine records.

    Parameters
    ----------
    err : pandera.errors.SchemaErrors
        Raised by ``Model.validate(df, lazy=True)``; ``err.data`` is the validated frame.
    site, batch : str
        Recorded in every record.
    file : str, optional
        File to blame (e.g. the label table); by default the row's ``file`` column, or
        ``"<table>"`` when the failure is not tied to a row.

    Returns
    -------
    list of QuarantineRecord
        One record per failure case, ``row`` = the row's ``source_row`` when the frame has one.
    """
    data = err.data if isinstance(err.data, pd.DataFrame) else pd.DataFrame()
    out = []
    for case in err.failure_cases.itertuples(index=False):
        index = case.index
        has_row = index is not None and not (isinstance(index, float) and pd.isna(index))
        has_row = has_row and index in data.index
        line = None
        where = file or "<table>"
        if has_row:
            if "source_row" in data.columns:
                line = int(data.at[index, "source_row"])
            if file is None and "file" in data.columns:
                where = str(data.at[index, "file"])
        if case.schema_context == "DataFrameSchema":
            # Table-level failure: for a missing/unexpected column the failure case is its name.
            column = str(case.failure_case) if str(case.check).startswith("column_in") else None
        else:
            column = None if case.column is None else str(case.column)
        out.append(
            QuarantineRecord(
                site=site,
                batch=batch,
                file=where,
                row=line,
                column=column,
                check=f"schema:{case.check}",
                message=(
                    f"value {case.failure_case!r} fails the schema check {case.check!r}"
                    + (f" on column {column!r}" if column else "")
                ),
                fix="correct the value at the source so that it satisfies the check",
                severity="error",
            )
        )
    return out


def validate_frame(
    model: type[pa.DataFrameModel],
    frame: pd.DataFrame,
    *,
    site: str,
    batch: str,
    file: str | None = None,
) -> tuple[pd.DataFrame, list[QuarantineRecord]]:
    """Validate lazily; drop and report failing rows, fail the batch on table-level failures.

    Parameters
    ----------
    model : DataFrameModel subclass
        ``CanonicalLabels`` or ``ValidatedImages``.
    frame : DataFrame
        The table to validate (its index identifies rows).
    site, batch, file
        Passed to :func:`schema_failures_to_records`.

    Returns
    -------
    (DataFrame, list of QuarantineRecord)
        The validated (coerced) rows that passed, in their order, and one record per failure.

    Raises
    ------
    BatchStructureError
        If a failure is not tied to a row (missing or unexpected column, wrong dtype of a whole
        column): the table as a whole does not have the schema's shape.
    """
    try:
        return model.validate(frame, lazy=True), []
    except SchemaErrors as err:
        records = schema_failures_to_records(err, site, batch, file=file)
        index = err.failure_cases["index"]
        if index.isna().any():
            raise BatchStructureError(records) from err
        bad = set(index.tolist())
        good = frame.loc[[i for i in frame.index if i not in bad]]
        return model.validate(good, lazy=False), records
