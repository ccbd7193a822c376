"""Versioned audit and operations policy of study ``cxr_triage``: strict YAML, frozen dataclasses.

The shipped policy is ``policy.yaml`` beside this module (every key is commented there); a user
may pass their own file. Parsing uses :class:`~clinaudit.audit.policy_base.PolicyBase`: every
unknown key, missing value, wrong type, out-of-range value or broken relation between keys is
collected and raised at once as a :class:`~clinaudit.audit.policy_yaml.PolicyError` naming the key
path and the fix; ``TriagePolicy.sha256`` is the sha256 of the file bytes.

>>> policy = TriagePolicy.load(SHIPPED_POLICY)
>>> policy.certificate.alpha, policy.workload.reads_per_day
(0.01, 1080.0)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

from clinaudit.audit.policy_base import COMPARATORS, Criterion, PolicyBase
from clinaudit.audit.policy_yaml import Field, Problem, leaf, section
from clinaudit.sources.cxr_labels import FINDINGS

__all__ = [
    "SHIPPED_POLICY",
    "STUDY",
    "SUBGROUP_ATTRIBUTES",
    "VIEWS",
    "CertificateSettings",
    "TriageCriteria",
    "TriageMonitoring",
    "TriagePolicy",
    "WorkloadSettings",
]

STUDY = "cxr_triage"
SHIPPED_POLICY = Path(__file__).with_name("policy.yaml")
#: Attributes the certificate may be re-certified over (columns of the validated table).
SUBGROUP_ATTRIBUTES: tuple[str, ...] = ("sex", "age_band", "view", "site")
#: Frontal views a policy may keep in scope (NIH ``View Position``).
VIEWS: tuple[str, ...] = ("PA", "AP")

SCHEMA: dict[str, Field] = {
    "policy_id": leaf("str", "clinaudit.cxr_triage.reporting_queue"),
    "version": leaf("str", '"1.0.0"'),
    "study": leaf("str", STUDY),
    "title": leaf("str", default=""),
    "labels": section(
        critical=leaf("option_list", "[Pneumothorax, Effusion]", options=FINDINGS),
        critical_weight=leaf("number", "2.0"),
    ),
    "scope": section(
        views=leaf("option_list", "[PA, AP]", options=VIEWS),
        min_age_years=leaf("int", "18"),
        max_clipped_fraction=leaf("fraction", "0.05"),
        min_dynamic_range=leaf("fraction", "0.25"),
    ),
    "calibration": section(
        calibration_fraction=leaf("fraction", "0.6"),
        n_bins=leaf("int", "10"),
        n_boot=leaf("int", "1000"),
        ci_level=leaf("fraction", "0.95"),
    ),
    "certificate": section(
        alpha=leaf("fraction", "0.01"),
        delta=leaf("fraction", "0.05"),
        subgroups=leaf("option_list", default=[], options=SUBGROUP_ATTRIBUTES),
        subgroup_multiplicity=leaf("option", default="none", options=("none", "bonferroni")),
    ),
    "flag": section(
        ppv=leaf("fraction", "0.80"), delta=leaf("fraction", "0.05"), min_flagged=leaf("int", "30")
    ),
    "workload": section(
        radiologists=leaf("int", "3"),
        hours_per_day=leaf("number", "6"),
        reads_per_hour=leaf("number", "60"),
        simulated_pile=leaf("int", "30000"),
        daily_inflow=leaf("int", "900"),
        inflow_days=leaf("int", "20"),
        aging_cap_days=leaf("number", "3.0"),
        first_days=leaf("int", "10"),
        n_draws=leaf("int", "200"),
    ),
    "criteria": section(
        certified=section(enabled=leaf("bool", default=True)),
        test_miss_rate=section(
            enabled=leaf("bool", default=True),
            statistic=leaf("option", default="ci_high", options=("ci_high", "estimate")),
            limit=leaf("fraction", "0.02"),
        ),
        auroc=section(
            enabled=leaf("bool", default=True),
            statistic=leaf("option", default="ci_low", options=("ci_low", "estimate")),
            floor=leaf("fraction", "0.80"),
        ),
        ece=section(
            enabled=leaf("bool", default=True),
            statistic=leaf("option", default="estimate", options=("estimate", "ci_high")),
            limit=leaf("fraction", "0.05"),
        ),
        normals_cleared=section(
            enabled=leaf("bool", default=True),
            statistic=leaf("option", default="estimate", options=("estimate", "ci_low")),
            floor=leaf("fraction", "0.10"),
        ),
        backlog_miss_rate=section(
            enabled=leaf("bool", default=True),
            statistic=leaf("option", default="ci_low", options=("ci_low", "estimate")),
            limit=leaf("fraction", "0.01"),
        ),
    ),
    "monitoring": section(
        reread_fraction=leaf("fraction", "0.05"),
        level=leaf("fraction", "0.05"),
        fallback=leaf("str", "read every study in arrival order (FIFO), no auto-clear"),
        escalation=leaf("str_list", "[department clinical lead, AI governance committee]"),
        recertify_on=leaf("str_list", "[new site, new pile batch, new model version]"),
    ),
}


@dataclass(frozen=True)
class LabelSettings:
    """The label contract: critical findings and their weight in the reading order."""

    critical: tuple[str, ...]
    critical_weight: float


@dataclass(frozen=True)
class ScopeSettings:
    """What the model may clear at all; everything else is ``uncertain`` by rule."""

    views: tuple[str, ...]
    min_age_years: int
    max_clipped_fraction: float
    min_dynamic_range: float


@dataclass(frozen=True)
class CalibrationSettings:
    """The calibration split's share of the development patients, and how calibration is
    reported (temperature scaling itself has no settings)."""

    calibration_fraction: float
    n_bins: int
    n_boot: int
    ci_level: float


@dataclass(frozen=True)
class CertificateSettings:
    """``P(miss rate <= alpha) >= 1 - delta``, re-certified over ``subgroups`` (each group at
    ``delta``, or at ``delta / m`` with ``subgroup_multiplicity = "bonferroni"``)."""

    alpha: float
    delta: float
    subgroups: tuple[str, ...]
    subgroup_multiplicity: str


@dataclass(frozen=True)
class FlagSettings:
    """``P(PPV >= ppv) >= 1 - delta`` for the flag bucket."""

    ppv: float
    delta: float
    min_flagged: int


@dataclass(frozen=True)
class WorkloadSettings:
    """Reading capacity and the queue simulation."""

    radiologists: int
    hours_per_day: float
    reads_per_hour: float
    simulated_pile: int
    daily_inflow: int
    inflow_days: int
    aging_cap_days: float
    first_days: int
    n_draws: int

    @property
    def reads_per_day(self) -> float:
        """Radiologists x hours per day x reads per hour (1,080 in the shipped policy)."""
        return float(self.radiologists * self.hours_per_day * self.reads_per_hour)


@dataclass(frozen=True)
class TriageCriteria:
    """What a GO needs; ``certified`` is a plain switch (a certificate exists or not)."""

    certified: bool
    test_miss_rate: Criterion
    auroc: Criterion
    ece: Criterion
    normals_cleared: Criterion
    backlog_miss_rate: Criterion


@dataclass(frozen=True)
class TriageMonitoring:
    """The re-read quota, its monitor and what happens on alarm."""

    reread_fraction: float
    level: float
    fallback: str
    escalation: tuple[str, ...]
    recertify_on: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class TriagePolicy(PolicyBase):
    """A loaded ``cxr_triage`` policy: the envelope of :class:`PolicyBase` and its sections."""

    SCHEMA: ClassVar = SCHEMA
    STUDY: ClassVar = STUDY

    labels: LabelSettings
    scope: ScopeSettings
    calibration: CalibrationSettings
    certificate: CertificateSettings
    flag: FlagSettings
    workload: WorkloadSettings
    criteria: TriageCriteria
    monitoring: TriageMonitoring

    @classmethod
    def cross_checks(cls, values: dict[str, Any]) -> list[Problem]:
        """Relations between keys (the schema checks each key alone)."""
        problems = []
        if not values["labels"]["critical"]:
            problems.append(
                Problem("labels.critical", "[]", "at least one finding", "e.g. [Pneumothorax]")
            )
        if not values["scope"]["views"]:
            problems.append(Problem("scope.views", "[]", "[PA, AP] or one of them", "list a view"))
        cert = values["certificate"]
        for name in ("test_miss_rate", "backlog_miss_rate"):
            crit = values["criteria"][name]
            if crit["limit"] < cert["alpha"]:
                problems.append(
                    Problem(
                        f"criteria.{name}.limit",
                        repr(crit["limit"]),
                        f">= certificate.alpha ({cert['alpha']})",
                        "a check on held-out studies cannot be stricter than what was certified",
                    )
                )
        work = values["workload"]
        if work["aging_cap_days"] >= work["inflow_days"]:
            problems.append(
                Problem(
                    "workload.aging_cap_days",
                    repr(work["aging_cap_days"]),
                    f"< workload.inflow_days ({work['inflow_days']})",
                    "an aging cap longer than the simulated period never applies",
                )
            )
        return problems

    @classmethod
    def from_values(cls, values: dict[str, Any], *, text: str, sha256: str, source: str) -> Self:
        lab, sc, cert, c = (
            values["labels"],
            values["scope"],
            values["certificate"],
            values["criteria"],
        )
        mon = values["monitoring"]
        return cls(
            policy_id=values["policy_id"],
            version=values["version"],
            study=values["study"],
            title=values["title"],
            text=text,
            sha256=sha256,
            source=source,
            labels=LabelSettings(tuple(lab["critical"]), float(lab["critical_weight"])),
            scope=ScopeSettings(**{**sc, "views": tuple(sc["views"])}),
            calibration=CalibrationSettings(**values["calibration"]),
            certificate=CertificateSettings(**{**cert, "subgroups": tuple(cert["subgroups"])}),
            flag=FlagSettings(**values["flag"]),
            workload=WorkloadSettings(**values["workload"]),
            criteria=TriageCriteria(
                certified=bool(c["certified"]["enabled"]),
                test_miss_rate=Criterion.from_values(c["test_miss_rate"], "limit"),
                auroc=Criterion.from_values(c["auroc"], "floor"),
                ece=Criterion.from_values(c["ece"], "limit"),
                normals_cleared=Criterion.from_values(c["normals_cleared"], "floor"),
                backlog_miss_rate=Criterion.from_values(c["backlog_miss_rate"], "limit"),
            ),
            monitoring=TriageMonitoring(
                mon["reread_fraction"],
                mon["level"],
                mon["fallback"],
                tuple(mon["escalation"]),
                tuple(mon["recertify_on"]),
            ),
        )

    def describe(self) -> str:
        """The policy's rules in plain words, one line per rule (the memo's appendix)."""
        return "\n".join(self.rule_lines())

    def rule_lines(self) -> tuple[str, ...]:
        """:meth:`describe` as lines."""
        c, cert, f, w, s = self.criteria, self.certificate, self.flag, self.workload, self.scope
        crit = [
            (c.test_miss_rate, c.test_miss_rate.phrase("test miss rate", COMPARATORS["<="])),
            (c.auroc, c.auroc.phrase("test AUROC", COMPARATORS[">="])),
            (c.ece, c.ece.phrase("test ECE", COMPARATORS["<="])),
            (c.normals_cleared, c.normals_cleared.phrase("normals cleared", COMPARATORS[">="])),
            (
                c.backlog_miss_rate,
                c.backlog_miss_rate.phrase("read backlog sample miss rate", COMPARATORS["<="]),
            ),
        ]
        crit_text = "; ".join(text for rule, text in crit if rule.enabled)
        if c.certified:
            crit_text = "a certified auto-clear threshold; " + crit_text
        groups = ", ".join(cert.subgroups) or "none"
        return (
            f"{self.policy_id} version {self.version}: {self.title}.",
            f"Normal = no finding; critical findings: {', '.join(self.labels.critical)}.",
            f"In scope: views {'/'.join(s.views)}, age >= {s.min_age_years} years, clipped "
            f"fraction <= {s.max_clipped_fraction:g}, dynamic range >= {s.min_dynamic_range:g}; "
            "anything else is uncertain by rule and never cleared.",
            f"Auto-clear certificate: P(miss rate <= {cert.alpha:g}) >= {1 - cert.delta:g} "
            f"(Learn-then-Test, fixed sequence), re-certified per group of {groups} ("
            + (
                "all groups at once, Bonferroni)."
                if cert.subgroup_multiplicity == "bonferroni"
                else "each group's own guarantee)."
            ),
            f"Flag: P(PPV >= {f.ppv:g}) >= {1 - f.delta:g}.",
            f"Capacity {w.radiologists} radiologists x {w.hours_per_day:g} h x "
            f"{w.reads_per_hour:g} reads/h = {w.reads_per_day:,.0f} reads/day; inflow "
            f"{w.daily_inflow:,}/day for {w.inflow_days} days; aging cap "
            f"{w.aging_cap_days:g} days.",
            "Criteria: " + crit_text + ".",
            f"Monitoring: re-read {self.monitoring.reread_fraction:.0%} of cleared studies; "
            f"alarm at level {self.monitoring.level:g}; on alarm: {self.monitoring.fallback}.",
        )
