"""Splits and the scored table of study ``cxr_triage`` (from validated tables and predictions).

Split rule, per site (the same for the model stage and the evidence stage, so the model never
sees a calibration or test study):

* an unlabelled row (no finding labelled: the backlog landed with an empty ``Finding Labels``)
  is ``pile``;
* a labelled row in the development batch's ``test_list.txt`` is ``test``;
* the other labelled rows (``train_val_list.txt``, or a labelled batch without split files) are
  split by patient: ``calibration.calibration_fraction`` of the patients go to ``calibration``
  (:func:`clinaudit.models.vendor_model.patient_disjoint_split`, patients ordered by image id so
  the split does not depend on the pseudonym key), the rest to ``train``.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from clinaudit.audit.types import AuditInputError
from clinaudit.models.vendor_model import patient_disjoint_split
from clinaudit.studies.image_ingest import labelled_rows

from .certify import SCORED_COLUMNS
from .labels import TARGETS, age_band, read_labels, scope_reasons, triage_labels
from .policy import TriagePolicy

__all__ = ["READ_SCORED", "SPLIT_SEED", "scored_table", "triage_splits", "with_targets"]

#: Columns of a backlog study's read (study ``cxr_triage``'s reads batches; "" / NaN if unread).
READ_SCORED: tuple[str, ...] = (
    "read_reason", "read_date", "read_batch", "read_abnormal", "read_critical",
)  # fmt: skip

#: Seed of the calibration carve-out (fixed: the split is part of the study's design).
SPLIT_SEED = 0


def triage_splits(table: pd.DataFrame, *, calibration_fraction: float) -> pd.Series:
    """``train`` / ``calibration`` / ``test`` / ``pile`` of every row of one site's table."""
    split = pd.Series("pile", index=table.index, dtype=object)
    labelled = labelled_rows(table)
    split[labelled & (table["split"] == "test")] = "test"
    dev = labelled & (table["split"] != "test")
    if dev.any():
        part = table[dev]
        rest, held = patient_disjoint_split(
            part["patient_pseudonym"].to_numpy(str),
            calibration_fraction,
            seed=SPLIT_SEED,
            keys=part["image_id"].to_numpy(str),
        )
        split[part.index[rest]] = "train"
        split[part.index[held]] = "calibration"
    return split


def with_targets(table: pd.DataFrame, policy: TriagePolicy) -> pd.DataFrame:
    """``table`` with the triage split, ``abnormal`` / ``critical`` labels, age band and scope."""
    out = table.copy()
    out["triage_split"] = triage_splits(
        table, calibration_fraction=policy.calibration.calibration_fraction
    )
    labels = triage_labels(table, critical=policy.labels.critical)
    for target in TARGETS:
        out[target] = labels[target]
    out["age_band"] = age_band(table["age"])
    out["scope_reason"] = scope_reasons(table, policy.scope)
    blank = pd.Series("", index=table.index, dtype=object)
    for col in ("read_reason", "read_date", "read_batch"):
        out[col] = table[col].fillna("").astype(str) if col in table.columns else blank
    reads = read_labels(
        table["read_findings"] if "read_findings" in table.columns else blank,
        critical=policy.labels.critical,
    )
    out["read_abnormal"], out["read_critical"] = reads["abnormal"], reads["critical"]
    return out


def scored_table(
    validated: Mapping[str, pd.DataFrame],
    logits: Mapping[str, pd.DataFrame],
    policy: TriagePolicy,
) -> pd.DataFrame:
    """Every site's studies with their split, labels, scope and the model's logits.

    ``logits``: per site, ``image_id`` and ``logit_abnormal`` / ``logit_critical``.

    Raises
    ------
    AuditInputError
        If a site's logits do not cover its validated images exactly.
    """
    frames = []
    for site in sorted(validated):
        table = with_targets(validated[site], policy)
        scores = logits[site].set_index("image_id")
        ids = table["image_id"].astype(str)
        missing = sorted(set(ids) - set(scores.index.astype(str)))
        if missing or len(scores) != len(table):
            raise AuditInputError(
                "predictions",
                f"{site}: {len(scores)} scored images for {len(table)} validated "
                f"({len(missing)} not scored, e.g. {missing[:3]})",
                "one score per validated image",
                f"re-materialize cxr_triage/predictions for {site}",
            )
        frame = table.assign(
            split=table["triage_split"],
            logit_abnormal=scores.loc[ids, "logit_abnormal"].to_numpy(float),
            logit_critical=scores.loc[ids, "logit_critical"].to_numpy(float),
        )
        frames.append(frame)
    if not frames:
        raise AuditInputError("validated", "no site", "at least one site", "land a batch")
    scored = pd.concat(frames, ignore_index=True)
    return scored[[*SCORED_COLUMNS, *READ_SCORED, "batch"]].assign(
        site=scored["site"].astype(str), abnormal=scored["abnormal"].astype(float)
    ) if len(scored) else scored  # fmt: skip
