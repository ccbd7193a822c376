"""Versioned audit and deployment policy of study ``sepsis_ews``: strict YAML, frozen dataclasses.

The shipped policy is ``policy.yaml`` beside this module (every key is commented there); a user
may pass their own file (``CLINAUDIT_SEPSIS_EWS_POLICY``). Parsing uses the strict machinery of
:mod:`clinaudit.audit.policy_yaml` through :class:`~clinaudit.audit.policy_base.PolicyBase`:
every unknown key, missing value, wrong type, out-of-range value or broken relation between keys
is collected and raised at once as a :class:`~clinaudit.audit.policy_yaml.PolicyError` naming the
key path and the fix. ``SepsisPolicy.sha256`` is the sha256 of the file bytes: the audit cites
exactly the text it used.

>>> from clinaudit.studies import get_study
>>> policy = get_study("sepsis_ews").load_policy()
>>> policy.criteria.auroc.threshold, policy.mitigation.method
(0.7, 'group_thresholds')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Self

from clinaudit.audit.fairness_mitigation import METHODS, TARGET_METRICS
from clinaudit.audit.policy_base import COMPARATORS, Criterion, PolicyBase, statistic_phrase
from clinaudit.audit.policy_yaml import (
    Field,
    Problem,
    flatten_section,
    leaf,
    order_problems,
    section,
)

__all__ = [
    "LARGEST",
    "POLICY_ATTRIBUTES",
    "STUDY",
    "AnalysisSettings",
    "DriftSettings",
    "MitigationSettings",
    "SepsisCriteria",
    "SepsisMonitoring",
    "SepsisPolicy",
]

STUDY = "sepsis_ews"
LARGEST = "largest"
#: Protected attributes a policy may audit (columns of the sepsis stays table).
POLICY_ATTRIBUTES: tuple[str, ...] = ("sex", "race_ethnicity", "age_band")

_CRITERION = {
    "auroc": ("floor", ("ci_low", "estimate"), "0.70"),
    "ece": ("limit", ("estimate", "ci_high"), "0.05"),
}
SCHEMA: dict[str, Field] = {
    "policy_id": leaf("str", "clinaudit.sepsis_ews.network_deployment"),
    "version": leaf("str", '"1.0.0"'),
    "study": leaf("str", STUDY),
    "title": leaf("str", default=""),
    "analysis": section(
        attributes=leaf(
            "option_list", "[sex, race_ethnicity, age_band]", options=POLICY_ATTRIBUTES
        ),
        intersections=leaf("bool", default=True),
        reference_groups=section(
            required=False, **{a: leaf("str", default=None) for a in POLICY_ATTRIBUTES}
        ),
        min_pos=leaf("int", "10"),
        min_neg=leaf("int", "10"),
        n_boot=leaf("int", "1000"),
        ci_level=leaf("fraction", "0.95"),
        n_bins=leaf("int", "10"),
    ),
    "criteria": section(
        **{
            name: section(
                enabled=leaf("bool", default=True),
                statistic=leaf("option", default=stats[0], options=stats),
                **{key: leaf("fraction", example)},
            )
            for name, (key, stats, example) in _CRITERION.items()
        },
        alert_rate=section(enabled=leaf("bool", default=True), limit=leaf("fraction", "0.25")),
        fairness_gap=section(
            enabled=leaf("bool", default=True),
            metrics=leaf("option_list", "[tpr]", options=TARGET_METRICS),
            statistic=leaf("option", default="estimate", options=("estimate", "ci_low")),
            limit=leaf("fraction", "0.10"),
        ),
    ),
    "mitigation": section(
        method=leaf("option", "group_thresholds", options=METHODS),
        alternatives=leaf("option_list", default=[], options=METHODS),
        attribute=leaf("str", default=LARGEST),
        n_folds=leaf("int", "5"),
    ),
    "drift": section(
        psi_moderate=leaf("number", "0.10"),
        psi_major=leaf("number", "0.25"),
        missing_rate_change=leaf("fraction", "0.10"),
    ),
    "monitoring": section(
        cadence=section(inputs=leaf("str", "weekly"), outcomes=leaf("str", "monthly")),
        min_window_stays=leaf("int", "200"),
        escalation=leaf("str_list", "[sepsis EWS clinical lead, AI governance committee]"),
        suspend_after_consecutive_actions=leaf("int", "2"),
        suspension=leaf("str", "switch the alerts off and return to the standard protocol"),
        drift=section(
            psi_warn=leaf("number", "0.10"),
            psi_action=leaf("number", "0.25"),
            missing_rate_warn_change=leaf("fraction", "0.05"),
            missing_rate_action_change=leaf("fraction", "0.10"),
        ),
        auroc=section(warn_drop=leaf("fraction", "0.03"), action_drop=leaf("fraction", "0.05")),
        sensitivity=section(
            warn_drop=leaf("fraction", "0.05"), action_drop=leaf("fraction", "0.10")
        ),
        ece=section(warn_margin=leaf("fraction", "0.02"), action_margin=leaf("fraction", "0.04")),
        alert_rate=section(
            warn_relative_change=leaf("number", "0.25"),
            action_relative_change=leaf("number", "0.50"),
        ),
        tpr_gap=section(warn=leaf("fraction", "0.10"), action=leaf("fraction", "0.15")),
    ),
}


@dataclass(frozen=True)
class AnalysisSettings:
    """How the audit is computed (the policy's ``analysis`` section)."""

    attributes: tuple[str, ...]
    intersections: bool
    reference_groups: dict[str, str]
    min_pos: int
    min_neg: int
    n_boot: int
    ci_level: float
    n_bins: int


@dataclass(frozen=True)
class SepsisCriteria:
    """Criteria of the recommendation; ``fairness_metrics`` are the gaps that block."""

    auroc: Criterion
    ece: Criterion
    alert_rate: Criterion
    fairness_gap: Criterion
    fairness_metrics: tuple[str, ...]


@dataclass(frozen=True)
class MitigationSettings:
    """The mitigation of the largest gap and the alternatives evaluated beside it."""

    method: str
    alternatives: tuple[str, ...]
    attribute: str
    n_folds: int


@dataclass(frozen=True)
class DriftSettings:
    """Levels of input drift against the model card's training-data summary."""

    psi_moderate: float
    psi_major: float
    missing_rate_change: float


@dataclass(frozen=True)
class SepsisMonitoring:
    """The ``monitoring`` section; attributes are key paths joined by ``_``."""

    cadence_inputs: str
    cadence_outcomes: str
    min_window_stays: int
    escalation: tuple[str, ...]
    suspend_after_consecutive_actions: int
    suspension: str
    drift_psi_warn: float
    drift_psi_action: float
    drift_missing_rate_warn_change: float
    drift_missing_rate_action_change: float
    auroc_warn_drop: float
    auroc_action_drop: float
    sensitivity_warn_drop: float
    sensitivity_action_drop: float
    ece_warn_margin: float
    ece_action_margin: float
    alert_rate_warn_relative_change: float
    alert_rate_action_relative_change: float
    tpr_gap_warn: float
    tpr_gap_action: float


@dataclass(frozen=True, kw_only=True)
class SepsisPolicy(PolicyBase):
    """A loaded ``sepsis_ews`` policy: the envelope of :class:`PolicyBase` and its sections."""

    SCHEMA: ClassVar = SCHEMA
    STUDY: ClassVar = STUDY

    analysis: AnalysisSettings
    criteria: SepsisCriteria
    mitigation: MitigationSettings
    drift: DriftSettings
    monitoring: SepsisMonitoring

    @classmethod
    def cross_checks(cls, values: dict[str, Any]) -> list[Problem]:
        """Relations between keys (the schema checks each key alone; the base the study)."""
        problems = _pair_problems(values)
        a, mit = values["analysis"], values["mitigation"]
        if not a["attributes"]:
            problems.append(
                Problem("analysis.attributes", "[]", "at least one attribute", "list an attribute")
            )
        if mit["attribute"] != LARGEST and mit["attribute"] not in a["attributes"]:
            problems.append(
                Problem(
                    "mitigation.attribute",
                    repr(mit["attribute"]),
                    f"{LARGEST!r} or one of analysis.attributes {a['attributes']}",
                    "name an audited attribute, or write 'largest'",
                )
            )
        if mit["method"] in mit["alternatives"]:
            problems.append(
                Problem(
                    "mitigation.alternatives",
                    repr(mit["alternatives"]),
                    f"methods other than the main method {mit['method']!r}",
                    "remove the main method from the alternatives",
                )
            )
        if mit["n_folds"] < 2:
            problems.append(Problem("mitigation.n_folds", repr(mit["n_folds"]), ">= 2", "e.g. 5"))
        if not values["criteria"]["fairness_gap"]["metrics"]:
            problems.append(
                Problem(
                    "criteria.fairness_gap.metrics", "[]", "[tpr] and/or [fpr]", "list a metric"
                )
            )
        return problems

    @classmethod
    def from_values(cls, values: dict[str, Any], *, text: str, sha256: str, source: str) -> Self:
        a, c, mit = values["analysis"], values["criteria"], values["mitigation"]
        refs = {k: str(g) for k, g in (a["reference_groups"] or {}).items() if g is not None}
        analysis = AnalysisSettings(
            attributes=tuple(a["attributes"]),
            intersections=a["intersections"],
            reference_groups={k: g for k, g in refs.items() if k in a["attributes"]},
            min_pos=a["min_pos"],
            min_neg=a["min_neg"],
            n_boot=a["n_boot"],
            ci_level=a["ci_level"],
            n_bins=a["n_bins"],
        )
        criteria = SepsisCriteria(
            auroc=Criterion.from_values(c["auroc"], "floor"),
            ece=Criterion.from_values(c["ece"], "limit"),
            alert_rate=Criterion.from_values(c["alert_rate"], "limit"),
            fairness_gap=Criterion.from_values(c["fairness_gap"], "limit"),
            fairness_metrics=tuple(c["fairness_gap"]["metrics"]),
        )
        return cls(
            policy_id=values["policy_id"],
            version=values["version"],
            study=values["study"],
            title=values["title"],
            text=text,
            sha256=sha256,
            source=source,
            analysis=analysis,
            criteria=criteria,
            mitigation=MitigationSettings(
                mit["method"], tuple(mit["alternatives"]), mit["attribute"], mit["n_folds"]
            ),
            drift=DriftSettings(**values["drift"]),
            monitoring=SepsisMonitoring(**flatten_section(values["monitoring"])),
        )

    def describe(self) -> str:
        """The policy's rules in plain words, one line per rule (the report's appendix C)."""
        return "\n".join(self.rule_lines())

    def rule_lines(self) -> tuple[str, ...]:
        """:meth:`describe` as lines."""
        c, a, m, mit = self.criteria, self.analysis, self.monitoring, self.mitigation
        crit = [
            (c.auroc, c.auroc.phrase("network AUROC", COMPARATORS[">="])),
            (c.ece, c.ece.phrase("ECE", COMPARATORS["<="])),
            (c.alert_rate, f"alert rate {COMPARATORS['<=']} {c.alert_rate.threshold:.2f}"),
            (
                c.fairness_gap,
                f"{statistic_phrase(c.fairness_gap.statistic)}max-min "
                f"{'/'.join(x.upper() for x in c.fairness_metrics)} gap of each attribute "
                f"{COMPARATORS['<=']} {c.fairness_gap.threshold:.2f}",
            ),
        ]
        refs = ", ".join(f"{k} {v}" for k, v in a.reference_groups.items()) or "largest groups"
        return (
            f"{self.policy_id} version {self.version}: {self.title}.",
            f"Attributes {', '.join(a.attributes)} (intersections: "
            f"{'yes' if a.intersections else 'no'}); reference groups {refs}; cells need "
            f"{a.min_pos} septic and {a.min_neg} non-septic stays; {a.n_boot:,} bootstrap "
            "resamples.",
            "Criteria: " + "; ".join(text for crit_, text in crit if crit_.enabled) + ".",
            "NO-GO when AUROC fails or a criterion still fails with the mitigation; CONDITIONAL "
            "GO when every criterion passes only with it; GO when all pass at the vendor "
            "threshold.",
            f"Mitigation: {mit.method} on the {mit.attribute} gap, {mit.n_folds}-fold "
            f"cross-fitting; alternatives {', '.join(mit.alternatives) or 'none'}. Drift levels "
            f"PSI {self.drift.psi_moderate:g} / {self.drift.psi_major:g}.",
            f"Monitoring: inputs {m.cadence_inputs}, outcomes {m.cadence_outcomes}; escalation "
            f"{' -> '.join(m.escalation)}; suspension after {m.suspend_after_consecutive_actions} "
            "consecutive windows past an action threshold.",
        )


def _pair_problems(v: dict[str, Any]) -> list[Problem]:
    m, d = v["monitoring"], v["drift"]
    return order_problems([
        ("drift", "psi_moderate", d["psi_moderate"], "psi_major", d["psi_major"]),
        ("monitoring.drift", "psi_warn", m["drift"]["psi_warn"], "psi_action",
         m["drift"]["psi_action"]),
        ("monitoring.drift", "missing_rate_warn_change", m["drift"]["missing_rate_warn_change"],
         "missing_rate_action_change", m["drift"]["missing_rate_action_change"]),
        ("monitoring.auroc", "warn_drop", m["auroc"]["warn_drop"], "action_drop",
         m["auroc"]["action_drop"]),
        ("monitoring.sensitivity", "warn_drop", m["sensitivity"]["warn_drop"], "action_drop",
         m["sensitivity"]["action_drop"]),
        ("monitoring.ece", "warn_margin", m["ece"]["warn_margin"], "action_margin",
         m["ece"]["action_margin"]),
        ("monitoring.alert_rate", "warn_relative_change",
         m["alert_rate"]["warn_relative_change"], "action_relative_change",
         m["alert_rate"]["action_relative_change"]),
        ("monitoring.tpr_gap", "warn", m["tpr_gap"]["warn"], "action", m["tpr_gap"]["action"]),
    ])  # fmt: skip
