"""sepsis_ews, issue 19: a hospital's unlabelled month is ingested, left out of every labelled
metric, and given PROVISIONAL label-free estimates that the report shows in their own section."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from clinaudit.audit.label_free_site import realised_metrics
from clinaudit.models.tabular import predict_stays, train_tabular_vendor_model
from clinaudit.sources.landing import scan_landing
from clinaudit.sources.sepsis_simulator import simulate_network, simulate_vendor_population
from clinaudit.sources.sepsis_tables import read_stays
from clinaudit.studies import get_study
from clinaudit.studies.sepsis_ews.evaluate import (
    EVIDENCE_TABLES,
    AuditedStays,
    audit_settings,
    evidence,
)
from clinaudit.studies.sepsis_ews.ingest import ingest_stays_batch
from clinaudit.studies.sepsis_ews.report import build_sepsis_view, render_sepsis_html
from clinaudit.studies.sepsis_ews.report_appendix import SepsisProvenance
from clinaudit.studies.sepsis_ews.result import run_sepsis_audit
from clinaudit.studies.sepsis_ews.schema import ERROR_COLUMNS, validate_stays
from clinaudit.studies.sepsis_ews.simulate import (
    UNLABELLED_HOSPITAL,
    land_simulated_network,
    unlabelled_truth,
)
from clinaudit.studies.sepsis_ews.stages import mitigation_tables
from clinaudit.studies.sepsis_ews.tables import FEATURES, scored_stays
from clinaudit.studies.sepsis_ews.unlabelled_months import (
    LABEL_FREE_COLUMNS,
    LabelFreeSettings,
    label_free_table,
)

STUDY = get_study("sepsis_ews")
N_BOOT = 40
IDENTITY = "a" * 64


def _unlabel(stays: pd.DataFrame, where: pd.Series) -> pd.DataFrame:
    return stays.assign(sepsis=stays["sepsis"].astype(float).where(~where))


@pytest.fixture(scope="module")
def network() -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """Tiny network, synthetic scores; hosp_a's last month and 5 scattered stays unlabelled."""
    truth = simulate_network("tiny", seed=2, months=(1, 2, 3, 4)).stays
    month = (truth["hospital"] == "hosp_a") & (truth["admit_month"] == "2024-04")
    scattered = pd.Series(False, index=truth.index)
    scattered[truth.index[(truth["hospital"] == "hosp_b").to_numpy()][:5]] = True
    stays, errors = validate_stays(_unlabel(truth, month | scattered))
    assert (errors["severity"] == "error").sum() == 0
    rng = np.random.default_rng(0)
    score = 1 / (1 + np.exp(2.0 - 2.5 * truth["sepsis"] - rng.normal(size=len(truth))))
    preds = pd.DataFrame({"stay_id": truth["stay_id"], "score": score, "model_sha256": IDENTITY})
    return scored_stays(stays, preds), truth, month | scattered


def test_empty_labels_are_ingested_as_unlabelled_and_other_values_still_refused(tmp_path) -> None:
    stays = simulate_network("tiny", seed=0).stays.head(8).reset_index(drop=True)
    text = stays.astype(object).where(stays.notna(), "").astype(str)
    text.loc[1, "sepsis"], text.loc[2, "sepsis"], text.loc[4, "sepsis"] = "", "NA", "x"
    text.loc[5, "sepsis"] = "2"
    path = tmp_path / "stays.csv"
    text.to_csv(path, index=False)
    valid, errors = validate_stays(read_stays(path), source=str(path))
    assert list(errors.columns) == list(ERROR_COLUMNS)
    got = errors[["row", "column", "check"]].to_records(index=False).tolist()
    assert got == [(6, "sepsis", "not_a_number"), (7, "sepsis", "invalid_label")]
    assert "'x' is not a number" in errors["message"].iloc[0]
    assert valid["source_row"].tolist() == [2, 3, 4, 5, 8, 9]  # empty labels kept
    assert valid["sepsis"].dtype == "Int64" and valid["sepsis"].isna().tolist() == [
        False, True, True, False, False, False]  # fmt: skip
    labelled = valid["sepsis"].notna()
    assert valid.loc[labelled, "sepsis"].tolist() == stays.loc[[0, 3, 6, 7], "sepsis"].tolist()
    # The simulator lands hosp_a's latest month unlabelled: no quarantine record, labels <NA>.
    land_simulated_network(tmp_path / "landing", tmp_path / "truth", scale="tiny", months=(1, 2))
    batches = {
        (b.site, b.batch): b for b in scan_landing(tmp_path / "landing", "sepsis_ews").batches
    }
    out = ingest_stays_batch(batches[(UNLABELLED_HOSPITAL, "2024-02")])
    assert out.quarantine.empty and len(out.table) and out.table["sepsis"].isna().all()
    other = ingest_stays_batch(batches[("hosp_b", "2024-02")])
    assert other.table["sepsis"].notna().all()
    truth = unlabelled_truth(tmp_path / "truth")
    assert sorted(truth["stay_id"]) == sorted(out.table["stay_id"])
    assert set(truth["sepsis"]) <= {0, 1}


def test_labelled_metrics_count_no_unlabelled_stay_and_the_month_is_estimated(network) -> None:
    frame, _, unlabelled = network
    policy = STUDY.load_policy()
    settings = audit_settings(policy, threshold=0.5, threshold_source="configured")
    label_free = {**settings.extra["label_free"], "n_boot": N_BOOT}
    settings = replace(settings, n_boot=N_BOOT, extra={**settings.extra, "label_free": label_free})
    hospitals = tuple(sorted(set(frame["hospital"])))
    labelled = frame[frame["sepsis"].notna()].reset_index(drop=True)
    labelled["sepsis"] = labelled["sepsis"].astype("int64")
    ev = evidence(AuditedStays(frame, hospitals), card=None, settings=settings)
    ref = evidence(AuditedStays(labelled, hospitals), card=None, settings=settings)
    for name in set(EVIDENCE_TABLES) - {"cohort"}:  # as if the unlabelled stays were absent
        pd.testing.assert_frame_equal(ev[name], ref[name], obj=name)
    # The cohort counts every audited stay; its septic stays and prevalence the labelled ones.
    cohort, cohort_ref = ev["cohort"].set_index("hospital"), ref["cohort"].set_index("hospital")
    pd.testing.assert_frame_equal(cohort[["n_sepsis", "prevalence"]],
                                  cohort_ref[["n_sepsis", "prevalence"]])  # fmt: skip
    assert cohort.at["network", "n_stays"] == len(frame) == len(labelled) + unlabelled.sum()
    assert ev.fact("stays_digest") == ref.fact("stays_digest")
    assert ev.fact("cohort")["n_stays"] == len(frame)
    assert ev.fact("cohort")["n_unlabelled"] == int(unlabelled.sum()) == 5 + ev.fact(
        "label_free")["months"][0]["n_stays"]  # fmt: skip
    assert ev.fact("label_free")["unlabelled_in_labelled_months"] == {
        "hosp_b": {"2024-01": 5}}  # fmt: skip
    lf = ev["label_free"]
    assert list(lf.columns) == list(LABEL_FREE_COLUMNS) and len(lf) == 6
    assert set(zip(lf["hospital"], lf["month"], strict=True)) == {("hosp_a", "2024-04")}
    cbpe = lf[lf["method"] == "cbpe"].set_index("metric")
    assert set(cbpe.index) == {"auroc", "sensitivity", "specificity", "accuracy", "prevalence"}
    assert (lf["n_stays"] == int(frame["sepsis"].isna().sum()) - 5).all()
    # ~50 labelled hosp_a stays hold too few septic ones: the network is the reference.
    assert set(lf["reference"]) == {"network"} and (lf["n_reference"] == len(labelled)).all()
    assert (lf["status"] == "estimated").all() and (lf["reason"] == "").all()
    assert (cbpe["ci_low"] <= cbpe["ci_high"]).all() and 0.6 < cbpe.at["auroc", "estimate"] < 1
    recorded = ev.fact("settings")["extra"]["label_free"]
    assert (recorded["n_boot"], recorded["ci_level"], recorded["seed"]) == (N_BOOT, 0.95, 0)
    # The later stages take every audited stay and drop the unlabelled ones themselves.
    mit, mit_ref = mitigation_tables(ev, frame, policy), mitigation_tables(ref, labelled, policy)
    for name in mit.tables:
        pd.testing.assert_frame_equal(mit[name], mit_ref[name], obj=name)
    assert not set(mit["alerts"]["stay_id"]) & set(frame.loc[unlabelled.to_numpy(), "stay_id"])


def test_estimated_auroc_of_the_simulated_unlabelled_month_covers_its_realised_auroc(
    tmp_path,
) -> None:
    """Demo scale (hosp_a's last month: ~165 stays, ~13 septic; its own ~1,800 labelled stays
    are the reference), the vendor model's scores, the truth labels the simulator kept."""
    cohort, _ = land_simulated_network(tmp_path / "landing", tmp_path / "truth", scale="demo")
    truth = unlabelled_truth(tmp_path / "truth")
    assert len(truth) > 100 and set(truth["hospital"]) == {UNLABELLED_HOSPITAL}
    model = train_tabular_vendor_model(simulate_vendor_population("tiny", seed=0).stays, seed=0)
    stays = cohort.stays
    gone = stays["stay_id"].isin(truth["stay_id"])
    frame = _unlabel(stays, gone).assign(score=predict_stays(model, stays)["score"].to_numpy())
    threshold = float(model.card["operating_threshold"])
    settings = LabelFreeSettings(
        n_boot=200, ci_level=0.95, seed=0, min_reference_pos=30, min_reference_neg=100,
        psi_action=0.25, psi_noise_draws=2000, psi_noise_alpha=0.05, max_outside=0.05,
    )  # fmt: skip
    lf = label_free_table(frame, threshold=threshold, settings=settings, features=FEATURES)
    assert set(lf["reference"]) == {"hospital"} and (lf["status"] == "estimated").all()
    est = lf[lf["method"] == "cbpe"].set_index("metric")
    month = frame[gone].merge(truth[["stay_id", "sepsis"]], on="stay_id", suffixes=("_", ""))
    real = realised_metrics(month["sepsis"], month["score"], threshold)
    auroc = est.loc["auroc"]
    assert auroc["ci_low"] <= real["auroc"] <= auroc["ci_high"], (auroc, real)
    # Stated bound: within 3 standard errors of the realised AUROC (Hanley-McNeil; ~13 septic
    # stays make that SE ~0.08, which dominates the error at this size).
    n1 = int(month["sepsis"].sum())
    n0, a = len(month) - n1, real["auroc"]
    q1, q2 = a / (2 - a), 2 * a**2 / (1 + a)
    se = np.sqrt((a * (1 - a) + (n1 - 1) * (q1 - a**2) + (n0 - 1) * (q2 - a**2)) / (n1 * n0))
    assert abs(auroc["estimate"] - a) <= 3 * se, (auroc["estimate"], a, se)
    prev = est.loc["prevalence"]
    assert prev["ci_low"] <= real["prevalence"] <= prev["ci_high"], (prev, real)


def test_the_report_has_a_provisional_section_and_decides_on_labelled_stays_only(
    network,
) -> None:
    frame, _, _ = network
    policy = STUDY.load_policy()
    stays = frame.drop(columns=["score", "model_sha256"])
    preds = frame[["stay_id", "score", "model_sha256"]]
    result = run_sepsis_audit(stays, preds, card=None, threshold=0.5, policy=policy, n_boot=N_BOOT)
    labelled = stays[stays["sepsis"].notna()]
    alone = run_sepsis_audit(
        labelled, preds[preds["stay_id"].isin(labelled["stay_id"])], card=None, threshold=0.5,
        policy=policy, n_boot=N_BOOT,
    )  # fmt: skip
    assert (result.recommendation, result.reasons) == (alone.recommendation, alone.reasons)
    pd.testing.assert_frame_equal(result.criteria, alone.criteria)
    kept = stays.groupby("hospital").agg(n_stays=("stay_id", "size")).reset_index()
    kept["n_batches"] = 4
    provenance = SepsisProvenance(
        audit_id="20260101T000000Z-0123abcd", generated_at="2026-01-01T00:00:00Z",
        input_batches={"sepsis_ews/hosp_a/2024-04": "00" * 32}, model_identity=IDENTITY,
        code_version="clinaudit test", signer="CN=test signer", development_signature=True,
    )  # fmt: skip
    quarantine = pd.DataFrame(columns=list(ERROR_COLUMNS))

    def html(res) -> str:
        view = build_sepsis_view(
            res, kept=kept, quarantine=quarantine, model={"mode": "scores"}, policy=policy,
            provenance=provenance,
        )  # fmt: skip
        return render_sepsis_html(view)

    page = html(result)
    start = page.index('<section id="provisional"')
    section = page[start : page.index("</section>", start)]
    assert "8 PROVISIONAL: unlabelled months" in section and "Table 8.1" in section
    assert "hosp_a" in section and "2024-04" in section
    for words in ("estimates, not measurements", "not based on them", "No concept shift",
                  "inside the reference&#39;s support", "corrected only when it is identified",
                  f"{N_BOOT:,} bootstrap replicates", "5 further unlabelled stays"):  # fmt: skip
        assert words in section, words
    assert page.index('<section id="monitoring"') < start  # after the measured sections
    assert "have no sepsis label yet" in page[: page.index("</section>")]  # the summary says so
    assert '<section id="provisional"' not in html(alone)  # every month labelled: no section


# ---------------------------------------------------------------- late outcomes, frozen estimates


def _outcomes(rows: list[tuple[str, object, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["stay_id", "sepsis", "coded_date"])


def test_an_outcomes_batch_fills_the_unlabelled_stays_and_quarantines_bad_rows(tmp_path) -> None:
    from clinaudit.sources.landing import sha256_file
    from clinaudit.studies.sepsis_ews.outcomes import OUTCOMES_FILE, write_outcomes_batch
    from clinaudit.validation.ingest_loop import ingest_partition

    landing = tmp_path / "landing"
    land_simulated_network(landing, tmp_path / "truth", scale="tiny", months=(1, 2))
    truth = unlabelled_truth(tmp_path / "truth")
    ids = truth["stay_id"].tolist()
    first = _outcomes(
        [(s, int(y), "2024-04-02") for s, y in zip(ids, truth["sepsis"], strict=True)]
    )
    ready = {b.batch: b for b in scan_landing(landing, "sepsis_ews").ready(UNLABELLED_HOSPITAL)}
    old = ingest_stays_batch(ready["2024-01"]).table  # landed labelled
    assert old["sepsis"].notna().all()
    bad = _outcomes([
        ("nope", 1, "2024-04-02"),             # line n+2: unknown stay
        (str(old["stay_id"].iloc[0]), 0, "2024-04-02"),  # n+3: landed labelled
        (ids[0], 0, "2024-04-02"),             # n+4: second outcome in the file
        ("x1", 2, "2024-04-02"),               # n+5: label not 0/1
        ("x2", 1, "2024-02-30"),               # n+6: no such date
    ])  # fmt: skip
    write_outcomes_batch(landing, site=UNLABELLED_HOSPITAL, batch="outcomes-01",
                         outcomes=pd.concat([first, bad]), simulated=True,
                         created_utc="2024-04-03T00:00:00Z")  # fmt: skip
    later = _outcomes([(ids[1], 1 - int(truth["sepsis"].iloc[1]), "2024-05-01")])
    write_outcomes_batch(landing, site=UNLABELLED_HOSPITAL, batch="outcomes-02", outcomes=later,
                         simulated=True, created_utc="2024-05-02T00:00:00Z")  # fmt: skip
    file = landing / "sepsis_ews" / UNLABELLED_HOSPITAL / "outcomes-01" / OUTCOMES_FILE
    digest = sha256_file(file)
    got = STUDY.finish_partition(
        ingest_partition(
            landing, "sepsis_ews", UNLABELLED_HOSPITAL,
            ingest_batch=lambda ref: STUDY.ingest_batch(ref, key=b"", options=None),
            empty_table=STUDY.empty_table(), sort_by=STUDY.sort_by,
        )
    )  # fmt: skip
    table = got.table.set_index("stay_id")
    assert table["sepsis"].notna().all()  # every unlabelled stay got its outcome
    assert table.loc[ids, "sepsis"].tolist() == truth["sepsis"].astype(int).tolist()
    assert list(got.table.columns) == list(STUDY.empty_table().columns)
    assert not STUDY.privacy_problems(got.table)
    n = len(ids)
    q = got.quarantine
    rows = q[q["file"] == OUTCOMES_FILE].sort_values(["batch", "row"])
    found = list(
        zip(rows["batch"], rows["row"].astype(int), rows["column"], rows["check"], strict=True)
    )
    assert found == [
        ("outcomes-01", n + 2, "stay_id", "unknown_stay"),
        ("outcomes-01", n + 3, "stay_id", "outcome_of_labelled"),
        ("outcomes-01", n + 4, "stay_id", "duplicate_outcome"),
        ("outcomes-01", n + 5, "sepsis", "invalid_label"),
        ("outcomes-01", n + 6, "coded_date", "bad_date"),
        ("outcomes-02", 2, "stay_id", "duplicate_outcome"),
    ], found
    assert (rows["fix"] != "").all() and (rows["stay_id"] == "").all()  # no score set aside
    assert "'2' is not 0 or 1" in rows.loc[rows["check"] == "invalid_label", "message"].iloc[0]
    assert "first on line 2" in rows.loc[rows["row"] == n + 4, "message"].iloc[0]
    assert "already has an outcome coded on 2024-04-02" in rows["message"].iloc[-1]
    batches = got.batches.set_index("batch")
    assert batches.loc["outcomes-01", "n_rows_ok"] == n
    assert batches.loc["outcomes-02", "n_rows_ok"] == 0
    assert sha256_file(file) == digest  # landed files are only read
    # A tampered outcomes file refuses the whole batch (bytes checked against the manifest).
    file.chmod(0o644)
    file.write_bytes(file.read_bytes().replace(b"2024-04-02", b"2024-04-01", 1))
    ref = next(b for b in scan_landing(landing, "sepsis_ews").ready(UNLABELLED_HOSPITAL)
               if b.batch == "outcomes-01")  # fmt: skip
    from clinaudit.validation.errors import BatchStructureError

    with pytest.raises(BatchStructureError) as err:
        STUDY.ingest_batch(ref, key=b"", options=None)
    assert err.value.records[0].file == OUTCOMES_FILE


def _settings(threshold: float = 0.5):
    settings = audit_settings(STUDY.load_policy(), threshold=threshold,
                              threshold_source="configured")  # fmt: skip
    label_free = {**settings.extra["label_free"], "n_boot": N_BOOT}
    return replace(settings, n_boot=N_BOOT, extra={**settings.extra, "label_free": label_free})


def test_frozen_estimates_of_a_signed_package_are_scored_once_the_month_is_labelled(
    network, tmp_path
) -> None:
    from portal_fixtures import copy_tree, flip_byte, write_package

    from clinaudit.reporting.signing import ensure_dev_signer
    from clinaudit.studies.sepsis_ews.label_free_scoring import (
        FROZEN_FILE,
        SCORED_COLUMNS,
        score_frozen_estimates,
    )
    from clinaudit.studies.sepsis_ews.unlabelled_months import month_stays_sha256

    frame, truth, unlabelled = network
    hospitals = tuple(sorted(set(frame["hospital"])))
    first = evidence(AuditedStays(frame, hospitals), card=None, settings=_settings())
    lf = first["label_free"]
    month = (frame["hospital"] == "hosp_a") & (frame["admit_month"] == "2024-04")
    assert set(lf["model_sha256"]) == {IDENTITY} and set(lf["threshold"]) == {0.5}
    assert set(lf["stays_sha256"]) == {month_stays_sha256(frame.loc[month, "stay_id"])}
    assert FROZEN_FILE == "tables/label_free.csv"
    reports = tmp_path / "reports"
    signer = ensure_dev_signer(tmp_path / "keys")
    package = write_package(reports, "sepsis_ews", 1, signer, audit=None,
                            attachments={FROZEN_FILE: lf.to_csv(index=False).encode()})  # fmt: skip
    # The month's outcomes land: the same stays, labelled (hosp_b's 5 stays stay unlabelled).
    labels = truth.set_index("stay_id")["sepsis"]
    now = frame.copy()
    now.loc[month, "sepsis"] = frame.loc[month, "stay_id"].map(labels).to_numpy()
    ev = evidence(AuditedStays(now, hospitals), card=None, settings=_settings(), reports=reports)
    assert ev["label_free"].empty  # nothing left to estimate
    facts = ev.fact("label_free")["frozen"]
    assert facts["scored_from"] == {"hosp_a 2024-04": package.dir.name}
    assert facts["packages_read"] == [package.dir.name] and facts["packages_refused"] == []
    cells = ev["label_free_scored"]
    assert list(cells.columns) == list(SCORED_COLUMNS) and len(cells) == 5
    assert set(cells["realised_on"]) == {"the estimated stays"}
    assert set(cells["finding"]) == {"sepsis"} and set(cells["frozen_in"]) == {package.dir.name}
    row = cells.set_index("metric").loc["auroc"]
    m = now[month]
    real = realised_metrics(m["sepsis"].astype(int), m["score"], 0.5)
    assert row["realised"] == pytest.approx(real["auroc"])
    frozen = lf[(lf["method"] == "cbpe") & (lf["metric"] == "auroc")].iloc[0]
    assert row["estimate"] == pytest.approx(frozen["estimate"])
    assert row["error"] == pytest.approx(frozen["estimate"] - real["auroc"])
    # Baseline: the network reference (as labelled now, less the month) carried forward.
    ref = now[now["sepsis"].notna() & ~month]
    base = realised_metrics(ref["sepsis"].astype(int), ref["score"], 0.5)["auroc"]
    assert row["reference"] == pytest.approx(base)
    assert row["baseline_error"] == pytest.approx(base - real["auroc"])
    assert row["covered"] == (frozen["ci_low"] <= real["auroc"] <= frozen["ci_high"])
    summary = ev["label_free_summary"].set_index("metric")
    assert summary.at["auroc", "cells"] == 1 and summary.at["auroc", "estimable"] == 1
    # Another model audited now: not scored, with the reason.
    other = score_frozen_estimates(now, reports=reports, study="sepsis_ews", threshold=0.5,
                                   model_sha256="b" * 64)  # fmt: skip
    assert other.scored.empty
    assert "the audited model is bbbbbbbbbbbb" in other.facts["not_scored"]["hosp_a 2024-04"]
    assert "aaaaaaaaaaaa" in other.facts["not_scored"]["hosp_a 2024-04"]
    # Only half the month labelled yet: not scored, saying how many stays are missing.
    half = now.copy()
    gone = half.index[month.to_numpy()][::2]
    half.loc[gone, "sepsis"] = pd.NA
    partly = score_frozen_estimates(half, reports=reports, study="sepsis_ews", threshold=0.5,
                                    model_sha256=IDENTITY)  # fmt: skip
    assert partly.scored.empty
    assert f"{len(gone)} of its {int(month.sum())} stays are still unlabelled" in partly.facts[
        "not_scored"]["hosp_a 2024-04"]  # fmt: skip
    # A tampered package is refused, named, and never read.
    copy = copy_tree(reports, tmp_path / "copy")
    flip_byte(copy / "sepsis_ews" / package.dir.name / FROZEN_FILE, at=0)
    refused = score_frozen_estimates(now, reports=copy, study="sepsis_ews", threshold=0.5,
                                     model_sha256=IDENTITY)  # fmt: skip
    assert refused.scored.empty and refused.facts["scored_from"] == {}
    assert len(refused.facts["packages_refused"]) == 1
    assert refused.facts["packages_refused"][0].startswith(f"{package.dir.name}: ")
    # The report's PROVISIONAL section shows the scored estimates in their own table.
    from clinaudit.studies.sepsis_ews.report_provisional import provisional_section

    base_result = run_sepsis_audit(
        now.drop(columns=["score", "model_sha256"]), now[["stay_id", "score", "model_sha256"]],
        card=None, threshold=0.5, n_boot=N_BOOT,
    )  # fmt: skip
    assert provisional_section(base_result, 8) is None  # nothing read: no section
    result = replace(
        base_result, label_free=ev["label_free"], label_free_facts=ev.fact("label_free"),
        label_free_scored=ev["label_free_scored"], label_free_summary=ev["label_free_summary"],
    )  # fmt: skip
    section = provisional_section(result, 8)
    assert section is not None and len(section.tables) == 1
    text = " ".join(section.paragraphs)
    assert "Estimates frozen earlier, scored against the labels" in text
    assert f"hosp_a 2024-04 (frozen in {package.dir.name}" in text
    tab = section.tables[0]
    assert "Table 8.1 Estimates frozen earlier" in tab.caption and len(tab.rows) == 5
    assert [c.text for c in tab.rows[0][:3]] == ["hosp_a", "2024-04", "auroc"]
