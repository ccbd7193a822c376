"""The committee portal's pure parts: audit summary, diff, credentials, download log, URLs."""

from __future__ import annotations

import argparse
import json
import math
import stat
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest
from portal_fixtures import criterion, summary

from clinaudit.assets.stage_meta import package_metadata
from clinaudit.portal.auth import AuthConfig, AuthConfigError, Authenticator, ensure_token_file
from clinaudit.portal.diff import diff_packages
from clinaudit.portal.download_log import DownloadLog
from clinaudit.portal.facts import PackageFacts
from clinaudit.portal.server import build_parser, main, portal_config
from clinaudit.portal.urls import package_path, package_url
from clinaudit.reporting.audit_summary import (
    SUMMARY_KEY,
    AuditSummary,
    CriterionOutcome,
    SummaryError,
)

TOKEN = "t" * 32


# --- audit summary --------------------------------------------------------------------------------


def test_summary_round_trip_without_nan() -> None:
    s = summary(
        {"site_a": "GO"},
        [CriterionOutcome("site_a", "ece", math.nan, 0.05, "<=", float("nan"), value_after=0.1)],
    )
    doc = json.loads(json.dumps(s.to_json(), allow_nan=False))  # JSON has no NaN
    assert doc["criteria"][0]["value"] is None and doc["criteria"][0]["passed"] is None
    assert AuditSummary.from_json(doc) == s


def test_summary_errors_list_every_problem() -> None:
    with pytest.raises(SummaryError, match="format None.*decisions is not an object") as info:
        AuditSummary.from_json({"criteria": [{"where": "x"}], "partitions": []})
    assert any("criteria[0]" in p for p in info.value.problems)
    with pytest.raises(SummaryError, match="occur twice"):
        summary({"a": "GO"}, [criterion("a", "auroc", 0.8, 0.7, True)] * 2)


# --- what changed ---------------------------------------------------------------------------------


def _facts(audit: AuditSummary | None, audit_id: str, inputs: dict | None = None) -> PackageFacts:
    manifest = {
        "study": "s",
        "audit_id": audit_id,
        "inputs": inputs or {"s/site_a/b1": "1" * 64},
        "metadata": {SUMMARY_KEY: audit.to_json()} if audit else {},
    }
    return PackageFacts.from_manifest(manifest, study="s", audit_id=audit_id)


def test_diff_decisions_criteria_identity_partitions_inputs() -> None:
    before = summary(
        {"site_a": "GO", "site_b": "GO"},
        [
            criterion("site_a", "auroc", 0.8, 0.7, True),
            criterion("site_b", "auroc", 0.75, 0.7, True),
            criterion("site_b", "ece", 0.03, 0.05, True),
        ],
    )
    after = summary(
        {"site_a": "GO", "site_b": "NO-GO", "site_c": "GO"},
        [
            criterion("site_a", "auroc", 0.8, 0.7, True),
            criterion("site_b", "auroc", 0.75, 0.8, False),
            criterion("site_b", "ece", 0.04, 0.05, True),
            criterion("site_c", "auroc", 0.9, 0.8, True),
        ],
        version="2.0.0",
    )
    d = diff_packages(
        _facts(before, "a1"),
        _facts(after, "a2", {"s/site_a/b1": "2" * 64, "s/site_c/b1": "3" * 64}),
    )
    assert d.comparable and d.anything_changed
    assert [(c.where, c.before, c.after) for c in d.decisions] == [
        ("site_b", "GO", "NO-GO"),
        ("site_c", "—", "GO"),
    ]
    assert d.unchanged_decisions == (("site_a", "GO"),)
    changed = [(c.where, c.criterion, c.outcome_changed) for c in d.criteria]
    assert changed == [
        ("site_b", "auroc", True),  # outcome changes first
        ("site_c", "auroc", True),
        ("site_b", "ece", False),  # the number only
    ]
    assert d.n_criteria_unchanged == 1
    assert {c.what: (c.before, c.after) for c in d.policy}["policy_version"] == ("1.0.0", "2.0.0")
    assert d.model == () and d.thresholds == ()
    assert d.new_partitions == ("site_c",) and d.dropped_partitions == ()
    assert d.inputs_added == ("s/site_c/b1",) and d.inputs_changed == ("s/site_a/b1",)


def test_diff_of_identical_and_undeclared_packages() -> None:
    s = summary({"network": "GO"}, [criterion("network", "auroc", 0.8, 0.7, True)])
    same = diff_packages(_facts(s, "a1"), _facts(s, "a2"))
    assert not same.anything_changed and same.n_criteria_unchanged == 1
    legacy = diff_packages(_facts(None, "a0"), _facts(s, "a1"))
    assert not legacy.comparable and "a0: this package does not declare" in legacy.problems[0]
    other = PackageFacts.from_manifest({"study": "t"}, study="t", audit_id="x")
    with pytest.raises(ValueError, match="cannot be compared"):
        diff_packages(_facts(s, "a1"), other)


# --- credentials ----------------------------------------------------------------------------------


def test_no_credential_refuses_to_start_with_the_fix() -> None:
    with pytest.raises(AuthConfigError, match="CLINAUDIT_PORTAL_TOKEN.*--insecure-local"):
        AuthConfig.from_env({})
    assert AuthConfig.from_env({}, insecure_local=True).insecure_local
    with pytest.raises(AuthConfigError, match="at least 16") as info:
        AuthConfig.from_env(
            {"CLINAUDIT_PORTAL_TOKEN": "short", "CLINAUDIT_PORTAL_USERS": "bob:pw,nocolon"}
        )
    assert len(info.value.problems) == 3  # every problem at once
    config = AuthConfig.from_env(
        {"CLINAUDIT_PORTAL_USERS": "alice:alice-password-1, bob:bob:password-22"}
    )
    assert config.users == {"alice": "alice-password-1", "bob": "bob:password-22"}


def test_identify_methods_and_session_expiry() -> None:
    config = AuthConfig(tokens=(TOKEN,), trusted_user_header="X-Forwarded-User", session_seconds=60)
    auth = Authenticator(config)
    assert auth.identify({"authorization": f"Bearer {TOKEN}"}, "10.0.0.9", None).method == "token"
    header = {"x-forwarded-user": "carol"}
    assert auth.identify(header, "127.0.0.1", None).user == "carol"
    assert auth.identify(header, "10.0.0.9", None) is None  # not from the proxy
    cookie = auth.session_cookie(auth.check_password("", TOKEN), now=1000.0)
    assert auth.read_session(cookie, now=1030.0).user == "token"
    assert auth.read_session(cookie, now=1061.0) is None  # expired
    assert Authenticator(config).read_session(cookie, now=1030.0) is None  # other server secret
    assert auth.identify({"authorization": "Basic !!!"}, None, None) is None


def test_token_file_created_once_private(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "portal_token"
    token = ensure_token_file(path)
    assert len(token) >= 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_token_file(path) == token


def test_server_refuses_insecure_remote_and_missing_credentials(tmp_path: Path, capsys) -> None:
    args = build_parser().parse_args(
        ["--home", str(tmp_path), "--insecure-local", "--host", "0.0.0.0"]
    )
    with pytest.raises(AuthConfigError, match="refused on --host 0.0.0.0"):
        portal_config(args, {})
    assert main(["--home", str(tmp_path)]) == 2
    assert "no credential is configured" in capsys.readouterr().err
    missing = ["--home", str(tmp_path), "--insecure-local", "--trust-root", str(tmp_path / "ca")]
    assert main(missing) == 2
    assert "--trust-root" in capsys.readouterr().err
    ok = portal_config(build_parser().parse_args(["--home", str(tmp_path)]),
                       {"CLINAUDIT_PORTAL_TOKEN": TOKEN})  # fmt: skip
    assert ok.reports == (tmp_path / "reports").resolve()
    assert ok.download_log == (tmp_path / "logs" / "portal_downloads.jsonl").resolve()
    assert {"multisite_cxr", "sepsis_ews"} <= set(ok.studies)  # the registry, not a list here
    assert isinstance(args, argparse.Namespace)


# --- download log, URLs, Dagster metadata ---------------------------------------------------------


def test_download_log_appends_private_lines(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "downloads.jsonl"
    path.parent.mkdir()
    path.write_text('{"earlier": true}\n')
    log = DownloadLog(path)
    entry = dict(user="u", method="token", client="127.0.0.1", study="s", audit_id="a")
    log.record(**entry, file="report.pdf", sha256="0" * 64, size=3, served=True)
    log.record(**entry, file="package.zip", sha256=None, size=None, served=False, reason="x")
    lines = path.read_text().splitlines()
    assert lines[0] == '{"earlier": true}' and len(lines) == 3
    assert [json.loads(line)["file"] for line in lines[1:]] == ["report.pdf", "package.zip"]


def test_package_urls_and_dagster_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLINAUDIT_PORTAL_URL", raising=False)
    assert package_url("s", "a1") == "http://127.0.0.1:3001/studies/s/packages/a1"
    monkeypatch.setenv("CLINAUDIT_PORTAL_URL", "https://audit.example.org/")
    assert package_url("s", "a1") == "https://audit.example.org/studies/s/packages/a1"
    with pytest.raises(ValueError, match="not a simple name"):
        package_path("s", "../keys")
    written = SimpleNamespace(
        audit_id="a1", signer="x", development_signature=True, simulated=True, pages=2,
        n_inputs=3, seconds={},
        package=SimpleNamespace(dir=Path("/r/s/a1"), pdf_path=Path("/r/s/a1/report.pdf"),
                                verdict=SimpleNamespace(ok=True)),
    )  # fmt: skip
    meta = package_metadata(written, {"site_a": "GO"}, portal_url=package_url("s", "a1"))
    assert meta["portal_url"] == dg.MetadataValue.url(
        "https://audit.example.org/studies/s/packages/a1"
    )
