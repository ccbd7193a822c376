"""What changed between two audits of one study, from their signed audit summaries.

Works on :class:`~clinaudit.portal.facts.PackageFacts` only (the manifests' generic fields and
:class:`~clinaudit.reporting.audit_summary.AuditSummary`), so it knows no study: decisions that
changed per partition, criteria whose outcome or numbers changed (before -> after), the policy
and model identity, operating thresholds, partitions new to or dropped from the audit, and the
landed input batches added, removed or changed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from clinaudit.reporting.audit_summary import AuditSummary, CriterionOutcome

from .facts import PackageFacts

__all__ = ["Change", "CriterionChange", "PackageDiff", "diff_packages"]

_NUMBERS = ("value", "limit", "value_after")
_OUTCOMES = ("passed", "passed_after", "limit", "comparator")


@dataclass(frozen=True)
class Change:
    """One named field that differs: ``what`` went from ``before`` to ``after``.

    ``where`` is the partition (``""`` for package-wide fields such as the policy version).
    """

    where: str
    what: str
    before: str
    after: str


@dataclass(frozen=True)
class CriterionChange:
    """A criterion that differs between two audits (``None``: not judged in that audit).

    ``outcome_changed``: whether it passed, its limit or comparator changed (not only its
    number).
    """

    where: str
    criterion: str
    before: CriterionOutcome | None
    after: CriterionOutcome | None
    outcome_changed: bool


@dataclass(frozen=True)
class PackageDiff:
    """Everything that changed from ``before`` to ``after`` (two packages of one study).

    ``comparable`` is false when either package declares no audit summary (``problems`` says
    which); the input changes are still listed.
    """

    before: PackageFacts
    after: PackageFacts
    comparable: bool
    problems: tuple[str, ...]
    decisions: tuple[Change, ...]
    unchanged_decisions: tuple[tuple[str, str], ...]
    criteria: tuple[CriterionChange, ...]
    n_criteria_unchanged: int
    policy: tuple[Change, ...]
    model: tuple[Change, ...]
    thresholds: tuple[Change, ...]
    new_partitions: tuple[str, ...]
    dropped_partitions: tuple[str, ...]
    inputs_added: tuple[str, ...]
    inputs_removed: tuple[str, ...]
    inputs_changed: tuple[str, ...]

    @property
    def anything_changed(self) -> bool:
        """Whether any decision, criterion, identity, partition or input differs."""
        return any(
            (
                self.decisions, self.criteria, self.policy, self.model, self.thresholds,
                self.new_partitions, self.dropped_partitions, self.inputs_added,
                self.inputs_removed, self.inputs_changed,
            )
        )  # fmt: skip


def _same_number(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _criterion_change(
    before: CriterionOutcome | None, after: CriterionOutcome | None
) -> CriterionChange | None:
    ref = before or after
    assert ref is not None
    if before is not None and after is not None:
        outcome = any(getattr(before, f) != getattr(after, f) for f in _OUTCOMES if f != "limit")
        outcome = outcome or not _same_number(before.limit, after.limit)
        numbers = not all(_same_number(getattr(before, f), getattr(after, f)) for f in _NUMBERS)
        if not (outcome or numbers):
            return None
        return CriterionChange(ref.where, ref.criterion, before, after, outcome)
    return CriterionChange(ref.where, ref.criterion, before, after, True)


def _mapping_changes(before: dict, after: dict, where: str = "") -> tuple[Change, ...]:
    keys = sorted(set(before) | set(after))
    return tuple(
        Change(where, k, _text(before.get(k)), _text(after.get(k)))
        for k in keys
        if _text(before.get(k)) != _text(after.get(k))
    )


def _text(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _summary_diff(a: AuditSummary, b: AuditSummary) -> dict:
    where = sorted(set(a.decisions) | set(b.decisions))
    decisions = tuple(
        Change(w, "decision", a.decisions.get(w, "—"), b.decisions.get(w, "—"))
        for w in where
        if a.decisions.get(w) != b.decisions.get(w)
    )
    unchanged = tuple(
        (w, a.decisions[w]) for w in where if a.decisions.get(w) == b.decisions.get(w)
    )
    before = {c.key: c for c in a.criteria}
    after = {c.key: c for c in b.criteria}
    changes = [
        _criterion_change(before.get(k), after.get(k)) for k in sorted(set(before) | set(after))
    ]
    criteria = sorted(
        (c for c in changes if c is not None),
        key=lambda c: (not c.outcome_changed, c.where, c.criterion),
    )
    return {
        "decisions": decisions,
        "unchanged_decisions": unchanged,
        "criteria": tuple(criteria),
        "n_criteria_unchanged": sum(c is None for c in changes),
        "policy": _mapping_changes(dict(a.policy), dict(b.policy)),
        "model": _mapping_changes(dict(a.model), dict(b.model)),
        "thresholds": _mapping_changes(dict(a.thresholds), dict(b.thresholds)),
        "new_partitions": tuple(sorted(set(b.partitions) - set(a.partitions))),
        "dropped_partitions": tuple(sorted(set(a.partitions) - set(b.partitions))),
    }


def diff_packages(before: PackageFacts, after: PackageFacts) -> PackageDiff:
    """What changed from ``before`` to ``after``.

    Raises
    ------
    ValueError
        If the two packages belong to different studies.
    """
    if before.study != after.study:
        raise ValueError(
            f"packages of studies {before.study!r} and {after.study!r} cannot be compared; "
            "choose two packages of one study"
        )
    problems = tuple(
        f"{f.audit_id}: {f.summary_problem}" for f in (before, after) if f.summary is None
    )
    empty: dict = {
        "decisions": (), "unchanged_decisions": (), "criteria": (), "n_criteria_unchanged": 0,
        "policy": (), "model": (), "thresholds": (), "new_partitions": (),
        "dropped_partitions": (),
    }  # fmt: skip
    parts = (
        _summary_diff(before.summary, after.summary)
        if before.summary is not None and after.summary is not None
        else empty
    )
    a, b = before.inputs, after.inputs
    return PackageDiff(
        before=before,
        after=after,
        comparable=not problems,
        problems=problems,
        inputs_added=tuple(sorted(set(b) - set(a))),
        inputs_removed=tuple(sorted(set(a) - set(b))),
        inputs_changed=tuple(sorted(k for k in set(a) & set(b) if a[k] != b[k])),
        **parts,
    )
