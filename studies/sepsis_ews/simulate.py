"""The demo network of ``sepsis_ews``: land the simulated hospitals, month by month.

One batch per hospital and admission month, ``<landing>/sepsis_ews/<hospital>/<YYYY-MM>/``
(:func:`clinaudit.sources.sepsis_simulator.write_sepsis_batch`, marked simulated). Batches already
landed are kept (landed data are immutable), so a later call with more months (``months=(13,)``:
January of the next year) lands only the new ones: what a hospital sending a new month looks like
to the landing sensor. The simulator's truth (the disadvantaged group, the designed mechanisms)
goes to ``<truth>/sepsis_ews/truth.json``, never into the landing area.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from clinaudit.sources.landing import scan_landing
from clinaudit.sources.sepsis_simulator import (
    SepsisCohort,
    land_network,
    simulate_network,
    write_sepsis_batch,
)
from clinaudit.sources.sepsis_tables import STUDY

__all__ = ["land_simulated_network"]


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
        Admission months (1 = January 2024, 13 = January 2025); default 1-12.

    Returns
    -------
    cohort : SepsisCohort
        The cohort drawn now (its truth is written to ``<truth_root>/sepsis_ews/truth.json``).
    landed : mapping of str to int
        Stays landed by this call per hospital (0 where every batch existed already).
    """
    landed = {(b.site, b.batch) for b in scan_landing(landing_root, STUDY).batches}
    if not landed:
        cohort = land_network(landing_root, truth_root, scale=scale, seed=seed, months=months)
        counts = cohort.stays.groupby("hospital").size()
        return cohort, {str(h): int(n) for h, n in counts.items()}
    cohort = simulate_network(scale, seed=seed, months=months)
    new: dict[str, int] = {str(h): 0 for h in sorted(set(cohort.stays["hospital"]))}
    for (hospital, month), part in cohort.stays.groupby(["hospital", "admit_month"], sort=True):
        if (str(hospital), str(month)) not in landed:
            write_sepsis_batch(landing_root, part, str(month), site=str(hospital))
            new[str(hospital)] += len(part)
    truth = Path(truth_root) / STUDY
    truth.mkdir(parents=True, exist_ok=True)
    doc = json.dumps(cohort.truth, indent=1, sort_keys=True, allow_nan=False) + "\n"
    (truth / "truth.json").write_text(doc, encoding="utf-8")
    return cohort, new
