"""Label vocabulary of the chest X-ray studies (ChestX-ray14 findings, in the NIH order)."""

from __future__ import annotations

#: The 14 ChestX-ray14 findings, in the order the NIH ``Data_Entry_2017.csv`` documentation lists
#: them. Model outputs, label columns and metric tables all use this order.
FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)

#: The NIH label for an image with none of the findings.
NO_FINDING = "No Finding"

#: CheXpert column names that denote a ChestX-ray14 finding under another name.
CHEXPERT_ALIASES: dict[str, str] = {"Pleural Effusion": "Effusion"}
