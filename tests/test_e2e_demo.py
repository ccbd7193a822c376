"""End-to-end: `clinaudit demo` at tiny scale, and measured evidence that the sites differ."""

import json
from pathlib import Path

import pandas as pd
import pytest
from system_tools import require_tool

from clinaudit.assets.resources import ClinauditHome, read_stored
from clinaudit.orchestration.cli import main

P = "multisite_cxr"
SITES = {"vendor_dev", "site_a", "site_b", "site_c", "site_d", "site_e", "site_f"}


def _read(home: Path, stage: str, partition: str | None = None):
    """What the pipeline stored for ``multisite_cxr/<stage>`` under the run directory ``home``."""
    return read_stored(ClinauditHome(root=str(home)), f"{P}/{stage}", partition)


# Sidecar feature name -> the ingest quality feature that measures it.
FEATURE = {
    "brightness": "mean_intensity",
    "contrast": "contrast",
    "sharpness": "sharpness",
    "noise": "noise_sigma",
    "pixel_spacing": "pixel_spacing_mm",
}


@pytest.fixture(scope="module")
def demo_home(tiny_demo) -> Path:
    """``clinaudit demo --study multisite_cxr --scale tiny``, run twice (see conftest)."""
    return tiny_demo(P)


def _vendor_package(demo_home: Path) -> str:
    """The demo's embedded vendor model package directory."""
    return _read(demo_home, "model").source


def _audit(demo_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *extra: str) -> Path:
    """Run `clinaudit audit` on the demo landing area into a fresh run dir; return that dir."""
    out = tmp_path / "run"
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    args = ["audit", "--study", P, "--landing", str(demo_home / "landing"), "--out", str(out)]
    assert main([*args, *extra, "--workers", "1"]) == 0
    return out


def test_demo_materializes_every_site(demo_home: Path) -> None:
    tables = demo_home / "artifacts" / "tables" / P
    assert {p.stem for p in (tables / "validated").glob("*.parquet")} == SITES
    cohort = _read(demo_home, "cohort")
    assert set(cohort["site"]) == SITES and (cohort["n_images"] > 0).all()
    vendor = _read(demo_home, "validated", "vendor_dev")
    assert set(vendor["split"]) == {"train", "test"}
    train = set(vendor.loc[vendor["split"] == "train", "patient_pseudonym"])
    test = set(vendor.loc[vendor["split"] == "test", "patient_pseudonym"])
    assert not train & test, "vendor train/test split must be patient-disjoint"
    assert {p.stem for p in (tables / "predictions").glob("*.parquet")} == SITES
    model = _read(demo_home, "model")
    assert model.mode == "embedded" and len(model.identity) == 64
    assert (demo_home / "keys" / "pseudonym.key").stat().st_mode & 0o077 == 0
    assert (demo_home / "dagster_home" / "dagster.yaml").exists()


def test_sites_differ_in_the_directions_the_simulator_intended(demo_home: Path) -> None:
    """Quality features measured by ingest move, versus vendor_dev, as the sidecar declares."""
    reference = _read(demo_home, "validated", "vendor_dev")
    checked = 0
    for sidecar in sorted((demo_home / "simulator_truth" / "cxr").glob("site_*/b0001.json")):
        site = sidecar.parent.name
        pushed = json.loads(sidecar.read_text())["pushed"]
        table = _read(demo_home, "validated", site)
        for name, direction in pushed.items():
            col = FEATURE[name]
            ratio = table[col].median() / reference[col].median()
            assert (ratio > 1.05) if direction == "+" else (ratio < 0.95), (site, name, ratio)
            checked += 1
        if not pushed:  # the control site stays close on every feature
            for col in FEATURE.values():
                ratio = table[col].median() / reference[col].median()
                assert 0.8 < ratio < 1.25, (site, col, ratio)
    assert checked >= 8


def test_audit_command_with_a_vendor_package(
    demo_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`clinaudit audit --model PKG` on landed data: the package is verified, never retrained."""
    package = _vendor_package(demo_home)
    out = _audit(demo_home, tmp_path, monkeypatch, "--model", package, "--sites", "site_b,site_c")
    assert _read(out, "model").mode == "package"
    assert not (out / "artifacts" / "models").exists()  # nothing was trained
    for site in ("site_b", "site_c"):
        mine = _read(out, "predictions", site)
        demo = _read(demo_home, "predictions", site)
        # Same model, same images: same scores. Pseudonyms differ: each run dir has its own key.
        assert not set(mine["patient_pseudonym"]) & set(demo["patient_pseudonym"])
        cols = [c for c in demo.columns if c != "patient_pseudonym"]
        pd.testing.assert_frame_equal(mine[cols], demo[cols])


def test_audit_stage_outputs(demo_home: Path) -> None:
    evidence = _read(demo_home, "evidence")
    metrics = evidence["metrics"]
    assert set(metrics["group"]) == {
        "vendor_dev:test",
        "site_a",
        "site_b",
        "site_c",
        "site_d",
        "site_e",
        "site_f",  # labelled by its reads by the last audit
    }
    assert len(metrics) == 7 * 14
    # Tiny cells: insufficient data is reported as such, never as a number.
    thin = metrics[metrics["status"] != "ok"]
    assert len(thin) > 0 and thin["auroc"].isna().all()
    assert {"calibration", "reliability", "worst_cells", "drift"} <= set(evidence.tables)
    tables = demo_home / "artifacts" / "tables" / P
    assert {p.stem for p in (tables / "partition_metrics").glob("*.parquet")} == SITES
    assert json.loads(evidence.files["metrics.json"])  # an output of the stage, not a side file
    # The settings the numbers were computed with travel with them (the report prints these).
    settings = evidence.facts["settings"]
    assert settings["p_adjust"] == "holm" and settings["drift"]["psi_major"] == 0.25


def test_drift_matches_the_injected_site_effects(demo_home: Path) -> None:
    """Each feature the simulator pushed is significantly shifted in that direction; the control
    site stays within 15% of the reference on every quality feature (its small undeclared
    differences, e.g. 8% more noise, are real and may be significant, but are not large).
    The audit never reads the sidecar; this test does."""
    drift = _read(demo_home, "evidence")["drift"]
    numeric = drift[drift["kind"] == "numeric"].set_index(["group", "feature"])
    for sidecar in sorted((demo_home / "simulator_truth" / "cxr").glob("site_*/b0001.json")):
        site = sidecar.parent.name
        pushed = json.loads(sidecar.read_text())["pushed"]
        for name, direction in pushed.items():
            row = numeric.loc[(site, FEATURE[name])]
            assert row["p_adj"] < 0.05, (site, name, row["p_adj"])
            # Direction from the means (the SMD is undefined for a site-constant pixel spacing).
            up = row["mean"] > row["reference_mean"]
            assert up == (direction == "+"), (site, name, row["mean"], row["reference_mean"])
        if not pushed:
            for col in FEATURE.values():
                row = numeric.loc[(site, col)]
                assert abs(row["mean"] / row["reference_mean"] - 1) < 0.15, (site, col)


def _packages(home: Path) -> list[Path]:
    return sorted(p for p in (home / "reports" / "multisite_cxr").iterdir() if p.is_dir())


def test_demo_decides_every_site_under_the_shipped_policy(demo_home: Path) -> None:
    from clinaudit.studies.multisite_cxr.policy import load_policy

    decided = _read(demo_home, "decisions")
    decisions = decided["decisions"]
    # site_f landed unlabelled, then its reads: by the last audit every site is labelled.
    assert sorted(decisions["site"]) == sorted(SITES - {"vendor_dev"})
    assert decided["provisional"].empty
    assert set(decisions["decision"]) <= {"GO", "CONDITIONAL GO", "NO-GO"}
    assert (decisions["policy_sha256"] == load_policy().sha256).all()
    assert decisions["reasons"].str.len().gt(10).all()
    assert decided.facts["policy_sha256"] == load_policy().sha256
    criteria = decided["criteria"]
    assert set(criteria["site"]) == set(decisions["site"])
    recalibration = _read(demo_home, "mitigation_recalibration")
    maps = json.loads(recalibration.files["recalibration_maps.json"])
    assert maps["version"] == 1


def test_each_demo_run_writes_a_new_verified_signed_package(demo_home: Path) -> None:
    import subprocess

    from clinaudit.reporting.verify import pdfsig_report, verify_pdf

    packages = _packages(demo_home)
    # The first demo run audits twice (site_f without labels, then with its reads); the second
    # run lands nothing new and audits once: three packages, none replaced.
    assert len(packages) == 3, "three audits -> three packages, the earlier ones kept"
    for pkg in packages:
        verdict = verify_pdf(pkg / "report.pdf", package_dir=pkg)
        assert verdict.ok, [c for c in verdict.checks if not c.ok]
        assert verdict.is_development
    require_tool("pdfsig", "poppler-utils")
    valid, text = pdfsig_report(packages[-1] / "report.pdf")
    assert valid and "Signature is Valid" in text
    pdftotext = require_tool("pdftotext", "poppler-utils")
    text = subprocess.run(
        [pdftotext, str(packages[-1] / "report.pdf"), "-"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert text.count("SIMULATED DATA") >= 5  # the band on every page
    assert "GO" in text and "Executive summary" in text


def test_no_dicom_patient_identifier_reaches_the_report(demo_home: Path) -> None:
    import subprocess

    import pydicom

    pdftotext = require_tool("pdftotext", "poppler-utils")
    pdf = _packages(demo_home)[-1] / "report.pdf"
    text = subprocess.run(
        [pdftotext, str(pdf), "-"], capture_output=True, text=True, check=True
    ).stdout
    identifiers = set()
    for dcm in sorted((demo_home / "landing" / "cxr").rglob("*.dcm"))[::7]:
        ds = pydicom.dcmread(dcm, stop_before_pixels=True)
        identifiers |= {str(ds.get("PatientName", "")), str(ds.get("PatientID", ""))}
    identifiers = {i for i in identifiers if len(i) >= 4}
    assert len(identifiers) > 20
    leaked = sorted(i for i in identifiers if i in text)
    assert not leaked, leaked[:5]


def test_verify_fails_when_one_signed_byte_changes(demo_home: Path, tmp_path: Path) -> None:
    from clinaudit.reporting.verify import verify_pdf

    original = (_packages(demo_home)[-1] / "report.pdf").read_bytes()
    tampered = bytearray(original)
    at = original.index(b"/Title")  # inside the signed byte range (the info dictionary)
    tampered[at + 1] ^= 0x01
    path = tmp_path / "tampered.pdf"
    path.write_bytes(bytes(tampered))
    assert not verify_pdf(path).ok
    assert main(["verify", str(path), "--no-pdfsig"]) == 1


def test_audit_command_prints_decisions_under_a_user_policy(
    demo_home: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`clinaudit audit --policy FILE`: the user's policy decides, and its hash is recorded."""
    import yaml

    from clinaudit.studies.multisite_cxr.policy import load_policy, shipped_policy

    raw = yaml.safe_load(shipped_policy().read_text())
    raw["version"] = "1.0.1-strict"
    raw["criteria"]["auroc"]["floor"] = 0.99  # nothing passes: every site NO-GO
    policy = tmp_path / "strict.yaml"
    policy.write_text(yaml.safe_dump(raw, sort_keys=False))
    package = _vendor_package(demo_home)
    out = _audit(demo_home, tmp_path, monkeypatch, "--model", package, "--policy", str(policy))
    printed = capsys.readouterr().out
    assert "decisions under policy clinaudit.multisite_cxr.site_deployment v1.0.1-strict" in printed
    decisions = _read(out, "decisions")["decisions"]
    assert (decisions["decision"] == "NO-GO").all()
    assert (decisions["policy_sha256"] == load_policy(policy).sha256).all()
    for site in decisions["site"]:
        assert f"  {site:<12} NO-GO" in printed
    assert "signed audit PDF" in printed and "VERIFIED" in printed


def _page_one(pdf: Path) -> str:
    import subprocess

    pdftotext = require_tool("pdftotext", "poppler-utils")
    return subprocess.run(
        [pdftotext, "-l", "1", str(pdf), "-"], capture_output=True, text=True, check=True
    ).stdout


def _scores_folder(demo_home: Path, tmp_path: Path) -> Path:
    """The demo's predictions written as vendor scores CSVs (one per site)."""
    from clinaudit.sources.cxr_labels import FINDINGS

    scores = tmp_path / "scores"
    scores.mkdir()
    for site in sorted(SITES):
        pred = _read(demo_home, "predictions", site)
        pred.rename(columns={"image_id": "Image Index"})[["Image Index", *FINDINGS]].to_csv(
            scores / f"{site}.csv", index=False
        )
    return scores


def test_scores_only_audit_with_the_vendor_thresholds_decides_as_the_model_does(
    demo_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Vendor scores + the vendor's thresholds file: same stages, no re-training, a verified
    package, and the decisions of the audit of the model itself (same scores, same operating
    points); page 1 says where the thresholds come from."""
    from clinaudit.reporting.verify import verify_pdf

    thresholds = tmp_path / "thresholds.json"
    thresholds.write_text(json.dumps(dict(_read(demo_home, "model").thresholds)))
    scores = _scores_folder(demo_home, tmp_path)
    out = _audit(
        demo_home,
        tmp_path,
        monkeypatch,
        "--predictions",
        str(scores),
        "--thresholds",
        str(thresholds),
    )
    retrained = _read(out, "mitigation_retraining")["retrained_model"].iloc[0]
    assert retrained["status"] == "not run" and "scores only" in retrained["reason"]
    mine = _read(out, "decisions")["decisions"].set_index("site")
    model = _read(demo_home, "decisions")["decisions"].set_index("site")
    pd.testing.assert_series_equal(mine["decision"], model["decision"])
    pd.testing.assert_series_equal(mine["reasons"], model["reasons"])
    (package,) = sorted((out / "reports" / "multisite_cxr").iterdir())
    verdict = verify_pdf(package / "report.pdf", package_dir=package)
    assert verdict.ok, [c for c in verdict.checks if not c.ok]
    manifest = json.loads((package / "manifest.json").read_text())
    assert len(manifest["inputs"]["model_package"]) == 64  # hash of the scores files
    page = " ".join(_page_one(package / "report.pdf").split())
    assert "Operating thresholds: the vendor's thresholds file thresholds.json" in page


def test_scores_only_audit_without_thresholds_states_the_derived_rule_on_page_one(
    demo_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No thresholds file: never 0.5 silently; the rule used is on page 1 and in the reasons."""
    scores = _scores_folder(demo_home, tmp_path)
    out = _audit(demo_home, tmp_path, monkeypatch, "--predictions", str(scores))
    model = _read(out, "model")
    assert model.threshold_source.startswith("derived by the audit, not the vendor")
    assert set(model.thresholds.values()) != {0.5}
    criteria = _read(out, "decisions")["criteria"]
    sens = criteria[criteria["criterion"] == "sensitivity"]
    assert len(sens) and sens["evidence"].str.contains("derived on the reference").all()
    (package,) = sorted((out / "reports" / "multisite_cxr").iterdir())
    page = " ".join(_page_one(package / "report.pdf").split())
    assert "Operating thresholds: derived by the audit, not the vendor" in page
    assert "80% sensitivity on the reference test split" in page


def test_a_site_left_out_of_the_audit_is_named_in_the_signed_report(
    demo_home: Path, tmp_path: Path
) -> None:
    """A site whose predictions went stale is left out of the cross-site audit, and the signed
    report says which site and why (not only the Dagster metadata)."""
    import shutil
    import subprocess

    import dagster as dg
    from pipeline_helpers import materialize

    from clinaudit.assets.resources import stored_path, write_value

    copy = tmp_path / "home"
    shutil.copytree(demo_home, copy, ignore=shutil.ignore_patterns("dagster_home"))
    home = ClinauditHome(root=str(copy))
    stale = _read(copy, "predictions", "site_c").iloc[:-3]  # new images landed, not yet scored
    write_value(stored_path(home, dg.AssetKey([P, "predictions"]), "site_c"), stale)
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(f"{P}_sites", sorted(SITES))
        for stage in ("evidence", "mitigation_recalibration", "decisions", "monitoring", "package"):
            assert materialize(home, instance, P, stage).success, stage
    assert "site_c" not in set(_read(copy, "decisions")["decisions"]["site"])
    assert "stale" in _read(copy, "evidence").facts["left_out"]["site_c"]
    newest = sorted((copy / "reports" / P).iterdir())[-1]
    pdftotext = require_tool("pdftotext", "poppler-utils")
    text = subprocess.run(
        [pdftotext, str(newest / "report.pdf"), "-"], capture_output=True, text=True, check=True
    ).stdout
    assert "left out of this audit" in text
    assert "site_c" in text and "predictions are stale" in text
    page = " ".join(_page_one(newest / "report.pdf").split())
    assert "Not audited (1 landed sites): site_c" in page


def test_a_quarantined_image_never_breaks_a_scores_only_audit(
    demo_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """One image truncated before the sender wrote the manifest (quarantined at ingest) whose
    vendor score is in the site's scores file: the site is still audited on its other images,
    the score is set aside and counted, and the report says so. Another site's scores file with
    a percentage in it fails that site's predictions: the terminal prints the one-line error
    with the fix, and page 1 names the site with that reason."""
    import shutil

    from cxr_fixtures import make_manifest

    landing = tmp_path / "landing"
    shutil.copytree(demo_home / "landing", landing)
    (batch,) = sorted((landing / "cxr" / "site_b").iterdir())
    victim = sorted((batch / "images").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:300])  # truncated at the sender
    (batch / "manifest.json").unlink()
    make_manifest(batch)
    scores = _scores_folder(demo_home, tmp_path)
    bad = pd.read_csv(scores / "site_c.csv")
    bad.loc[1, "Effusion"] = 87.0
    bad.to_csv(scores / "site_c.csv", index=False)
    thresholds = tmp_path / "thresholds.json"
    thresholds.write_text(json.dumps(dict(_read(demo_home, "model").thresholds)))
    out = tmp_path / "run"
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    args = ["audit", "--study", P, "--landing", str(landing), "--out", str(out),
            "--predictions", str(scores), "--thresholds", str(thresholds),
            "--workers", "1"]  # fmt: skip
    assert main(args) == 1  # site_c's predictions failed
    printed = capsys.readouterr().out
    assert "predictions" in printed and "site_c" in printed and "FAILED" in printed
    line = next(x for x in printed.splitlines() if x.strip().startswith("error:") and "site_c" in x)
    assert "column 'Effusion'" in line and "looks like a percentage: write 0.87" in line
    decisions = _read(out, "decisions")["decisions"]
    assert "site_b" in set(decisions["site"]) and "site_c" not in set(decisions["site"])
    evidence = _read(out, "evidence")
    before = _read(demo_home, "evidence").facts["intake"]["images_quarantined"]
    after = evidence.facts["intake"]["images_quarantined"]
    assert after["site_b"] == before.get("site_b", 0) + 1  # the simulator's bad rows + ours
    assert evidence.facts["intake"]["scores_set_aside"] == {"site_b": 1}
    assert "its predictions stage failed" in evidence.facts["left_out"]["site_c"]
    (package,) = sorted((out / "reports" / P).iterdir())
    text = " ".join(_page_one(package / "report.pdf").split())
    assert "Not audited (1 landed sites): site_c: its predictions stage failed" in text
    pdftotext = require_tool("pdftotext", "poppler-utils")
    import subprocess

    full = subprocess.run(
        [pdftotext, str(package / "report.pdf"), "-"], capture_output=True, text=True, check=True
    ).stdout
    full = " ".join(full.split())
    assert (
        "Quarantined at ingest and not audited: site_b 1 image (the vendor's scores of 1 set"
        in full
    )
    assert "5 candidate sites" in full and "site_c; the reasons are on page 1" in full


def test_unlabelled_site_is_provisional_then_its_frozen_estimates_are_scored(
    demo_home: Path, tmp_path: Path
) -> None:
    """site_f lands without labels: the first package estimates it (PROVISIONAL, frozen as
    label_free.csv, named on page 1); its reads land and the next package scores exactly those
    frozen estimates against the realised values; a changed frozen file is never read."""
    import shutil

    from clinaudit.reporting.prior_packages import signed_attachments

    first, second, third = _packages(demo_home)
    frozen = pd.read_csv(first / "label_free.csv")
    assert set(frozen["site"]) == {"site_f"} and frozen["finding"].nunique() == 14
    assert (frozen["ci_level"] == 0.90).all()
    # Tiny scale: 33 reference images leave most findings too few positives; a withheld cell
    # states why and carries no number, an estimated one carries its interval.
    withheld = frozen[~frozen["estimable"].astype(bool)]
    assert withheld["estimate"].isna().all() and withheld["reason"].str.len().gt(0).all()
    assert withheld["reason"].str.contains("fewer than 10").sum() >= 10 * 6
    estimated = frozen[frozen["estimable"].astype(bool) & (frozen["method"] == "cbpe")]
    assert estimated[["estimate", "ci_low", "ci_high"]].notna().all().all()
    n_estimated = estimated.loc[estimated["metric"] == "auroc", "finding"].nunique()
    provisional = pd.read_csv(first / "provisional_decisions.csv")
    assert provisional["site"].tolist() == ["site_f"]
    assert provisional["decision"].tolist() == ["NO-GO"]  # withheld estimates never pass
    assert "site_f" not in set(pd.read_csv(first / "decisions.csv")["site"])
    assert "PROVISIONAL: site_f landed images without labels" in _page_one(first / "report.pdf")
    for later in (second, third):
        summary = pd.read_csv(later / "label_free_summary.csv")
        assert set(summary["site"]) == {"site_f"}
        assert set(summary["frozen_in"]) == {first.name}
        assert (summary["cells"] == 14).all()
        assert summary.set_index("metric").loc["auroc", "estimable"] <= n_estimated
        assert pd.read_csv(later / "label_free.csv").empty  # nothing left unlabelled
        assert "site_f" in set(pd.read_csv(later / "decisions.csv")["site"])
    # A frozen file changed after signing: that package is refused and named, never read.
    copy = tmp_path / "reports"
    shutil.copytree(demo_home / "reports", copy)
    target = copy / "multisite_cxr" / first.name / "label_free.csv"
    target.chmod(0o644)
    target.write_bytes(target.read_bytes().replace(b"site_f", b"site_x"))
    found, refused = signed_attachments(copy, "multisite_cxr", "label_free.csv")
    assert first.name not in {a.audit_id for a in found}
    assert [r.split(":")[0] for r in refused] == [first.name]
