"""The demo network of ``sepsis_ews``: land the simulated hospitals, month by month.

One batch per hospital and admission month, ``<landing>/sepsis_ews/<hospital>/<YYYY-MM>/``
(:func:`clinaudit.sources.sepsis_simulator.write_sepsis_batch`, marked simulated). Batches already
landed are kept (landed data are immutable), so a later call with more months (``months=(13,)``:
January of the next year) lands only the new ones: what a hospital sending a new month looks like
to the landing sensor. The simulator's truth (the disadvantaged group, the designed mechanisms)
goes to ``<truth>/sepsis_ews/truth.json`` (the first landing's latent per-stay truth to
``latent.parquet``), never into the landing area.

Outcomes are coded weeks after discharge, so :data:`UNLABELLED_HOSPITAL` lands the latest month
of each call with empty ``sepsis`` labels (an *unlabelled month*: the audit gives it PROVISIONAL
label-free estimates); its true labels go to ``<truth>/sepsis_ews/`` :data:`UNLABELLED_TRUTH`
(``stay_id, hospital, admit_month, sepsis``; rows of later calls are added), for the tests.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from clinaudit.sources.landing import scan_landing
from clinaudit.sources.sepsis_simulator import SepsisCohort, simulate_network, write_sepsis_batch
from clinaudit.sources.sepsis_tables import LABEL, STUDY

__all__ = [
    "OUTCOMES_BATCH",
    "UNLABELLED_HOSPITAL",
    "UNLABELLED_TRUTH",
    "land_demo_outcomes",
    "land_simulated_network",
    "unlabelled_truth",
]

#: The hospital whose latest landed month arrives without its sepsis labels.
UNLABELLED_HOSPITAL = "hosp_a"
#: File of the true labels of the unlabelled stays, under ``<truth>/sepsis_ews/``.
UNLABELLED_TRUTH = "unlabelled_labels.csv"
_TRUTH_COLUMNS = ["stay_id", "hospital", "admit_month", LABEL]


def unlabelled_truth(truth_root: str | os.PathLike[str]) -> pd.DataFrame:
    """The true labels of the stays landed unlabelled (empty when none was)."""
    path = Path(truth_root) / STUDY / UNLABELLED_TRUTH
    if not path.is_file():
        return pd.DataFrame({c: pd.Series(dtype=object) for c in _TRUTH_COLUMNS})
    return pd.read_csv(path, dtype={"stay_id": str, "hospital": str, "admit_month": str})


def _write_truth(
    cohort: SepsisCohort, truth_root: Path, unlabelled: pd.DataFrame, *, latent: bool
) -> None:
    truth = truth_root / STUDY
    truth.mkdir(parents=True, exist_ok=True)
    doc = json.dumps(cohort.truth, indent=1, sort_keys=True, allow_nan=False) + "\n"
    (truth / "truth.json").write_text(doc, encoding="utf-8")
    if latent:  # the first landing's (a later call adds months, not latent truth)
        cohort.latent.to_parquet(truth / "latent.parquet", index=False)
    labels = pd.concat([unlabelled_truth(truth_root), unlabelled[_TRUTH_COLUMNS]])
    labels = labels.drop_duplicates("stay_id", keep="last").sort_values("stay_id", kind="stable")
    labels.to_csv(truth / UNLABELLED_TRUTH, index=False, lineterminator="\n")


def land_simulated_network(
    landing_root: str | os.PathLike[str],
    truth_root: str | os.PathLike[str],
    *,
    scale: str = "demo",
    seed: int = 0,
    months: tuple[int, ...] | None = None,
) -> tuple[SepsisCohort, Mapping[str, int]]:
    """Land the simulated network (one batch per hospital and month); landed batches stay.

    Parameters
    ----------
    landing_root, truth_root : path
        The landing area and the folder of the simulator's truth (tests only).
    scale : {"tiny", "demo", "full"}
        Stays per 12 months (~600 / ~6,000 / ~18,000).
    seed : int
        Seed of every draw: the same seed and month give the same stays.
    months : tuple of int, optional
        Admission months (1 = January 2024, 13 = January 2025); default 1-12. The latest one of
        :data:`UNLABELLED_HOSPITAL` lands without sepsis labels.

    Returns
    -------
    cohort : SepsisCohort
        The cohort drawn now, with its true labels (its truth is written to
        ``<truth_root>/sepsis_ews/``).
    landed : mapping of str to int
        Stays landed by this call per hospital (0 where every batch existed already).
    """
    landed = {(b.site, b.batch) for b in scan_landing(landing_root, STUDY).batches}
    cohort = simulate_network(scale, seed=seed, months=months)
    stays = cohort.stays
    withheld = (stays["hospital"] == UNLABELLED_HOSPITAL) & (
        stays["admit_month"] == stays["admit_month"].max()
    )
    sent = stays.assign(**{LABEL: stays[LABEL].astype(float).where(~withheld)})
    new: dict[str, int] = {str(h): 0 for h in sorted(set(stays["hospital"]))}
    gone = pd.Series(False, index=stays.index)
    for (hospital, month), part in sent.groupby(["hospital", "admit_month"], sort=True):
        if (str(hospital), str(month)) not in landed:
            if not part[LABEL].isna().any():  # a labelled batch keeps its integer labels
                part = part.assign(**{LABEL: part[LABEL].astype(stays[LABEL].dtype)})
            write_sepsis_batch(landing_root, part, str(month), site=str(hospital))
            new[str(hospital)] += len(part)
            gone[part.index] = withheld[part.index]
    _write_truth(cohort, Path(truth_root), stays[gone], latent=not landed)
    return cohort, new


#: The batch of the demo's coded outcomes, and the day they were coded (fixed: same bytes).
OUTCOMES_BATCH = "outcomes-0001"
OUTCOMES_CODED = "2025-02-15"


def land_demo_outcomes(
    landing_root: str | os.PathLike[str], truth_root: str | os.PathLike[str]
) -> dict[str, int]:
    """Land the true outcomes of every stay the simulator landed unlabelled, per hospital, as an
    outcomes batch (:mod:`.outcomes`), unless that batch is landed already; outcomes per
    hospital (empty when nothing was landed)."""
    from .outcomes import write_outcomes_batch

    truth = unlabelled_truth(truth_root)
    out: dict[str, int] = {}
    for hospital, rows in truth.groupby("hospital", sort=True):
        batch = Path(landing_root) / STUDY / str(hospital) / OUTCOMES_BATCH
        if batch.exists():
            continue
        outcomes = rows.assign(sepsis=rows[LABEL].astype(int), coded_date=OUTCOMES_CODED)
        write_outcomes_batch(
            landing_root,
            site=str(hospital),
            batch=OUTCOMES_BATCH,
            outcomes=outcomes[["stay_id", "sepsis", "coded_date"]],
            simulated=True,
            created_utc=f"{OUTCOMES_CODED}T00:00:00Z",
        )
        out[str(hospital)] = len(rows)
    return out
