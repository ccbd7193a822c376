"""View models of the portal's pages (one typed object per template) and the template
environment (autoescaped, strict about undefined names)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

import jinja2

from clinaudit.reporting.audit_summary import AuditSummary, CriterionOutcome
from clinaudit.reporting.verify import Check

from .diff import PackageDiff
from .store import PackageEntry

__all__ = [
    "DiffView",
    "FileLink",
    "IndexView",
    "MessageView",
    "PackageRow",
    "PackageView",
    "StudyBlock",
    "diff_url",
    "package_row",
    "package_view",
    "study_path",
    "template_environment",
]

DEVELOPMENT_NOTE = (
    "development signature: self-signed by clinaudit's local key; proves the files are unchanged "
    "since signing, not who signed them (not for production use)"
)


def template_environment() -> jinja2.Environment:
    """The portal's Jinja2 environment over ``clinaudit.templates/portal``."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("clinaudit.templates", "portal"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _num
    env.filters["flag"] = _flag
    return env


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def _flag(value: bool | None) -> str:
    return "—" if value is None else ("pass" if value else "FAIL")


def diff_url(study: str, before: str, after: str) -> str:
    """The diff page of two packages of ``study``."""
    return f"/studies/{quote(study)}/diff?" + urlencode({"before": before, "after": after})


@dataclass(frozen=True)
class PackageRow:
    """One package in a list: what the committee scans for."""

    study: str
    audit_id: str
    url: str
    created: str
    decisions: list[tuple[str, str]]
    decisions_note: str
    simulated: str
    signer: str
    development: bool
    verified: bool
    label: str
    failing: list[str]
    policy: str


def package_row(entry: PackageEntry) -> PackageRow:
    """The list row of ``entry``."""
    facts, verdict = entry.facts, entry.verdict
    simulated = {True: "SIMULATED", False: "real data", None: "not recorded"}[facts.simulated]
    policy = facts.policy_id + (f" v{facts.policy_version}" if facts.policy_version else "")
    return PackageRow(
        study=entry.ref.study,
        audit_id=entry.ref.audit_id,
        url=entry.url,
        created=facts.created,
        decisions=facts.decisions,
        decisions_note="" if facts.summary else "not declared",
        simulated=simulated,
        signer=verdict.signer or facts.signer,
        development=verdict.is_development if verdict.signer else facts.development,
        verified=verdict.ok,
        label=verdict.label,
        failing=[c.name for c in verdict.failed],
        policy=policy,
    )


@dataclass(frozen=True)
class StudyBlock:
    """A study and its packages, newest first."""

    name: str
    title: str
    url: str
    rows: list[PackageRow]


@dataclass(frozen=True)
class IndexView:
    """The studies page."""

    user: str
    studies: list[StudyBlock]
    title: str = "Audit packages"


@dataclass(frozen=True)
class FileLink:
    """A downloadable file of a verified package."""

    name: str
    url: str
    size: int


@dataclass(frozen=True)
class PackageView:
    """One package's page."""

    user: str
    title: str
    study_title: str
    row: PackageRow
    checks: list[Check]
    development_note: str
    summary: AuditSummary | None
    summary_problem: str
    criteria: list[CriterionOutcome]
    files: list[FileLink]
    report_url: str
    zip_url: str
    dagster_run_url: str
    dagster_asset_url: str
    previous: PackageRow | None
    previous_diff_url: str
    model: list[tuple[str, str]] = field(default_factory=list)


def package_view(
    entry: PackageEntry,
    *,
    user: str,
    study_title: str,
    previous: PackageEntry | None,
    dagster_url: str,
) -> PackageView:
    """The page of ``entry`` (``previous``: the study's package before it, for the diff)."""
    facts, snap = entry.facts, entry.snapshot
    base = entry.url
    files = [
        FileLink(name, f"{base}/files/{quote(name)}", len(snap.files[name]))
        for name in entry.servable()
        if name != "report.pdf"
    ]
    summary = facts.summary
    study, asset = quote(entry.ref.study), "package"
    return PackageView(
        user=user,
        title=facts.title,
        study_title=study_title,
        row=package_row(entry),
        checks=list(entry.verdict.checks),
        development_note=DEVELOPMENT_NOTE if entry.verdict.is_development else "",
        summary=summary,
        summary_problem=facts.summary_problem,
        criteria=sorted(summary.criteria, key=lambda c: c.key) if summary else [],
        files=files,
        report_url=f"{base}/report.pdf",
        zip_url=f"{base}/package.zip",
        dagster_run_url=f"{dagster_url}/runs/{quote(facts.run_id)}" if facts.run_id else "",
        dagster_asset_url=f"{dagster_url}/assets/{study}/{asset}",
        previous=package_row(previous) if previous else None,
        previous_diff_url=diff_url(entry.ref.study, previous.ref.audit_id, entry.ref.audit_id)
        if previous
        else "",
        model=sorted(summary.model.items()) if summary else [],
    )


@dataclass(frozen=True)
class DiffView:
    """The comparison of two packages of one study (``refused``: why it is not shown)."""

    user: str
    title: str
    study: str
    study_title: str
    before: PackageRow
    after: PackageRow
    diff: PackageDiff | None
    refused: list[str]
    choices: list[PackageRow]


@dataclass(frozen=True)
class MessageView:
    """An error or login page."""

    user: str
    title: str
    message: str
    status: int = 200
    details: Sequence[str] = ()
    next: str = "/"
    login: bool = False


def study_path(study: str) -> str:
    """The page listing one study's packages."""
    return f"/studies/{quote(study)}"
