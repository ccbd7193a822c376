"""What an audit decided, in one study-independent form, signed inside its package's manifest.

Every study decides differently (per site, for a whole network, for one reporting queue) and
writes its own decision tables; the committee still needs to compare two audits of a study
without knowing its tables. So the package stage records an :class:`AuditSummary` under
``manifest["metadata"]["audit_summary"]``: the decision per partition (or ``"overall"``), every
criterion as a :class:`CriterionOutcome` (where, which, the number, the limit, passed; before and
after the allowed mitigations), the partitions audited and left out, and the identity of the
policy and the model. It is embedded in the signed PDF with the rest of the manifest, so a
reader that has verified the package can trust it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "SUMMARY_FORMAT",
    "SUMMARY_KEY",
    "AuditSummary",
    "CriterionOutcome",
    "SummaryError",
    "outcomes_of_criteria",
]

#: Key of the summary under ``manifest["metadata"]``.
SUMMARY_KEY = "audit_summary"
#: Version of the summary's JSON form (raise it when a field changes meaning).
SUMMARY_FORMAT = 1


class SummaryError(ValueError):
    """A manifest's audit summary is malformed: ``problems`` lists every problem found."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__(
            "audit summary is malformed: " + "; ".join(self.problems) + " (the package was "
            "written by another clinaudit version, or edited; re-run its package stage)"
        )


def _number(value: Any) -> float | None:
    """A finite float, or ``None`` for a missing / NaN / infinite value (JSON has no NaN)."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _flag(value: Any) -> bool | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return bool(value)


@dataclass(frozen=True)
class CriterionOutcome:
    """One criterion of a decision, as judged.

    Attributes
    ----------
    where : str
        The partition it was judged for (``"site_b"``), or the key the study's decision uses
        for a study-wide criterion (``"network"``, ``"all sites"``).
    criterion : str
        Which criterion, specific enough to be unique with ``where``
        (``"auroc ci_low [Effusion]"``, ``"tpr_gap estimate [sex]"``).
    value : float or None
        The number judged (``None``: not computable, e.g. insufficient data).
    limit : float or None
        The floor or limit it is compared with (``None``: a yes/no criterion).
    comparator : str
        ``">="``, ``"<="``, ``"=="``, ``"="``, ... as the study writes it.
    passed : bool or None
        Whether it passed (``None``: not evaluated, e.g. disabled by the policy).
    value_after, passed_after : float, bool or None
        The same after the study's allowed mitigations (``None`` when it has none).
    detail : str
        The evidence in words.
    """

    where: str
    criterion: str
    value: float | None
    limit: float | None
    comparator: str
    passed: bool | None
    value_after: float | None = None
    passed_after: bool | None = None
    detail: str = ""

    def __post_init__(self) -> None:
        for name in ("value", "limit", "value_after"):
            object.__setattr__(self, name, _number(getattr(self, name)))
        for name in ("passed", "passed_after"):
            object.__setattr__(self, name, _flag(getattr(self, name)))
        object.__setattr__(self, "where", str(self.where))
        object.__setattr__(self, "criterion", str(self.criterion))

    @property
    def key(self) -> tuple[str, str]:
        """``(where, criterion)``: what identifies the criterion across two audits."""
        return (self.where, self.criterion)


def outcomes_of_criteria(criteria: Any, where: str) -> list[CriterionOutcome]:
    """:class:`CriterionOutcome` of every row of a study's criteria table judged for ``where``.

    ``criteria`` has the columns ``criterion, kind, enabled, statistic, comparator, threshold,
    value, passed, detail`` (one row per criterion of one decision); a disabled criterion is
    recorded as not evaluated.
    """
    return [
        CriterionOutcome(
            where=where,
            criterion=f"{r.criterion} {r.statistic}".strip(),
            value=r.value,
            limit=r.threshold,
            comparator=r.comparator,
            passed=r.passed if r.enabled else None,
            detail=f"{r.kind}: {r.detail}" if r.enabled else f"{r.kind}: disabled by the policy",
        )
        for r in criteria.itertuples()
    ]


@dataclass(frozen=True)
class AuditSummary:
    """The decisions of one audit and what they rest on (see the module docstring).

    Attributes
    ----------
    decisions : mapping of str to str
        Partition (or the study's overall key) -> decision text (``"NO-GO"``,
        ``"CONDITIONAL GO (priority ordering only)"``).
    criteria : tuple of CriterionOutcome
        Every criterion behind the decisions (may be empty for a study that declares none).
    partitions : tuple of str
        Partitions with data in the audit.
    left_out : mapping of str to str
        Partition -> why it is not part of the audit.
    policy : mapping of str to str
        ``policy_id``, ``policy_version``, ``policy_sha256``.
    model : mapping of str to str
        ``mode``, ``kind``, ``identity`` (sha256) and, where the model card says, ``vendor``
        and ``version``.
    thresholds : mapping of str to float
        The model's operating threshold per output.
    """

    decisions: Mapping[str, str]
    criteria: tuple[CriterionOutcome, ...] = ()
    partitions: tuple[str, ...] = ()
    left_out: Mapping[str, str] = field(default_factory=dict)
    policy: Mapping[str, str] = field(default_factory=dict)
    model: Mapping[str, str] = field(default_factory=dict)
    thresholds: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        keys = [c.key for c in self.criteria]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise SummaryError(
                [f"criteria {twice} occur twice; make each criterion name unique per place"]
            )

    def to_json(self) -> dict[str, Any]:
        """The JSON form written into the manifest (sorted, NaN-free)."""
        return {
            "format": SUMMARY_FORMAT,
            "decisions": dict(sorted(self.decisions.items())),
            "criteria": [asdict(c) for c in self.criteria],
            "partitions": list(self.partitions),
            "left_out": dict(sorted(self.left_out.items())),
            "policy": dict(sorted(self.policy.items())),
            "model": dict(sorted(self.model.items())),
            "thresholds": {k: _number(v) for k, v in sorted(self.thresholds.items())},
        }

    @classmethod
    def from_json(cls, doc: Any) -> AuditSummary:
        """Read :meth:`to_json`'s form back.

        Raises
        ------
        SummaryError
            Listing every missing or malformed field.
        """
        if not isinstance(doc, Mapping):
            raise SummaryError([f"expected a JSON object, received {type(doc).__name__}"])
        problems = []
        if doc.get("format") != SUMMARY_FORMAT:
            problems.append(f"format {doc.get('format')!r}, expected {SUMMARY_FORMAT}")
        mappings = ("decisions", "left_out", "policy", "model", "thresholds")
        for name in mappings:
            if not isinstance(doc.get(name), Mapping):
                problems.append(f"{name} is not an object")
        for name in ("criteria", "partitions"):
            if not isinstance(doc.get(name), list):
                problems.append(f"{name} is not a list")
        criteria: list[CriterionOutcome] = []
        for i, row in enumerate(doc.get("criteria") or []):
            try:
                criteria.append(CriterionOutcome(**row))
            except (TypeError, ValueError) as exc:
                problems.append(f"criteria[{i}]: {exc}")
        if problems:
            raise SummaryError(problems)
        return cls(
            decisions={str(k): str(v) for k, v in doc["decisions"].items()},
            criteria=tuple(criteria),
            partitions=tuple(str(p) for p in doc["partitions"]),
            left_out={str(k): str(v) for k, v in doc["left_out"].items()},
            policy={str(k): str(v) for k, v in doc["policy"].items()},
            model={str(k): str(v) for k, v in doc["model"].items()},
            thresholds={str(k): v for k, v in doc["thresholds"].items()},
        )
