"""The committee portal end to end: a real server on 127.0.0.1 and headless Debian Chromium.

The packages are copies of the tiny demo packages of two studies (``conftest.tiny_demo``, shared
with the end-to-end and contract tests), plus a second audit of ``sepsis_ews`` under a different
policy (the policy-dependent stages re-run by the pipeline runner on a copy of its demo home, as
``clinaudit audit --policy`` runs them), plus one tampered package. The browser signs in, lists
every registered study with its packages, opens the re-audit through the portal URL its Dagster
materialization carries, downloads the signed PDF (byte-identical), reads what changed, and sees
the tampered package FAILED; plain HTTP checks the 401 and the refusal of ``../``.
"""

from __future__ import annotations

import http.client
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml
from portal_fixtures import (
    TOKEN,
    copy_tree,
    flip_byte,
    free_port,
    launch_portal,
    stop,
    wait_ready,
)
from system_tools import require_tool

from clinaudit.assets.resources import ClinauditHome
from clinaudit.portal.urls import package_url
from clinaudit.reporting.audit_summary import SUMMARY_KEY
from clinaudit.studies import get_study, registered_studies

#: Every registered study gets a section; the packages are those of two studies' tiny demos (the
#: cxr_triage demo is the slowest, and the portal treats its packages no differently).
STUDIES = [s.name for s in registered_studies()]
DEMOS = ["multisite_cxr", "sepsis_ews"]
#: The study audited a second time under another policy (its tiny demo is the quickest).
REAUDITED = "sepsis_ews"


def _lenient_policy(study_policy: Path, out: Path) -> Path:
    """The sepsis policy with every criterion relaxed and a new version: the decision moves."""
    doc = yaml.safe_load(study_policy.read_text(encoding="utf-8"))
    doc["version"] = "1.1.0"
    criteria = doc["criteria"]
    criteria["auroc"].update(statistic="estimate", floor=0.5)
    criteria["ece"]["limit"] = 0.5
    criteria["alert_rate"]["limit"] = 0.95
    criteria["fairness_gap"]["enabled"] = False
    out.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return out


def _reaudit(demo: Path, work: Path, policy: Path, portal: str) -> tuple[str, str]:
    """Re-run the policy-dependent stages on a copy of ``demo``; the new package's id and the
    portal URL its Dagster materialization records."""
    from clinaudit.orchestration.runner import PipelineRunner, get_instance

    shutil.copytree(demo, work)
    study = get_study(REAUDITED)
    home = ClinauditHome(root=str(work))
    before = {p.name for p in (home.reports / REAUDITED).iterdir()}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DAGSTER_HOME", str(work / "dagster_home"))
        mp.setenv("CLINAUDIT_PORTAL_URL", portal)
        instance = get_instance(home)
        partitions = instance.get_dynamic_partitions(f"{study.name}_{study.partition_by}s")
        runner = PipelineRunner(
            instance, home, study, policy_path=str(policy), workers=1, console_level="WARNING"
        )
        runs = runner.audit(partitions)
        assert all(r.success for r in runs), [(r.stage, r.error) for r in runs]
        event = instance.get_latest_materialization_event(dg.AssetKey([REAUDITED, "package"]))
        metadata = event.asset_materialization.metadata
        instance.dispose()
    (new,) = {p.name for p in (home.reports / REAUDITED).iterdir()} - before
    return new, metadata["portal_url"].value


@pytest.fixture(scope="module")
def site(tiny_demo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The portal home, the server's base URL and what the tests expect to find."""
    require_tool("pdfsig", "poppler-utils")
    demos = {name: tiny_demo(name) for name in DEMOS}
    tmp = tmp_path_factory.mktemp("portal_site")
    home = tmp / "home"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"CLINAUDIT_PORTAL_TOKEN": TOKEN, "CLINAUDIT_DAGSTER_URL": "http://dagster.test:3000"}
    (home / "reports").mkdir(parents=True)
    # The server starts (imports the registry) while the packages are copied and re-audited:
    # it reads the reports folder on each request, not at start.
    proc = launch_portal(home, env, tmp / "portal.log", port)
    try:
        for name in DEMOS:
            copy_tree(demos[name] / "reports" / name, home / "reports" / name)
        policy = _lenient_policy(get_study(REAUDITED).shipped_policy(), tmp / "policy.yaml")
        new, portal_url = _reaudit(demos[REAUDITED], tmp / "reaudit", policy, base)
        copy_tree(tmp / "reaudit" / "reports" / REAUDITED / new, home / "reports" / REAUDITED / new)
        tampered_study = DEMOS[0]
        tampered = sorted((home / "reports" / tampered_study).iterdir())[0]
        flip_byte(tampered / "report.pdf")
        wait_ready(proc, base, tmp / "portal.log")
        yield {
            "base": base,
            "home": home,
            "reaudit": new,
            "portal_url": portal_url,
            "tampered": (tampered_study, tampered.name),
            "downloads": tmp / "downloads",
        }
    finally:
        stop(proc)


def _status(base: str, path: str, headers: dict | None = None) -> int:
    """Status of a GET sent exactly as written (no client-side ``..`` normalisation)."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        return conn.getresponse().status
    finally:
        conn.close()


def test_unauthenticated_401_and_traversal_refused(site: dict) -> None:
    base, study = site["base"], REAUDITED
    package = f"/studies/{study}/packages/{site['reaudit']}"
    for path in ("/", f"/studies/{study}", package, f"{package}/report.pdf"):
        assert _status(base, path) == 401, path
    token = {"Authorization": f"Bearer {TOKEN}"}
    assert _status(base, package, token) == 200
    for path in (
        f"/studies/{study}/packages/../../keys/dev_signer/key.pem",
        f"/studies/{study}/packages/{site['reaudit']}/files/../../../landing",
        "/studies/../dagster_home/dagster.yaml",
        f"/studies/{study}/packages/%2e%2e%2f%2e%2e%2fkeys/report.pdf",
        f"/studies/{study}/diff?before=../../keys&after={site['reaudit']}",
    ):
        assert _status(base, path, token) in (400, 404), path


@pytest.fixture(scope="module")
def browser(site: dict):
    chromium = require_tool("chromium", "chromium")
    chromedriver = require_tool("chromedriver", "chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    site["downloads"].mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_experimental_option(
        "prefs",
        {
            "download.default_directory": str(site["downloads"]),
            "download.prompt_for_download": False,
            "safebrowsing.enabled": False,
        },
    )
    driver = webdriver.Chrome(service=webdriver.ChromeService(chromedriver), options=options)
    driver.execute_cdp_cmd(
        "Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(site["downloads"])}
    )
    try:
        yield driver
    finally:
        driver.quit()


def _ids(driver) -> list[str]:
    script = "return [...document.querySelectorAll('tr.package')].map(r => r.dataset.auditId)"
    return driver.execute_script(script)


def _text(driver, css: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css).text


def _click_to(driver, element_id: str, css: str) -> None:
    """Click ``element_id`` and wait until the page it leads to shows ``css`` (a click returns
    before the next page has loaded; the first listing verifies every package)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element(By.ID, element_id).click()
    WebDriverWait(driver, 120, poll_frequency=0.2).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, css))
    )


def _downloaded(folder: Path, timeout: float = 30) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [p for p in folder.iterdir() if not p.name.endswith(".crdownload")]
        if done:
            return done[0]
        time.sleep(0.2)
    raise AssertionError(f"no download finished in {folder}: {list(folder.iterdir())}")


def _manifest_decisions(package: Path) -> dict[str, str]:
    manifest = json.loads((package / "manifest.json").read_text(encoding="utf-8"))
    return manifest["metadata"][SUMMARY_KEY]["decisions"]


def test_committee_flow_in_the_browser(site: dict, browser) -> None:
    from selenium.webdriver.common.by import By

    base, home, driver = site["base"], site["home"], browser
    driver.get(f"{base}/")
    assert "Sign in" in driver.title
    driver.find_element(By.ID, "password").send_keys(TOKEN)
    _click_to(driver, "sign-in", "#user")
    assert driver.current_url == f"{base}/" and _text(driver, "#user") == "token"

    # Every registered study, and each demo study's packages newest first (signed creation time).
    for name in STUDIES:
        assert driver.find_element(By.ID, f"study-{name}").is_displayed()
    for name in DEMOS:
        folders = sorted((home / "reports" / name).iterdir(), key=_created, reverse=True)
        shown = [i for i in _ids(driver) if (home / "reports" / name / i).is_dir()]
        assert shown == [p.name for p in folders], name
    assert driver.page_source.count("development signature") >= len(_ids(driver))

    # The Dagster materialization's portal URL opens the re-audited package, verified.
    assert site["portal_url"] == package_url(REAUDITED, site["reaudit"], base=base)
    driver.get(site["portal_url"])
    assert _text(driver, "#verdict").startswith("VERIFIED")
    assert "development signature" in _text(driver, "#development")
    assert "dagster.test:3000/runs/" in driver.find_element(By.ID, "dagster-run").get_attribute(
        "href"
    )

    # The download is the signed PDF, byte for byte.
    driver.find_element(By.ID, "download-report").click()
    signed = home / "reports" / REAUDITED / site["reaudit"] / "report.pdf"
    assert _downloaded(site["downloads"]).read_bytes() == signed.read_bytes()

    # What changed since the previous audit: the decision and the policy version.
    _click_to(driver, "diff-previous", "#compared")
    packages = sorted((home / "reports" / REAUDITED).iterdir(), key=_created)
    before, after = (_manifest_decisions(p) for p in packages[-2:])
    changed = {w for w in after if before.get(w) != after[w]}
    assert changed, f"the lenient policy changed no decision: {before} -> {after}"
    table = _text(driver, "#decision-changes")
    for where in changed:
        assert f"{where} {before.get(where, '—')} {after[where]}" in table
    assert "policy_version 1.0.0 1.1.0" in _text(driver, "#identity-changes")

    # The tampered package is FAILED and its files are not offered.
    study, audit_id = site["tampered"]
    driver.get(f"{base}/studies/{study}/packages/{audit_id}")
    assert _text(driver, "#verdict").startswith("FAILED")
    assert driver.find_elements(By.CSS_SELECTOR, "#verdict li.failed-check")  # which check, why
    assert driver.find_elements(By.ID, "download-report") == []
    driver.get(f"{base}/")
    row = driver.find_element(By.CSS_SELECTOR, f'tr[data-audit-id="{audit_id}"] td.verdict')
    assert row.text.startswith("FAILED")

    # The download is in the append-only log, with who and which bytes.
    log = home / "logs" / "portal_downloads.jsonl"
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    served = [e for e in entries if e["file"] == "report.pdf" and e["served"]]
    assert served[-1]["audit_id"] == site["reaudit"] and served[-1]["user"] == "token"
    assert served[-1]["client"] == "127.0.0.1" and len(served[-1]["sha256"]) == 64


def _created(package: Path) -> tuple[str, str]:
    manifest = json.loads((package / "manifest.json").read_text(encoding="utf-8"))
    return (manifest["created"], package.name)
