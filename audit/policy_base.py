"""The policy envelope every study shares: one ``Decision`` enum, ``PolicyBase`` and ``Criterion``.

A study's policy is a frozen dataclass that subclasses :class:`PolicyBase` (identity, exact text,
sha256 of the file bytes, where it was read from) and adds its own sections. The subclass declares
its strict YAML schema (``SCHEMA``, built with :func:`~clinaudit.audit.policy_yaml.leaf` and
:func:`~clinaudit.audit.policy_yaml.section`), the relations between keys (``cross_checks``) and
how parsed values become the dataclass (``from_values``); reading, decoding, strict parsing, the
study check and the hash are written once here.

Decisions are :class:`Decision` members everywhere (tables store their text: ``"CONDITIONAL GO"``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Self

import yaml

from .policy_yaml import Field, PolicyError, Problem, parse_policy_bytes
from .types import AuditInputError

__all__ = ["COMPARATORS", "Criterion", "Decision", "PolicyBase", "statistic_phrase"]


class Decision(StrEnum):
    """The committee's decision for a site (or a whole study): the same three words everywhere.

    Members compare equal to their text, so tables written before this enum read the same.

    Examples
    --------
    >>> Decision("CONDITIONAL GO") is Decision.CONDITIONAL_GO
    True
    >>> Decision.worst([Decision.GO, Decision.NO_GO])
    <Decision.NO_GO: 'NO-GO'>
    """

    GO = "GO"
    CONDITIONAL_GO = "CONDITIONAL GO"
    NO_GO = "NO-GO"

    @property
    def css(self) -> str:
        """CSS class of the decision badge in the reports."""
        return {"GO": "go", "CONDITIONAL GO": "conditional", "NO-GO": "nogo"}[self.value]

    @property
    def ask(self) -> str:
        """What the committee is asked to approve."""
        return {
            "GO": "Deploy",
            "CONDITIONAL GO": "Deploy with conditions",
            "NO-GO": "Do not deploy",
        }[self.value]

    @property
    def rank(self) -> int:
        """0 for GO, 1 for CONDITIONAL GO, 2 for NO-GO (higher is worse)."""
        return list(Decision).index(self)

    @classmethod
    def worst(cls, decisions: Any) -> Decision:
        """The most restrictive of ``decisions`` (an iterable of members or their text)."""
        members = [cls(d) for d in decisions]
        if not members:
            raise AuditInputError(
                "decisions", "nothing", "at least one decision", "pass the per-site decisions"
            )
        return max(members, key=lambda d: d.rank)


#: Comparator of a criterion -> the words used in reports.
COMPARATORS: Mapping[str, str] = {">=": "≥", "<=": "≤"}


def statistic_phrase(statistic: str) -> str:
    """``"lower CI bound of "`` / ``"upper CI bound of "`` / ``""`` for a criterion's statistic."""
    return {"ci_low": "lower CI bound of ", "ci_high": "upper CI bound of ", "estimate": ""}[
        statistic
    ]


def _refuse_other_study(data: bytes, study: str, source: str) -> None:
    """A file that declares another study is refused with that one problem (not with a wall of
    "unknown key" problems from a schema it was never meant for)."""
    try:
        raw = yaml.safe_load(data.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError):
        return  # the strict parser reports it, with its position
    declared = raw.get("study") if isinstance(raw, dict) else None
    if study and isinstance(declared, str) and declared != study:
        raise PolicyError(
            source,
            [
                Problem(
                    "study",
                    repr(declared),
                    repr(study),
                    f"this is a policy of study {declared!r}: give it to that study (clinaudit "
                    f"audit --study {declared} --policy FILE), or use a {study} policy",
                )
            ],
        )


@dataclass(frozen=True)
class Criterion:
    """A policy criterion: one ``statistic`` of a metric compared with a ``threshold``.

    Attributes
    ----------
    enabled : bool
        Whether the criterion is evaluated.
    statistic : {"estimate", "ci_low", "ci_high"}
        Which number is compared: the point estimate or one end of its interval.
    threshold : float
        The floor (``>=``) or limit (``<=``); NaN only while the criterion is disabled.
    """

    enabled: bool
    statistic: str
    threshold: float

    @classmethod
    def from_values(cls, values: Mapping[str, Any], key: str) -> Criterion:
        """From a parsed criterion section (``enabled``, ``statistic``, and ``key``).

        A disabled criterion may omit its threshold (NaN); ``statistic`` defaults to the estimate.
        """
        value = values[key]
        return cls(
            bool(values["enabled"]),
            str(values.get("statistic") or "estimate"),
            float("nan") if value is None else float(value),
        )

    def phrase(self, name: str, comparator: str) -> str:
        """E.g. ``"lower CI bound of AUROC >= 0.60"``."""
        return f"{statistic_phrase(self.statistic)}{name} {comparator} {self.threshold:.2f}"


@dataclass(frozen=True, kw_only=True)
class PolicyBase(ABC):
    """What every study policy carries; a study's policy subclasses it with its own sections.

    Attributes
    ----------
    policy_id, version, study, title : str
        Identity of the policy (from the file); ``study`` must name the study it governs.
    text : str
        The exact file text (embedded in every package).
    sha256 : str
        sha256 of the file bytes: decisions cite exactly the text they used.
    source : str
        Where the policy was read from.

    Subclasses set ``SCHEMA`` and ``STUDY`` and implement :meth:`from_values` and
    :meth:`describe`; they may add :meth:`cross_checks`.
    """

    SCHEMA: ClassVar[Mapping[str, Field]] = {}
    STUDY: ClassVar[str] = ""

    policy_id: str
    version: str
    study: str
    title: str
    text: str
    sha256: str
    source: str

    # ---------------------------------------------------------------- hooks of a study's policy
    @classmethod
    @abstractmethod
    def from_values(cls, values: dict[str, Any], *, text: str, sha256: str, source: str) -> Self:
        """Build the policy from the strictly parsed ``values`` (every key valid)."""

    @classmethod
    def cross_checks(cls, values: dict[str, Any]) -> list[Problem]:
        """Relations between keys (the schema checks each key alone); none by default."""
        return []

    @abstractmethod
    def describe(self) -> str:
        """The rules in plain words, for the report appendix (the exact file is embedded)."""

    # ---------------------------------------------------------------- written once
    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "<text>") -> Self:
        """Parse policy YAML bytes strictly (UTF-8); see :meth:`load`.

        Raises
        ------
        PolicyError
            Listing every problem by key path (unknown key, missing value, wrong type, relations,
            a ``study`` key naming another study).
        """

        def checks(values: dict[str, Any]) -> list[Problem]:
            problems = []
            if cls.STUDY and values.get("study") != cls.STUDY:
                problems.append(
                    Problem(
                        "study",
                        repr(values.get("study")),
                        repr(cls.STUDY),
                        f"write 'study: {cls.STUDY}' (or use the policy of the study it names)",
                    )
                )
            return problems + cls.cross_checks(values)

        _refuse_other_study(data, cls.STUDY, source)
        parsed = parse_policy_bytes(data, cls.SCHEMA, source=source, cross_checks=checks)
        return cls.from_values(parsed.values, text=parsed.text, sha256=parsed.sha256, source=source)

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Read and strictly validate the policy file at ``path``.

        Raises
        ------
        AuditInputError
            If the file does not exist.
        PolicyError
            If it is not a valid policy of this study.
        """
        file = Path(path)
        if not file.is_file():
            raise AuditInputError(
                "path",
                str(file),
                "an existing policy YAML file",
                "check the path, or omit it to use the policy shipped with the study",
            )
        return cls.from_bytes(file.read_bytes(), source=str(file))

    def identity(self) -> dict[str, str]:
        """``policy_id``, ``policy_version``, ``policy_sha256``: what a decided table cites."""
        return {
            "policy_id": self.policy_id,
            "policy_version": self.version,
            "policy_sha256": self.sha256,
        }
