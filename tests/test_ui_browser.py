"""The Dagster UI shows the study's lineage: a real webserver on 127.0.0.1, headless Chromium.

The page test needs Debian's ``chromium`` and ``chromedriver`` (no browser download) and the
``selenium`` package, and is skipped with the reason when one is missing; the GraphQL test needs
only the webserver. The webserver and its code server run in
their own process group, which is terminated at the end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from clinaudit.studies import registered_studies

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
LOCATION = "clinaudit"
#: Every registered study (one asset group each, keys prefixed with the study name).
STUDIES = [s.name for s in registered_studies()]
#: Stages every study's lineage must show, and edges (upstream, downstream) between them.
EXPECTED_ASSETS = {"validated", "predictions", "evidence", "decisions", "package"}
EXPECTED_EDGES = {
    ("validated", "predictions"),
    ("model", "predictions"),
    ("predictions", "evidence"),
    ("evidence", "decisions"),
    ("decisions", "monitoring"),
    ("monitoring", "package"),
}

LINEAGE_QUERY = """
query Lineage($group: AssetGroupSelector!) {
  assetNodes(group: $group) { assetKey { path } groupName dependencyKeys { path } }
}"""
STATUS_QUERY = """
{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus
    locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
SENSORS_QUERY = """
{ sensorsOrError(repositorySelector: {repositoryName: "__repository__",
                                      repositoryLocationName: "clinaudit"}) {
    ... on Sensors { results { name sensorState { status } targets { pipelineName } } } } }"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(base: str, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        f"{base}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        doc = json.load(response)
    assert "errors" not in doc, doc["errors"]
    return doc["data"]


def _wait_loaded(base: str, proc: subprocess.Popen, log: Path, timeout: float = 45) -> None:
    """Until the code location is loaded; fail with its error or the server log otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"dagster-webserver exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            entries = graphql(base, STATUS_QUERY)["workspaceOrError"]["locationEntries"]
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
            continue
        entry = next((e for e in entries if e["name"] == LOCATION), None)
        if entry and entry["loadStatus"] == "LOADED":
            error = entry["locationOrLoadError"]
            assert error["__typename"] == "RepositoryLocation", error.get("message")
            return
        time.sleep(0.5)
    pytest.fail(f"code location not loaded after {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def webserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``dagster-webserver`` on a free 127.0.0.1 port with a temporary DAGSTER_HOME."""
    tmp = tmp_path_factory.mktemp("ui")
    dagster_home = tmp / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "CLINAUDIT_HOME": str(tmp / "var")}
    port = _free_port()
    log = tmp / "webserver.log"
    exe = Path(sys.executable).with_name("dagster-webserver")
    cmd = [str(exe), "-h", "127.0.0.1", "-p", str(port), "-w", str(REPO / "workspace.yaml")]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_loaded(base, proc, log)
        yield base
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """Terminate the webserver's process group (it includes the code server it spawned)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    try:  # children that outlived the server
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _lineage(webserver: str, study: str) -> dict[str, set[str]]:
    """stage -> its upstream stages in the study's group, as the GraphQL API reports them."""
    selector = {
        "groupName": study,
        "repositoryName": "__repository__",
        "repositoryLocationName": LOCATION,
    }
    nodes = graphql(webserver, LINEAGE_QUERY, {"group": selector})["assetNodes"]
    assert {n["groupName"] for n in nodes} == {study}
    assert all(n["assetKey"]["path"][0] == study for n in nodes)  # keys prefixed by the study
    for n in nodes:
        assert all(d["path"][0] == study for d in n["dependencyKeys"])  # no cross-study edge
    return {n["assetKey"]["path"][-1]: {d["path"][-1] for d in n["dependencyKeys"]} for n in nodes}


@pytest.fixture(scope="module", params=STUDIES)
def study_lineage(
    request: pytest.FixtureRequest, webserver: str
) -> tuple[str, dict[str, set[str]]]:
    return request.param, _lineage(webserver, request.param)


def test_graphql_asset_lineage(study_lineage, webserver: str) -> None:
    study, lineage = study_lineage
    assert EXPECTED_ASSETS | {"model", "model_source", "policy_source"} <= set(lineage)
    assert {"predictions", "validated", "model", "batches"} <= lineage["evidence"]
    assert {"validated", "model"} <= lineage["predictions"]
    assert lineage["validated"] == set()  # the first stage reads landed files only
    assert all(up in lineage[down] for up, down in EXPECTED_EDGES)
    results = graphql(webserver, SENSORS_QUERY)["sensorsOrError"]["results"]
    sensors = {s["name"]: s for s in results}
    assert {f"{s}_{kind}_sensor" for s in STUDIES for kind in ("landing", "automation")} == set(
        sensors
    )
    for sensor in sensors.values():
        assert sensor["sensorState"]["status"] == "RUNNING", sensor["name"]  # on by default
    landing = sensors[f"{study}_landing_sensor"]
    assert landing["targets"] == [{"pipelineName": f"{study}_partition_job"}]


# Each asset node is an SVG <foreignObject> whose text starts with the asset name; each edge is
# a <path marker-end=...> from the right border of its source node to the left of its target.
GRAPH_JS = """
const svg = document.querySelector('svg[class*="svgContainer"]');
if (!svg) return null;
const num = (el, a) => parseFloat(el.getAttribute(a));
return {
  nodes: [...svg.querySelectorAll('foreignObject')].map(f => ({
    text: f.textContent, x: num(f, 'x'), y: num(f, 'y'), w: num(f, 'width'), h: num(f, 'height')})),
  edges: [...svg.querySelectorAll('path[marker-end]')].map(p => p.getAttribute('d')),
};
"""
_POINT = r"(-?[\d.]+)[ ,](-?[\d.]+)"


def _edges(graph: dict, names: set[str]) -> set[tuple[str, str]]:
    """(upstream, downstream) for every drawn edge, matched to nodes by its end points."""
    boxes = {}
    for node in graph["nodes"]:
        match = max((n for n in names if node["text"].startswith(n)), key=len, default=None)
        if match:
            boxes[match] = node

    def at(x: float, y: float, side: str) -> str | None:
        for name, b in boxes.items():
            edge_x = b["x"] + b["w"] if side == "right" else b["x"]
            if abs(x - edge_x) <= 12 and b["y"] <= y <= b["y"] + b["h"]:
                return name
        return None

    out = set()
    for d in graph["edges"]:
        points = re.findall(_POINT, d)
        (x1, y1), (x2, y2) = map(float, points[0]), map(float, points[-1])
        source, target = at(x1, y1, "right"), at(x2, y2, "left")
        if source and target:
            out.add((source, target))
    return out


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt install chromium)")
@pytest.mark.skipif(
    CHROMEDRIVER is None, reason="chromedriver is not installed (apt install chromium-driver)"
)
def test_lineage_page_shows_assets_and_edges(webserver: str, study_lineage) -> None:
    study, lineage = study_lineage
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=6400,4800",  # the whole study graph, unscrolled
    ):  # large enough that every node is rendered
        options.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    try:
        driver.get(f"{webserver}/locations/{LOCATION}/asset-groups/{study}/lineage")
        names = set(lineage)

        def drawn(drv):  # the graph is laid out asynchronously: wait for nodes and edges
            graph = drv.execute_script(GRAPH_JS)
            if graph and EXPECTED_EDGES <= _edges(graph, names):
                return graph
            return False

        try:
            graph = WebDriverWait(driver, 30, poll_frequency=0.5).until(drawn)
        except TimeoutException:
            graph = driver.execute_script(GRAPH_JS) or {"nodes": [], "edges": []}
            pytest.fail(
                f"lineage page never drew {sorted(EXPECTED_EDGES)}; drew nodes "
                f"{[n['text'][:30] for n in graph['nodes']]} and edges "
                f"{sorted(_edges(graph, names))}"
            )
        shown = {n for n in names if any(node["text"].startswith(n) for node in graph["nodes"])}
        assert EXPECTED_ASSETS <= shown
        edges = _edges(graph, names)
        api_edges = {(up, down) for down, ups in lineage.items() for up in ups}
        assert edges <= api_edges  # nothing drawn that Dagster does not know
        assert EXPECTED_EDGES <= edges
        assert {(u, d) for u, d in api_edges if u in shown and d in shown} == edges

        # The asset page links its upstream assets.
        driver.get(f"{webserver}/assets/{study}/evidence")
        wanted = {f"{webserver}/assets/{study}/{a}" for a in lineage["evidence"]}

        def linked(drv):
            # One script call reads every link at once: the page re-renders while it loads, and
            # an element found in one call can be gone (stale) by the next.
            hrefs = set(
                drv.execute_script("return [...document.querySelectorAll('a')].map(a => a.href)")
            )
            return wanted <= hrefs

        assert WebDriverWait(driver, 20, poll_frequency=0.5).until(linked)
    finally:
        driver.quit()
