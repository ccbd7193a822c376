"""Study cxr_triage: splits, labels and scope of a simulated triage site as ingest validates it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clinaudit.audit.types import AuditInputError
from clinaudit.sources.triage_simulator import DEV_BATCH, PILE_BATCH, simulate_triage_site
from clinaudit.studies.cxr_triage.data import scored_table, triage_splits, with_targets
from clinaudit.studies.cxr_triage.policy import SHIPPED_POLICY, TriagePolicy
from clinaudit.studies.image_ingest import (
    ImageIngestOptions,
    check_image_partition,
    ingest_image_batch,
)
from clinaudit.validation.ingest_loop import ingest_partition

POLICY = TriagePolicy.load(SHIPPED_POLICY)
SITE = "triage_a"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("triage_data")
    simulate_triage_site(
        root / "landing", truth_root=root / "truth", site=SITE, scale="tiny", seed=3, workers=1
    )
    options = ImageIngestOptions(allow_unlabelled=True, workers=1)
    part = ingest_partition(
        root / "landing",
        "cxr_triage",
        SITE,
        ingest_batch=lambda ref: ingest_image_batch(ref, key=b"k" * 32, options=options),
        empty_table=pd.DataFrame(),
    )
    return part, options


def test_the_backlog_is_ingested_unlabelled_and_checked_on_labelled_rows(site) -> None:
    part, options = site
    assert part.batches["status"].eq("ingested").all()
    outcomes = {o.name: o for o in check_image_partition(part, options)}
    assert outcomes["label_expectations"].passed
    n_pile = int((part.table["batch"] == PILE_BATCH).sum())
    assert outcomes["label_expectations"].metadata["n_unlabelled_rows"] == n_pile > 0


def test_splits_are_patient_disjoint_and_the_pile_is_the_unlabelled_batch(site) -> None:
    table = site[0].table
    split = triage_splits(table, calibration_fraction=0.6)
    assert set(split) == {"train", "calibration", "test", "pile"}
    assert (split[table["batch"] == PILE_BATCH] == "pile").all()
    assert (split[(table["batch"] == DEV_BATCH) & (table["split"] == "test")] == "test").all()
    patients = {s: set(table.loc[split == s, "patient_pseudonym"]) for s in set(split)}
    assert not patients["train"] & patients["calibration"]
    assert not (patients["train"] | patients["calibration"]) & patients["test"]
    dev = split.isin(["train", "calibration"])
    share = (split[dev] == "calibration").mean()
    assert 0.45 < share < 0.75
    again = triage_splits(table.sample(frac=1.0, random_state=1), calibration_fraction=0.6)
    pd.testing.assert_series_equal(again.sort_index(), split.sort_index())  # order-free


def test_targets_scope_and_scored_table(site) -> None:
    table = with_targets(site[0].table, POLICY)
    pile = table["triage_split"] == "pile"
    assert table.loc[pile, "abnormal"].isna().all()
    assert table.loc[~pile, "abnormal"].isin([0.0, 1.0]).all()
    assert (table.loc[table["age"] < 18, "scope_reason"].str.contains("age")).all()
    logits = pd.DataFrame(
        {
            "image_id": table["image_id"],
            "logit_abnormal": np.linspace(-3, 3, len(table)),
            "logit_critical": 0.0,
        }
    )
    scored = scored_table({SITE: site[0].table}, {SITE: logits}, POLICY)
    assert len(scored) == len(table) and set(scored["site"]) == {SITE}
    with pytest.raises(AuditInputError, match="re-materialize cxr_triage/predictions"):
        scored_table({SITE: site[0].table}, {SITE: logits.iloc[:-1]}, POLICY)
