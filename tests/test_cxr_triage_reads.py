"""Study cxr_triage: reads of backlog studies land, attach, check the certificate on the backlog
and drive the re-read monitor's automatic fallback to FIFO."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cxr_triage_fixtures import POLICY, scored_table, small_workload, with_reads

from clinaudit.sources.cxr_labels import FINDINGS
from clinaudit.sources.landing import BatchRef, read_manifest
from clinaudit.sources.triage_simulator import PILE_BATCH, pile_reads_truth, simulate_triage_site
from clinaudit.studies.cxr_triage.backlog import audit_order, backlog_audit, reread_monitor
from clinaudit.studies.cxr_triage.certify import certify_triage
from clinaudit.studies.cxr_triage.data import with_targets
from clinaudit.studies.cxr_triage.decisions import FALLBACK_MODE, decide_triage
from clinaudit.studies.cxr_triage.evidence import evidence_tableset
from clinaudit.studies.cxr_triage.reads import ingest_reads_batch, write_reads_batch
from clinaudit.studies.cxr_triage.study import READS_BATCH, CxrTriage, land_demo_reads
from clinaudit.studies.cxr_triage.throughput import simulate_throughput
from clinaudit.validation.errors import BatchStructureError
from clinaudit.validation.ingest_loop import ingest_partition

KEY = b"k" * 32
SITE = "triage_a"
STUDY = CxrTriage()
OPTIONS = STUDY.ingest_options()


def _reads(rows: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["image_id", "finding_labels", "read_date", "reason"])


def _ref(landing: Path, batch: str) -> BatchRef:
    return BatchRef("cxr_triage", SITE, batch, landing / "cxr_triage" / SITE / batch, True)


# ---------------------------------------------------------------------------------- format


def test_a_reads_batch_round_trips_and_bad_rows_name_line_column_and_fix(tmp_path: Path) -> None:
    reads = _reads(
        [
            ("a.dcm", "No Finding", "2024-02-01", "audit_sample"),
            ("b.dcm", "Mass|Effusion", "2024-02-01", "reread"),
            ("c.dcm", "Masss", "2024-02-02", "reread"),
            ("d.dcm", "No Finding", "02/03/2024", "reread"),
            ("e.dcm", "No Finding", "2024-02-03", "second_opinion"),
            ("a.dcm", "Mass", "2024-02-04", "reread"),
            ("f.dcm", "", "2024-02-04", "reread"),
        ]
    )
    write_reads_batch(
        tmp_path, site=SITE, batch="reads-0001", reads=reads, simulated=True,
        created_utc="2024-02-05T00:00:00Z",
    )  # fmt: skip
    res = ingest_reads_batch(_ref(tmp_path, "reads-0001"))
    assert res.n_rows_in == 7 and res.simulated and len(res.table) == 0
    got = res.extras["reads"]
    assert got["image_id"].tolist() == ["a.dcm", "b.dcm"]
    assert got["read_reason"].tolist() == ["audit_sample", "reread"]
    assert got["read_batch"].eq("reads-0001").all()
    q = res.quarantine.set_index("row")
    assert set(q["file"]) == {"pile_reads.csv"}
    # Header is line 1: the third read is line 4.
    assert q.loc[4, "column"] == "Finding Labels" and "did you mean 'Mass'" in q.loc[4, "message"]
    assert q.loc[5, "column"] == "Read Date" and "YYYY-MM-DD" in q.loc[5, "fix"]
    assert q.loc[6, "column"] == "Reason" and "second_opinion" in q.loc[6, "message"]
    assert q.loc[7, "column"] == "Image Index" and "first on line 2" in q.loc[7, "message"]
    assert q.loc[8, "column"] == "Finding Labels" and "No Finding" in q.loc[8, "fix"]


def test_a_reads_batch_must_match_its_manifest_and_hold_only_the_reads(tmp_path: Path) -> None:
    reads = _reads([("a.dcm", "No Finding", "2024-02-01", "reread")])
    batch_dir = write_reads_batch(
        tmp_path, site=SITE, batch="reads-0001", reads=reads, simulated=False,
        created_utc="2024-02-05T00:00:00Z",
    )  # fmt: skip
    csv = batch_dir / "pile_reads.csv"
    original = csv.read_bytes()
    csv.write_bytes(original.replace(b"No Finding", b"Mass      "))
    with pytest.raises(BatchStructureError) as err:
        ingest_reads_batch(_ref(tmp_path, "reads-0001"))
    assert "sha256 differs" in err.value.records[0].message
    csv.write_bytes(original)
    (batch_dir / "notes.txt").write_text("x")
    with pytest.raises(BatchStructureError) as err:
        ingest_reads_batch(_ref(tmp_path, "reads-0001"))
    assert {r.file for r in err.value.records} >= {"notes.txt"}
    with pytest.raises(Exception, match="immutable"):
        write_reads_batch(
            tmp_path, site=SITE, batch="reads-0001", reads=reads, simulated=False,
            created_utc="2024-02-05T00:00:00Z",
        )  # fmt: skip


# ---------------------------------------------------------------------------------- landed site


@pytest.fixture(scope="module")
def landed(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("triage_reads")
    landing, truth = root / "landing", root / "truth"
    simulate_triage_site(landing, truth_root=truth, site=SITE, scale="tiny", seed=3, workers=1)
    land_demo_reads(landing, truth, scale="tiny")
    return landing, truth


def _ingest(landing: Path):
    return STUDY.finish_partition(
        ingest_partition(
            landing, "cxr_triage", SITE,
            ingest_batch=lambda ref: STUDY.ingest_batch(ref, key=KEY, options=OPTIONS),
            empty_table=STUDY.empty_table(), sort_by=STUDY.sort_by,
        )
    )  # fmt: skip


def test_demo_reads_attach_to_backlog_rows_and_never_become_labels(landed) -> None:
    landing, truth = landed
    part = _ingest(landing)
    t = part.table
    read = t[t["read_reason"] != ""]
    n_pile = int((t["batch"] == PILE_BATCH).sum())
    # tiny: half the backlog as the audit sample, the next 30 % as re-reads.
    assert (read["read_reason"] == "audit_sample").sum() == round(0.5 * n_pile)
    assert (read["read_reason"] == "reread").sum() == round(0.3 * n_pile)
    assert read["batch"].eq(PILE_BATCH).all() and read["read_batch"].eq(READS_BATCH).all()
    assert read[list(FINDINGS)].isna().all().all()  # still unlabelled: never train/calibration
    rows = part.batches.set_index("batch")
    assert rows.loc[READS_BATCH, "status"] == "ingested"
    assert rows.loc[READS_BATCH, "n_rows_ok"] == len(read)
    # The read is the simulated reader's written labels.
    expected = pile_reads_truth(truth, site=SITE).set_index("image_id")["finding_labels"]
    assert (read["read_findings"] == expected.loc[read["image_id"]].to_numpy()).all()
    targets = with_targets(t, POLICY)
    assert set(targets.loc[read.index, "triage_split"]) == {"pile"}
    abnormal = targets.loc[read.index, "read_abnormal"]
    assert (abnormal == (read["read_findings"] != "No Finding").astype(float)).all()


def test_reads_of_unknown_labelled_or_already_read_images_are_quarantined(
    landed, tmp_path: Path
) -> None:
    import shutil

    landing = tmp_path / "landing"
    shutil.copytree(landed[0], landing)
    base = _ingest(landing).table
    dev_image = base.loc[base["batch"] == "dev-0001", "image_id"].iloc[0]
    read_image = base.loc[base["read_reason"] != "", "image_id"].iloc[0]
    unread = base.loc[(base["batch"] == PILE_BATCH) & (base["read_reason"] == ""), "image_id"]
    reads = _reads(
        [
            ("nobody.dcm", "No Finding", "2024-03-01", "reread"),
            (dev_image, "No Finding", "2024-03-01", "reread"),
            (read_image, "Mass", "2024-03-01", "reread"),
            (unread.iloc[0], "Pneumothorax", "2024-03-01", "reread"),
        ]
    )
    write_reads_batch(
        landing, site=SITE, batch="reads-0002", reads=reads, simulated=True,
        created_utc="2024-03-02T00:00:00Z",
    )  # fmt: skip
    part = _ingest(landing)
    q = part.quarantine[part.quarantine["batch"] == "reads-0002"].set_index("row")
    assert q.loc[2, "check"] == "unknown_image" and "land the backlog" in q.loc[2, "fix"]
    assert q.loc[3, "check"] == "read_of_labelled"
    first = base.set_index("image_id").loc[read_image, "read_date"]
    assert q.loc[4, "check"] == "duplicate_read"
    assert f"already read on {first} (batch {READS_BATCH})" in q.loc[4, "message"]
    t = part.table.set_index("image_id")
    assert t.loc[read_image, "read_batch"] == READS_BATCH  # the first read counts
    assert t.loc[unread.iloc[0], "read_findings"] == "Pneumothorax"
    rows = part.batches.set_index("batch")
    assert rows.loc["reads-0002", "n_rows_ok"] == 1 and rows.loc["reads-0002", "n_quarantined"] == 3
    # Nothing landed was modified.
    assert json.loads((landing / "cxr_triage" / SITE / "reads-0002" / "manifest.json").read_text())


# ---------------------------------------------------------------------------------- evidence


def test_audit_order_is_a_stable_label_free_permutation() -> None:
    ids = [f"img{i:04d}.dcm" for i in range(200)]
    rank = audit_order(["s"] * 200, ids)
    assert sorted(rank.tolist()) == list(range(200))
    shuffled = np.random.default_rng(0).permutation(200)
    again = audit_order(["s"] * 200, [ids[i] for i in shuffled])
    assert (again == np.argsort(np.argsort(rank[shuffled]))).all()
    # Landing more backlog keeps the relative order of what was there.
    more = audit_order(["s"] * 300, [*ids, *[f"new{i}.dcm" for i in range(100)]])
    assert (np.argsort(np.argsort(more[:200])) == rank).all()


@pytest.fixture(scope="module")
def scored():
    return scored_table(2, n=30000, pile=4000)


def test_the_audit_sample_checks_the_rule_on_the_backlog_itself(scored) -> None:
    table = with_reads(scored, audit=1500, reread=0)
    cert = certify_triage(table, POLICY, seed=0)
    sample = cert.rows[cert.rows["split"] == "pile"][["image_id", "site"]].head(1000)
    out, facts = backlog_audit(cert.rows, sample, ci_level=0.95)
    read = cert.rows[cert.rows["read_reason"] == "audit_sample"]
    abnormal = read["read_abnormal"] == 1.0
    row = out.set_index("metric").loc["miss_rate"]
    assert row["n"] == abnormal.sum() and row["k"] == (abnormal & (read["bucket"] == "clear")).sum()
    assert facts["n_read"] == 1500 and facts["n_drawn"] == 1000
    assert facts["n_read_of_drawn"] == len(set(sample["image_id"]) & set(read["image_id"]))
    ts = evidence_tableset(
        cert,
        simulate_throughput(cert.rows[cert.rows["split"] == "pile"], small_workload(), seed=0),
        simulated=True, left_out={}, settings={}, policy=POLICY,
    )  # fmt: skip
    # The drawn sample is the audit order's prefix, so the reads landed cover it.
    assert ts.facts["backlog_audit"]["n_read_of_drawn"] == len(ts["audit_sample"])
    _, criteria = decide_triage(cert, POLICY, backlog=ts["backlog_audit"])
    crit = criteria.set_index("criterion").loc["backlog_miss_rate"]
    assert (
        crit["passed"]
        and crit["value"] == ts["backlog_audit"].set_index("metric").loc["miss_rate", "ci_low"]
    )


def test_no_reads_leave_the_backlog_criterion_pending_and_the_monitor_waiting(scored) -> None:
    cert = certify_triage(scored, POLICY, seed=0)
    empty = cert.rows.head(0)[["image_id", "site"]]
    audit, _ = backlog_audit(cert.rows, empty, ci_level=0.95)
    monitor = reread_monitor(cert.rows, cert, POLICY, auto_clear=True)
    assert monitor["status"].iloc[0] == "no re-reads yet" and not monitor["alarm"].iloc[0]
    table, criteria = decide_triage(cert, POLICY, backlog=audit, monitor=monitor)
    crit = criteria.set_index("criterion").loc["backlog_miss_rate"]
    assert crit["passed"] and np.isnan(crit["value"]) and "pending" in crit["detail"]
    assert table["mode"].iloc[0] == "priority + auto-clear"


def test_a_backlog_that_contradicts_the_certificate_turns_auto_clear_off(scored) -> None:
    table = with_reads(scored, audit=3000, reread=0)
    # Every cleared audit-sample study is read abnormal: far above a 1 % miss rate.
    cleared = certify_triage(table, POLICY, seed=0).rows.query("bucket == 'clear'")["image_id"]
    hit = table["image_id"].isin(cleared) & (table["read_reason"] == "audit_sample")
    table.loc[hit, "read_abnormal"] = 1.0
    cert = certify_triage(table, POLICY, seed=0)
    audit, _ = backlog_audit(cert.rows, cert.rows.head(0), ci_level=0.95)
    decision, criteria = decide_triage(cert, POLICY, backlog=audit)
    crit = criteria.set_index("criterion").loc["backlog_miss_rate"]
    assert not crit["passed"] and crit["value"] > POLICY.criteria.backlog_miss_rate.threshold
    assert decision["mode"].iloc[0] == "priority ordering only"


def test_re_reads_as_certified_raise_no_alarm(scored) -> None:
    cert = certify_triage(with_reads(scored, audit=0, reread=4000), POLICY, seed=0)
    m = reread_monitor(cert.rows, cert, POLICY, auto_clear=True).iloc[0]
    assert m["status"] == "no alarm" and m["n_monitored"] > 100
    assert m["n_monitored"] + m["n_not_cleared"] == m["n_rereads"] == 4000


def test_a_drift_in_the_cleared_bucket_raises_the_alarm_and_falls_back_to_fifo(scored) -> None:
    drifted = with_reads(scored, audit=0, reread=4000, planted_abnormal=0.2, seed=1)
    cert = certify_triage(drifted, POLICY, seed=0)
    monitor = reread_monitor(cert.rows, cert, POLICY, auto_clear=True)
    m = monitor.iloc[0]
    assert m["status"] == "alarm" and m["alarm"] and m["max_e_value"] >= 1 / POLICY.monitoring.level
    cleared = cert.rows[(cert.rows["read_reason"] == "reread") & (cert.rows["bucket"] == "clear")]
    cleared = cleared.sort_values(["read_date", "site", "image_id"], kind="stable")
    assert m["alarm_date"] == cleared["read_date"].iloc[int(m["alarm_at"]) - 1]
    table, _ = decide_triage(cert, POLICY, monitor=monitor)
    row = table.iloc[0]
    assert row["decision"] == "CONDITIONAL GO" and row["mode"] == FALLBACK_MODE
    assert f"alarm on {m['alarm_date']}" in row["reasons"]
    assert "FIFO" in row["conditions"] and "re-certifies" in row["conditions"]


def test_docstring_examples_run() -> None:
    import doctest

    from clinaudit.sources import nih_labels
    from clinaudit.studies.cxr_triage import backlog, labels

    for module in (backlog, labels, nih_labels):
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_a_reads_batch_landing_requests_a_re_audit_of_its_site(tmp_path: Path) -> None:
    import dagster as dg

    from clinaudit.assets.factory import partition_job
    from clinaudit.assets.resources import ClinauditHome, LandingWatch
    from clinaudit.orchestration.sensors import build_landing_sensor

    sensor = build_landing_sensor(STUDY, partition_job(STUDY))
    home = ClinauditHome(root=str(tmp_path))

    def tick(instance, cursor):
        ctx = dg.build_sensor_context(
            cursor=cursor, instance=instance,
            resources={"home": home, "landing_watch": LandingWatch(quarantine_after_s=86400.0)},
        )  # fmt: skip
        result = sensor(ctx)
        for req in result.dynamic_partitions_requests or []:
            instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
        return result

    reads = _reads([("a.dcm", "No Finding", "2024-02-01", "reread")])
    with dg.DagsterInstance.ephemeral() as instance:
        write_reads_batch(
            home.landing, site=SITE, batch="reads-0001", reads=reads, simulated=True,
            created_utc="2024-02-02T00:00:00Z",
        )  # fmt: skip
        first = tick(instance, None)
        assert [r.partition_key for r in first.run_requests] == [SITE]
        d = write_reads_batch(
            home.landing, site=SITE, batch="reads-0002",
            reads=_reads([("b.dcm", "Mass", "2024-02-03", "reread")]), simulated=True,
            created_utc="2024-02-04T00:00:00Z",
        )  # fmt: skip
        second = tick(instance, first.cursor)
        assert [r.run_key for r in second.run_requests] == [
            f"{SITE}:reads-0002:{read_manifest(d).content_hash}"
        ]
