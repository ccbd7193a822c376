"""Focused re-training of the site with the most worst cells, end to end (issue 5, part 2).

:func:`retrain_worst_site` picks the deployment site with the most worst cells, splits its
patients into train/val/test, fine-tunes the vendor package on the train split
(:func:`~clinaudit.models.finetune.finetune_package`), scores every image never used for the
fine-tuning (other sites entirely, the site's test split, the vendor's held-out split) with the
parent and the new package, and runs the regression guard
(:func:`~clinaudit.models.finetune_guard.regression_guard`). It returns the ``cxr_retraining``
table and the summary of contract B.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from clinaudit.audit.reference_audit import scored_frame
from clinaudit.audit.types import AuditInputError
from clinaudit.models.devices import select_device
from clinaudit.models.finetune import FinetuneConfig, FinetuneResult, finetune_package
from clinaudit.models.finetune_data import decode_table, split_site_patients
from clinaudit.models.finetune_guard import GuardResult, regression_guard
from clinaudit.models.inference import predict_images, predictions_frame
from clinaudit.models.model_card import json_safe
from clinaudit.models.package import LoadedPackage, load_package
from clinaudit.sources.cxr_labels import FINDINGS
from clinaudit.sources.cxr_sites import REFERENCE_SITE
from clinaudit.sources.landing import tables_simulated


@dataclass(frozen=True)
class RetrainOutcome:
    """The ``cxr_retraining`` table, the contract-B summary and the underlying results."""

    table: pd.DataFrame
    summary: dict[str, Any]
    finetune: FinetuneResult
    guard: GuardResult


def pick_worst_site(
    worst_cells: pd.DataFrame, *, exclude: tuple[str, ...] = (REFERENCE_SITE,)
) -> tuple[str, tuple[str, ...]]:
    """The group with the most worst cells (ties: best rank, then name) and its targets by rank.

    Parameters
    ----------
    worst_cells : pandas.DataFrame
        Worst-cells table with ``group``, ``target`` and ``rank`` (1 = worst).
    exclude : tuple of str
        Groups never picked (the reference site; ``"<site>:<split>"`` groups are always skipped).

    Returns
    -------
    (str, tuple of str)
        The site and its worst findings, worst first.

    Examples
    --------
    >>> w = pd.DataFrame({"group": ["b", "c", "b"], "target": ["X", "Y", "Z"], "rank": [3, 1, 2]})
    >>> pick_worst_site(w)
    ('b', ('Z', 'X'))
    """
    missing = [c for c in ("group", "target", "rank") if c not in worst_cells.columns]
    if missing:
        raise AuditInputError(
            "worst_cells",
            f"columns {list(worst_cells.columns)}",
            "columns group, target and rank",
            "pass the cxr_worst_cells table",
        )
    cells = worst_cells[
        ~worst_cells["group"].astype(str).isin(exclude)
        & ~worst_cells["group"].astype(str).str.contains(":")
    ]
    if cells.empty:
        raise AuditInputError(
            "worst_cells",
            f"{len(worst_cells)} rows, none for a deployment site",
            "at least one worst cell of a site other than the reference",
            "nothing to re-train: no site has a flagged cell",
        )
    per_site = cells.groupby("group").agg(n=("target", "size"), best=("rank", "min"))
    per_site = per_site.reset_index().sort_values(
        ["n", "best", "group"], ascending=[False, True, True]
    )
    site = str(per_site.iloc[0]["group"])
    ranked = cells[cells["group"] == site].sort_values("rank")
    return site, tuple(dict.fromkeys(ranked["target"].astype(str)))


def _score_tables(
    packages: Mapping[str, LoadedPackage],
    tables: Mapping[str, pd.DataFrame],
    *,
    landing_root: str | os.PathLike[str] | None,
    config: FinetuneConfig,
    log: Callable[[str], None],
) -> dict[str, dict[str, pd.DataFrame]]:
    """Predictions per package and site; each site's images are decoded once for all packages."""
    sizes = {p.config.input_size for p in packages.values()}
    if len(sizes) != 1:
        raise ValueError(f"packages have input sizes {sorted(sizes)}; they must share one")
    size = sizes.pop()
    choice = select_device(config.device, config.precision)
    out: dict[str, dict[str, pd.DataFrame]] = {name: {} for name in packages}
    for site in sorted(tables):
        table = tables[site].reset_index(drop=True)
        log(f"scoring {len(table)} evaluation images of {site} with {len(packages)} packages")
        x = decode_table(table, size, landing_root=landing_root, workers=config.load_workers)
        for name, pkg in packages.items():
            probs = predict_images(pkg.model, pkg.config, x, batch_size=64, device=choice)
            out[name][site] = predictions_frame(table, probs, pkg.config.labels, pkg.sha256)
    return out


def retrain_worst_site(
    worst_cells: pd.DataFrame,
    validated: Mapping[str, pd.DataFrame],
    package_dir: str | os.PathLike[str],
    *,
    out_dir: str | os.PathLike[str],
    landing_root: str | os.PathLike[str] | None = None,
    reference_site: str = REFERENCE_SITE,
    reference_split: str = "test",
    config: FinetuneConfig | None = None,
    max_focus: int | None = None,
    simulated: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> RetrainOutcome:
    """Re-train the site with the most worst cells and guard every other cell against regression.

    Parameters
    ----------
    worst_cells : pandas.DataFrame
        ``cxr_worst_cells`` (``group``, ``target``, ``rank``).
    validated : mapping of str to pandas.DataFrame
        Site -> validated images table (the reference site included, with its ``split``).
    package_dir : path
        The vendor package.
    out_dir : path
        Directory of the new package (must not hold one yet).
    landing_root : path, optional
        Landing root for tables without ``image_path``; also tells whether data are simulated.
    reference_site, reference_split : str
        The vendor's held-out sample (evaluated, never trained on).
    config : FinetuneConfig, optional
        Settings (seed also seeds the patient split).
    max_focus : int, optional
        Target at most this many of the site's worst findings (worst first).
    simulated : bool, optional
        Whether the data are simulated; default: read from the landed manifests.
    log : callable, optional
        Progress messages.

    Returns
    -------
    RetrainOutcome
        ``table`` (one row per evaluated (group, target), see
        :data:`~clinaudit.models.finetune_guard.GUARD_COLUMNS`) and ``summary`` (contract B).
    """
    config = config or FinetuneConfig()
    log = log or (lambda _msg: None)
    if simulated is None:
        if landing_root is None:
            raise ValueError("pass simulated= (or landing_root=, whose manifests say so)")
        simulated = tables_simulated(dict(validated), landing_root, "cxr")
    site, focus = pick_worst_site(worst_cells, exclude=(reference_site,))
    focus = focus[:max_focus] if max_focus is not None else focus
    if site not in validated or reference_site not in validated:
        raise AuditInputError(
            "validated",
            f"sites {sorted(validated)}",
            f"tables for {site!r} (most worst cells) and the reference {reference_site!r}",
            "pass the validated images table of every audited site",
        )
    table = validated[site]
    split = split_site_patients(table, seed=config.seed)
    log(f"re-training {site} for {list(focus)}: split {split.value_counts().to_dict()}")
    result = finetune_package(
        package_dir,
        table[split == "train"],
        table[split == "val"],
        out_dir=out_dir,
        config=config,
        focus_findings=focus,
        landing_root=landing_root,
        log=log,
    )
    reference = validated[reference_site]
    evaluation = {s: t for s, t in validated.items() if s not in (site, reference_site)}
    evaluation[site] = table[split == "test"]
    evaluation[reference_site] = reference[reference["split"] == reference_split]
    packages = {"before": load_package(package_dir), "after": load_package(result.package_dir)}
    scores = _score_tables(packages, evaluation, landing_root=landing_root, config=config, log=log)
    frames = {
        name: scored_frame(
            evaluation,
            scores[name],
            targets=FINDINGS,
            reference_site=reference_site,
            reference_split=reference_split,
            model_sha256=packages[name].sha256,
        )
        for name in packages
    }
    guard = regression_guard(
        frames["before"],
        frames["after"],
        tolerance=config.tolerance,
        targeted_cells=[(site, f) for f in focus],
        retrained_site=site,
        n_boot=config.n_boot,
        min_pos=config.min_pos,
        min_neg=config.min_neg,
        seed=config.seed,
    )
    summary = _summary(result, guard, config, split, simulated=bool(simulated))
    log(f"regression guard: {'accepted' if guard.accepted else 'REJECTED'} {guard.regressions}")
    return RetrainOutcome(guard.table, summary, result, guard)


def _summary(
    result: FinetuneResult,
    guard: GuardResult,
    config: FinetuneConfig,
    split: pd.Series,
    *,
    simulated: bool,
) -> dict[str, Any]:
    site_rows = guard.table[(guard.table["group"] == result.site) & guard.table["targeted"]]
    focus = {
        str(r.target): {"before": r.auroc_before, "after": r.auroc_after, "status": r.status}
        for r in site_rows.itertuples()
    }
    return json_safe(
        {
            "retrained_site": result.site,
            "cells_targeted": [f"{result.site}/{f}" for f in result.focus_findings],
            "package_dir": str(Path(result.package_dir).resolve()),
            "package_sha256": result.package_sha256,
            "parent_package_sha256": result.parent_package_sha256,
            "accepted": guard.accepted,
            "regressions": list(guard.regressions),
            "epochs": config.epochs,
            "selected_epoch": result.selected_epoch,
            "train_seconds": round(result.train_seconds, 2),
            "device": result.device,
            "tolerance": guard.tolerance,
            "split_sizes": {k: int(v) for k, v in split.value_counts().sort_index().items()},
            "n_cells_evaluated": int((guard.table["status"] == "ok").sum()),
            "n_cells_improved": int(guard.table["improved"].sum()),
            "focus_auroc_site_test": focus,
            "config": asdict(config),
            "simulated": simulated,
        }
    )  # NaN (undefined AUROC) -> None: JSON-ready


__all__ = ["RetrainOutcome", "pick_worst_site", "retrain_worst_site"]
