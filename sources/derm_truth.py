"""The truth sidecar of the dermatology simulator: what was simulated, for tests and evaluation.

``<truth>/<landing_dir>/<clinic>/<batch>.json`` (format ``clinaudit.derm_truth/v1``) holds the
clinic profile, the category table (which modality informs each category, the look-alike groups),
the history profiles, the Fitzpatrick -> ITA ranges, the annotator error model with the agreement
observed, the lesion-contrast mechanism with its ``contrast_bias`` and the counts.
``<batch>.csv`` holds one row per photo (:data:`TRUTH_COLUMNS`). The audit never reads either;
tests and the study's evaluation of simulated data do (:func:`read_derm_truth`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from clinaudit.sources.derm_population import (
    ANNOTATOR_BLANK,
    ANNOTATOR_ERRORS,
    HISTORY,
    SYMPTOMS,
)
from clinaudit.sources.derm_render import (
    BASE,
    DERMAL_MELANIN,
    HAEMOGLOBIN,
    MELANIN,
    REFERENCE_ITA,
    STANDARD_SURFACE,
)
from clinaudit.sources.derm_sites import CATEGORIES, FITZPATRICK_ITA, ClinicProfile, DermScale

__all__ = ["TRUTH_COLUMNS", "TRUTH_FORMAT", "DermTruth", "read_derm_truth", "write_derm_truth"]

TRUTH_FORMAT = "clinaudit.derm_truth/v1"
#: Per-photo columns of the sidecar CSV.
TRUTH_COLUMNS: tuple[str, ...] = (
    "img_id", "patient_id", "lesion_id", "diagnostic", "malignant", "informative",
    "fitzpatrick_true", "fitzpatrick_a", "fitzpatrick_b", "ita_target", "ita_true", "ita_pixels",
    "c_melanin", "contrast", "contrast_physical", "contrast_reference", "image_type", "fov_mm",
    "surface_reflectance", "exposure", "hairs", "glare", "diameter_mm", "age", "sex", "region",
    "duration_months", *SYMPTOMS, "note_missing", "note",
)  # fmt: skip

_MECHANISM = (
    "R = s + exp(-c_mel*MELANIN) * exp(-(BASE + c_hb*HAEMOGLOBIN + lesion absorbers)); the "
    "surface reflectance s does not shrink with melanin, so a lesion's Weber contrast "
    "W = 1 - R_lesion/R_skin is lower on darker skin. The photo shows W0 + contrast_bias * "
    "(W - W0), W0 being the lesion's contrast on reference skin (ITA 48 deg; rescaled to the "
    "reference's luminance contrast): 1 = physical, 0 = no skin-tone dependence, > 1 = "
    "exaggerated. Shot noise and 8-bit coding also cost dark photos more and are not scaled by "
    "contrast_bias; nor is the under-representation of V-VI in the development clinics."
)


def write_derm_truth(
    truth_root: str | os.PathLike[str],
    landing_dir: str,
    clinic: ClinicProfile,
    scale: DermScale,
    batch: str,
    seed: int,
    contrast_bias: float,
    population: pd.DataFrame,
    rendered: pd.DataFrame,
) -> Path:
    """Write ``<batch>.json`` and ``<batch>.csv`` of one clinic batch; return the JSON path.

    ``population``: the simulator's per-photo frame (hidden metadata, ids, note);
    ``rendered``: per-photo render facts in the same order (ITA, contrast, acquisition).
    """
    target = Path(truth_root) / landing_dir / clinic.name
    target.mkdir(parents=True, exist_ok=True)
    table = pd.concat([population.reset_index(drop=True), rendered.reset_index(drop=True)], axis=1)
    table = table.loc[:, ~table.columns.duplicated(keep="last")]
    by_code = {c.code: c for c in CATEGORIES}
    table["malignant"] = [by_code[c].malignant for c in table["diagnostic"]]
    table["informative"] = [by_code[c].informative for c in table["diagnostic"]]
    table["note_missing"] = table["note"].eq("")
    table[list(TRUTH_COLUMNS)].to_csv(
        target / f"{batch}.csv", index=False, float_format="%.6g", lineterminator="\n"
    )
    a, b = table["fitzpatrick_a"], table["fitzpatrick_b"]
    both = (a > 0) & (b > 0)
    groups: dict[str, list[str]] = {}
    for c in CATEGORIES:
        groups.setdefault(c.informative, []).append(c.code)
    doc: dict[str, Any] = {
        "format": TRUTH_FORMAT,
        "simulated": True,
        "landing_dir": landing_dir,
        "clinic": clinic.name,
        "batch": batch,
        "seed": int(seed),
        "scale": scale.name,
        "image_px": scale.image_px,
        "n_pairs": len(table),
        "n_patients": int(table["patient_id"].nunique()),
        "n_lesions": int(table["lesion_id"].nunique()),
        "clinic_profile": dataclasses.asdict(clinic),
        "categories": [dataclasses.asdict(c) for c in CATEGORIES],
        "informative_groups": groups,
        "history_profiles": {k: dataclasses.asdict(v) for k, v in HISTORY.items()},
        "fitzpatrick_ita": {str(k): list(v) for k, v in FITZPATRICK_ITA.items()},
        "annotators": {
            "error_probabilities_minus2_to_plus2": {
                k: list(v) for k, v in ANNOTATOR_ERRORS.items()
            },
            "blank_rate": ANNOTATOR_BLANK,
            "exact_agreement": round(float((a[both] == b[both]).mean()), 4) if both.any() else None,
            "within_one": round(float(((a[both] - b[both]).abs() <= 1).mean()), 4)
            if both.any()
            else None,
        },
        "contrast": {
            "contrast_bias": float(contrast_bias),
            "reference_ita": REFERENCE_ITA,
            "standard_surface_reflectance": STANDARD_SURFACE,
            "spectra_od_rgb": {
                "melanin": MELANIN.tolist(),
                "haemoglobin": HAEMOGLOBIN.tolist(),
                "dermal_melanin": DERMAL_MELANIN.tolist(),
                "dermis_base": BASE.tolist(),
            },
            "mechanism": _MECHANISM,
        },
        "counts": {
            "diagnostic": {c.code: int((table["diagnostic"] == c.code).sum()) for c in CATEGORIES},
            "fitzpatrick_true": {
                str(t): int((table["fitzpatrick_true"] == t).sum()) for t in range(1, 7)
            },
            "image_type": {
                k: int(v) for k, v in table["image_type"].value_counts().sort_index().items()
            },
            "notes_missing": int(table["note_missing"].sum()),
        },
    }
    path = target / f"{batch}.json"
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return path


@dataclass(frozen=True)
class DermTruth:
    """A clinic batch's truth sidecar: the JSON document and the per-photo table."""

    doc: dict[str, Any]
    table: pd.DataFrame

    def informative(self, modality: str) -> list[str]:
        """Category codes the simulator made informative through ``modality``."""
        return list(self.doc["informative_groups"].get(modality, []))


def read_derm_truth(
    truth_root: str | os.PathLike[str], landing_dir: str, clinic: str, batch: str
) -> DermTruth:
    """Read the sidecar of ``<landing_dir>/<clinic>/<batch>`` (raises if absent or foreign)."""
    base = Path(truth_root) / landing_dir / clinic
    doc = json.loads((base / f"{batch}.json").read_text(encoding="utf-8"))
    if doc.get("format") != TRUTH_FORMAT:
        raise ValueError(
            f"{base / f'{batch}.json'} has format {doc.get('format')!r}, expected {TRUTH_FORMAT!r}"
        )
    table = pd.read_csv(base / f"{batch}.csv", keep_default_na=False, na_values=[])
    return DermTruth(doc, table)
