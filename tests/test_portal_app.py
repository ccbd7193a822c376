"""The committee portal's app (Starlette TestClient) over small signed packages of two studies.

Three packages of ``study_a`` (the second changes a decision, adds a site and bumps the policy;
the third declares no audit summary) and one of ``study_b``. Tampering tests work on a copy.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import stat
import zipfile
from pathlib import Path

import pytest
from portal_fixtures import TOKEN, copy_tree, criterion, flip_byte, summary, write_package
from starlette.testclient import TestClient
from system_tools import require_tool

from clinaudit.portal.app import PortalConfig, create_app
from clinaudit.portal.auth import AuthConfig
from clinaudit.portal.middleware import TraversalGuard
from clinaudit.reporting.signing import ensure_dev_signer

STUDIES = {"study_a": "Study A", "study_b": "Study B", "study_c": "Study C (no package yet)"}
BEARER = {"Authorization": f"Bearer {TOKEN}"}
USERS = {"alice": "alice-password-123"}


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict:
    require_tool("pdfsig", "poppler-utils")
    home = tmp_path_factory.mktemp("portal_home")
    signer = ensure_dev_signer(home / "keys")
    root = home / "reports"
    first = summary(
        {"site_a": "GO", "site_b": "CONDITIONAL GO"},
        [
            criterion("site_a", "auroc ci_low", 0.81, 0.7, True),
            criterion(
                "site_b", "auroc ci_low", 0.72, 0.7, True, value_after=0.75, passed_after=True
            ),
            criterion("site_b", "ece", 0.04, 0.05, True),
        ],
    )
    second = summary(
        {"site_a": "GO", "site_b": "NO-GO", "site_c": "GO"},
        [
            criterion("site_a", "auroc ci_low", 0.81, 0.7, True),
            criterion(
                "site_b", "auroc ci_low", 0.72, 0.8, False, value_after=0.75, passed_after=False
            ),
            criterion("site_b", "ece", 0.06, 0.05, True),
            criterion("site_c", "auroc ci_low", 0.9, 0.8, True),
        ],
        version="1.1.0",
    )
    packages = {
        "a1": write_package(root, "study_a", 0, signer, audit=first),
        "a2": write_package(root, "study_a", 2, signer, audit=second),
        "a0": write_package(root, "study_a", -3, signer, audit=None),
        "b1": write_package(root, "study_b", 1, signer, audit=first),
    }
    return {"root": root, "home": home, **packages}


def _client(root: Path, log: Path, **auth) -> TestClient:
    config = PortalConfig(
        reports=root,
        download_log=log,
        auth=AuthConfig(**({"tokens": (TOKEN,), "users": USERS} | auth)),
        studies=STUDIES,
        dagster_url="http://dagster.test:3000",
    )
    return TestClient(create_app(config), follow_redirects=False)


@pytest.fixture()
def client(reports, tmp_path: Path) -> TestClient:
    return _client(reports["root"], tmp_path / "logs" / "downloads.jsonl")


def _ids(html: str) -> list[str]:
    return re.findall(r'data-audit-id="([^"]+)"', html)


def _url(package, suffix: str = "") -> str:
    return f"/studies/{package.dir.parent.name}/packages/{package.dir.name}{suffix}"


def _log(client: TestClient) -> list[dict]:
    path = client.app.state.portal.log.path
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# --- authentication -------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", "/report.pdf", "/package.zip", "/files/decisions.csv"])
def test_nothing_is_served_unauthenticated(reports, client: TestClient, suffix: str) -> None:
    for url in ("/", "/studies/study_a", "/studies/study_a/diff", _url(reports["a1"], suffix)):
        response = client.get(url)
        assert response.status_code == 401, url
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert 'id="login"' in response.text and "%PDF" not in response.text
    wrong = client.get("/", headers={"Authorization": "Bearer " + "y" * 40})
    assert wrong.status_code == 401
    assert _log(client) == []  # nothing was downloaded


def test_token_basic_auth_and_login_session(client: TestClient) -> None:
    assert client.get("/", headers=BEARER).status_code == 200
    basic = base64.b64encode(f"alice:{USERS['alice']}".encode()).decode()
    page = client.get("/", headers={"Authorization": f"Basic {basic}"})
    assert page.status_code == 200 and 'id="user">alice<' in page.text
    bad = base64.b64encode(b"alice:not-her-password").decode()
    assert client.get("/", headers={"Authorization": f"Basic {bad}"}).status_code == 401

    assert client.get("/login").status_code == 200  # the only open page
    refused = client.post("/login", data={"username": "alice", "password": "nope"})
    assert refused.status_code == 401 and "Wrong user name" in refused.text
    signed_in = client.post(
        "/login", data={"username": "bob", "password": TOKEN, "next": "/studies/study_b"}
    )
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/studies/study_b"
    cookie = signed_in.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    page = client.get("/studies/study_b")
    assert page.status_code == 200 and "bob (token)" in page.text
    client.cookies.clear()
    client.cookies.set("clinaudit_portal_session", "forged.0000")
    assert client.get("/").status_code == 401
    offsite = client.post("/login", data={"password": TOKEN, "next": "//evil.example/x"})
    assert offsite.headers["location"] == "/"  # never redirected off the portal


def test_trusted_header_only_from_a_trusted_proxy(reports, tmp_path: Path) -> None:
    log = tmp_path / "d.jsonl"
    proxied = _client(
        reports["root"], log, trusted_user_header="X-Forwarded-User",
        trusted_proxies=frozenset({"testclient"}),
    )  # fmt: skip
    page = proxied.get("/", headers={"X-Forwarded-User": "carol@hospital.example"})
    assert page.status_code == 200 and "carol@hospital.example" in page.text
    direct = _client(reports["root"], log, trusted_user_header="X-Forwarded-User")
    # the test client is not 127.0.0.1: a header it sends is not believed
    assert direct.get("/", headers={"X-Forwarded-User": "mallory"}).status_code == 401


# --- traversal ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "/studies/..%2F..%2Fkeys",
        "/studies/study_a/packages/..%2F..%2Fkeys%2Fdev_signer/report.pdf",
        "/studies/study_a/packages/%2e%2e/report.pdf",
        "/studies/study_a/packages/x/files/..%2F..%2F..%2Fkeys%2Fdev_signer%2Fkey.pem",
        "/studies/study_a/packages/x/files/..\\..\\manifest.json",
        "/studies/study_a/diff?before=../../keys&after=x",
        "/studies/study_a/diff?before=..",
        "/studies/study_a..%2fb",
        "/studies/landing",
    ],
)
def test_traversal_is_refused(client: TestClient, url: str) -> None:
    response = client.get(url, headers=BEARER)
    assert response.status_code in (400, 404), url
    assert "PRIVATE KEY" not in response.text and "%PDF" not in response.text


def test_traversal_guard_on_raw_paths() -> None:
    def refused(raw: bytes) -> bool:
        path = raw.decode()
        return TraversalGuard.refused({"raw_path": raw, "path": path})

    assert refused(b"/studies/../keys") and refused(b"/studies/%2E%2E/keys")
    assert refused(b"/studies/a%2fb") and refused(b"/a\\b") and refused(b"/a%00b")
    assert not refused(b"/studies/study_a/packages/20261123T201500Z-abcdef01/report.pdf")


# --- listing and package page ---------------------------------------------------------------------


def test_index_lists_every_study_newest_first(reports, client: TestClient) -> None:
    page = client.get("/", headers=BEARER)
    assert page.status_code == 200
    for header in ("content-security-policy", "x-content-type-options", "cache-control"):
        assert header in page.headers
    ids = _ids(page.text)
    a = [reports[k].dir.name for k in ("a2", "a1", "a0")]
    assert ids == [*a, reports["b1"].dir.name]  # study order, then newest first
    assert page.text.count("VERIFIED") == 4 and "FAILED" not in page.text
    assert "development signature" in page.text and "SIMULATED" in page.text
    assert "site_b: <b>NO-GO</b>" in page.text and "not declared" in page.text
    assert 'id="study-study_c"' in page.text and "No package yet." in page.text
    one = client.get("/studies/study_b", headers=BEARER)
    assert _ids(one.text) == [reports["b1"].dir.name]
    assert client.get("/studies/nope", headers=BEARER).status_code == 404
    assert (
        client.get(_url(reports["a1"]).replace("study_a", "study_b"), headers=BEARER).status_code
        == 404
    )


def test_package_page(reports, client: TestClient) -> None:
    page = client.get(_url(reports["a2"]), headers=BEARER)
    assert page.status_code == 200
    text = page.text
    assert 'class="banner verified" id="verdict"' in text
    assert 'id="development"' in text  # development signatures are labelled
    assert "test.policy v1.1.0" in text and "site_c" in text
    assert 'href="http://dagster.test:3000/runs/run-2"' in text
    assert 'href="http://dagster.test:3000/assets/study_a/package"' in text
    assert f"before={reports['a1'].dir.name}" in text  # what changed since the previous audit
    assert 'id="download-report"' in text and "files/decisions.csv" in text
    checks = re.findall(r"<tr><td>([^<]+)</td><td class=\"verified\">", text)
    assert "package files match manifest" in checks and "pdfsig cross-check" in checks


# --- downloads ------------------------------------------------------------------------------------


def test_downloads_are_the_signed_bytes_and_logged(reports, client: TestClient) -> None:
    package = reports["a1"]
    pdf = client.get(_url(package, "/report.pdf"), headers=BEARER)
    signed = (package.dir / "report.pdf").read_bytes()
    assert pdf.status_code == 200 and pdf.content == signed
    assert pdf.headers["content-type"] == "application/pdf"
    assert "attachment" in pdf.headers["content-disposition"]
    csv = client.get(_url(package, "/files/decisions.csv"), headers=BEARER)
    assert csv.content == (package.dir / "decisions.csv").read_bytes()
    archive = client.get(_url(package, "/package.zip"), headers=BEARER)
    with zipfile.ZipFile(io.BytesIO(archive.content)) as z:
        members = {n.split("/", 1)[1]: z.read(n) for n in z.namelist()}
    on_disk = {p.relative_to(package.dir).as_posix(): p.read_bytes()
               for p in package.dir.rglob("*") if p.is_file()}  # fmt: skip
    assert members == on_disk
    assert client.get(_url(package, "/files/keys"), headers=BEARER).status_code == 404

    log = _log(client)
    assert [e["file"] for e in log] == ["report.pdf", "decisions.csv", "package.zip"]
    first = log[0]
    assert first["sha256"] == hashlib.sha256(signed).hexdigest() and first["served"] is True
    assert first["user"] == "token" and first["client"] == "testclient" and first["time"]
    assert (first["study"], first["audit_id"]) == ("study_a", package.dir.name)
    path = client.app.state.portal.log.path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = path.read_bytes()
    assert client.head(_url(package, "/report.pdf"), headers=BEARER).status_code == 200
    assert path.read_bytes() == before  # headers only: not a download
    client.get(_url(package, "/report.pdf"), headers=BEARER)
    assert path.read_bytes().startswith(before)  # appended, never rewritten
    assert len(_log(client)) == 4


# --- tampering ------------------------------------------------------------------------------------


def test_tampered_package_is_failed_and_never_served(reports, tmp_path: Path) -> None:
    root = copy_tree(reports["root"], tmp_path / "reports")
    client = _client(root, tmp_path / "d.jsonl")
    package = root / "study_a" / reports["a1"].dir.name
    url = f"/studies/study_a/packages/{package.name}"
    assert 'class="banner verified"' in client.get(url, headers=BEARER).text  # cached VERIFIED
    flip_byte(package / "report.pdf")
    page = client.get(url, headers=BEARER)
    assert page.status_code == 200 and 'class="banner failed"' in page.text
    assert 'class="failed-check"' in page.text and 'id="not-served"' in page.text
    assert 'id="download-report"' not in page.text
    for suffix in ("/report.pdf", "/package.zip", "/files/decisions.csv"):
        refused = client.get(url + suffix, headers=BEARER)
        assert refused.status_code == 409 and "%PDF" not in refused.text
    log = _log(client)
    assert [e["served"] for e in log] == [False, False, False]
    assert all(e["reason"].startswith("verification FAILED") and e["sha256"] is None for e in log)
    listing = client.get("/studies/study_a", headers=BEARER).text
    assert listing.count("FAILED") >= 1 and listing.count("VERIFIED") == 2

    other = root / "study_a" / reports["a2"].dir.name
    flip_byte(other / "decisions.csv", at=0)  # an attachment
    page = client.get(f"/studies/study_a/packages/{other.name}", headers=BEARER)
    assert 'class="banner failed"' in page.text and "package files match manifest" in page.text
    diff = client.get(
        f"/studies/study_a/diff?before={package.name}&after={other.name}", headers=BEARER
    )
    assert diff.status_code == 409 and 'id="refused"' in diff.text


def test_misfiled_or_linked_package_fails(reports, tmp_path: Path) -> None:
    root = copy_tree(reports["root"], tmp_path / "reports")
    client = _client(root, tmp_path / "d.jsonl")
    source = root / "study_a" / reports["a1"].dir.name
    copy = root / "study_a" / "20991231T000000Z-00000000"
    copy_tree(source, copy)  # the same signed bytes, filed under another audit id
    page = client.get(f"/studies/study_a/packages/{copy.name}", headers=BEARER)
    assert 'class="banner failed"' in page.text
    assert "package filed under its signed study and audit id" in page.text
    (source / "extra").symlink_to(reports["home"] / "keys")
    page = client.get(f"/studies/study_a/packages/{source.name}", headers=BEARER)
    assert "package holds plain files only" in page.text and 'class="banner failed"' in page.text
    assert client.get(f"/studies/study_a/packages/{source.name}/files/extra",
                      headers=BEARER).status_code == 409  # fmt: skip


# --- what changed ---------------------------------------------------------------------------------


def test_diff_shows_changed_decisions_criteria_policy_and_sites(
    reports, client: TestClient
) -> None:
    a1, a2 = reports["a1"].dir.name, reports["a2"].dir.name
    page = client.get(f"/studies/study_a/diff?before={a1}&after={a2}", headers=BEARER)
    assert page.status_code == 200
    text = re.sub(r"\s+", " ", page.text)
    assert "<td>site_b</td><td>CONDITIONAL GO</td><td><b>NO-GO</b></td>" in text
    assert "<td>policy_version</td><td>1.0.0</td><td>1.1.0</td>" in text
    assert "new: site_c" in text and "dropped: none" in text
    assert "0.72 &gt;= 0.7: pass; after mitigation 0.75: pass" in text  # before, with numbers
    assert "0.72 &gt;= 0.8: FAIL; after mitigation 0.75: FAIL" in text  # after
    assert "0.06 &gt;= 0.05: pass" in text  # a number that moved without a new outcome
    assert "numbers only" in text and "not judged" in text
    # defaults: the newest package against the one before it
    default = client.get("/studies/study_a/diff", headers=BEARER)
    assert f">{a1}</a>" in default.text and f">{a2}</a>" in default.text
    legacy = client.get(
        f"/studies/study_a/diff?before={reports['a0'].dir.name}&after={a1}", headers=BEARER
    )
    assert legacy.status_code == 200 and "does not declare its decisions" in legacy.text
    assert client.get("/studies/study_b/diff", headers=BEARER).status_code == 404  # one package
    assert client.get("/studies/study_c/diff", headers=BEARER).status_code == 404  # none
