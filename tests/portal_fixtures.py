"""Helpers of the committee portal's tests: small signed packages, tampering, a live server."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from clinaudit.reporting.audit_summary import SUMMARY_KEY, AuditSummary, CriterionOutcome
from clinaudit.reporting.package import (
    AuditPackage,
    inputs_digest,
    new_audit_id,
    write_audit_package,
)
from clinaudit.reporting.signing import SignerSpec

TOKEN = "portal-test-token-" + "x" * 24
EPOCH = 1_795_464_900  # 2026-11-23T20:15:00Z
DAY = 86_400
HTML = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>t</title></head>'
    "<body><h1>{title}</h1><p>Decision table and criteria.</p></body></html>"
)


def criterion(where: str, name: str, value: float | None, limit: float, passed: bool, **kw):
    return CriterionOutcome(where, name, value, limit, ">=", passed, **kw)


def summary(
    decisions: Mapping[str, str],
    criteria: list[CriterionOutcome],
    *,
    version: str = "1.0.0",
    partitions: tuple[str, ...] = (),
) -> AuditSummary:
    return AuditSummary(
        decisions=dict(decisions),
        criteria=tuple(criteria),
        partitions=partitions or tuple(sorted(decisions)),
        policy={
            "policy_id": "test.policy",
            "policy_version": version,
            "policy_sha256": (version.replace(".", "") * 64)[:64],
        },
        model={"mode": "package", "kind": "tabular", "identity": "d" * 64},
        thresholds={"y": 0.5},
    )


def write_package(
    reports: Path,
    study: str,
    day: int,
    signer: SignerSpec,
    *,
    audit: AuditSummary | None,
    attachments: Mapping[str, bytes] | None = None,
) -> AuditPackage:
    """A small signed package of ``study`` dated ``day`` days after :data:`EPOCH`."""
    epoch = EPOCH + day * DAY
    inputs = {f"{study}/site_a/b{day}": f"{day % 10}" * 64, "policy": "c" * 64}
    audit_id = new_audit_id(study, inputs_digest(inputs), datetime.fromtimestamp(epoch, UTC))
    metadata: dict = {"simulated": True, "policy_id": "test.policy", "run_id": f"run-{day}"}
    if audit is not None:
        metadata[SUMMARY_KEY] = audit.to_json()
    return write_audit_package(
        reports,
        study=study,
        audit_id=audit_id,
        html=HTML.format(title=f"{study} audit {day}"),
        base_url=Path(__file__).parent,
        attachments=dict(
            attachments or {"decisions.csv": f"site,decision\nsite_a,{day}\n".encode()}
        ),
        inputs=inputs,
        signer=signer,
        title=f"{study} test audit ({audit_id})",
        source_date_epoch=epoch,
        metadata=metadata,
    )


def writable(path: Path) -> None:
    """Make a read-only package file (or folder) writable, to tamper with it."""
    path.chmod(path.stat().st_mode | stat.S_IWUSR)


def flip_byte(path: Path, at: int | None = None) -> None:
    """Change one byte of ``path`` (the middle one by default)."""
    writable(path)
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if at is None else at
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def copy_tree(src: Path, dst: Path) -> Path:
    """A writable copy of a reports tree (packages are written read-only)."""
    shutil.copytree(src, dst)
    for path in dst.rglob("*"):
        writable(path)
    return dst


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_portal(home: Path, env: Mapping[str, str], log: Path, port: int) -> subprocess.Popen:
    """Start ``clinaudit portal --home HOME --port PORT`` on 127.0.0.1 (its own process group)."""
    cmd = [sys.executable, "-m", "clinaudit.portal.server", "--home", str(home)]
    with open(log, "wb") as out:
        return subprocess.Popen(
            [*cmd, "--port", str(port)],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_ready(proc: subprocess.Popen, base: str, log: Path, timeout: float = 90) -> None:
    """Until ``base/login`` answers 200 (the server imports the study registry first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"portal exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/login", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.3)
    stop(proc)
    raise RuntimeError(f"portal did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    """Terminate the server's process group."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
