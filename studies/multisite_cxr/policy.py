"""The multisite_cxr deployment policy: its strict YAML schema and rules in plain words.

The shipped policy is ``policy.yaml`` beside this module; a user may pass their own file. Parsing
is strict (:mod:`clinaudit.audit.policy_yaml`, through :class:`~clinaudit.audit.policy_base.
PolicyBase`): every problem (unknown key, missing required threshold, wrong type, value out of
range, a ``study`` other than ``multisite_cxr``) is collected and raised at once as a
:class:`~clinaudit.audit.policy_yaml.PolicyError` naming the key path (``criteria.auroc.floor``),
what was found and the fix. ``Policy.sha256`` is the sha256 of the file bytes, so decisions cite
exactly the text they used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

from clinaudit.audit.policy_base import Criterion, Decision, PolicyBase
from clinaudit.audit.policy_yaml import (
    Field,
    PolicyError,
    Problem,
    flatten_section,
    leaf,
    order_problems,
    section,
)

__all__ = [
    "DECISIONS",
    "SCHEMA",
    "SITE_RECALIBRATION",
    "Criteria",
    "DriftRule",
    "MonitoringPolicy",
    "Policy",
    "UnlabelledRule",
    "PolicyError",
    "Problem",
    "criterion_phrase",
    "load_policy",
    "shipped_policy",
]

DECISIONS: tuple[str, ...] = tuple(d.value for d in Decision)
SITE_RECALIBRATION = "site_recalibration"


def _threshold_section(key: str, options: tuple[str, ...], example: str) -> Field:
    return section(
        enabled=leaf("bool", default=True),
        statistic=leaf("option", default=options[0], options=options),
        **{key: Field("fraction", required=False, example=example, required_if_enabled=True)},
    )


_NUMBER = "number"
SCHEMA: Mapping[str, Field] = {
    "policy_id": leaf("str", "clinaudit.multisite_cxr.site_deployment"),
    "version": leaf("str", '"1.0.0"'),
    "study": leaf("str", "multisite_cxr"),
    "title": leaf("str", default=""),
    "critical_findings": leaf("str_list", "[Effusion, Pneumothorax]"),
    "criteria": section(
        auroc=_threshold_section("floor", ("ci_low", "estimate"), "0.60"),
        ece=_threshold_section("limit", ("estimate", "ci_high"), "0.10"),
        sensitivity=_threshold_section("floor", ("ci_low", "estimate"), "0.50"),
        data_sufficiency=section(required=False, enabled=leaf("bool", default=True)),
    ),
    "drift": section(
        features=leaf("str_list", "[mean_intensity, contrast]"),
        psi_levels=leaf("option_list", default=["major"], options=("moderate", "major")),
        mmd=leaf("bool", default=True),
        max_decision=leaf("option", default="CONDITIONAL GO", options=DECISIONS),
    ),
    "allowed_mitigations": leaf(
        "option_list", "[site_recalibration] or []", options=(SITE_RECALIBRATION,)
    ),
    "retrained_model_counts": leaf("bool", default=False),
    # Sites whose images landed before their labels: label-free estimates (PROVISIONAL).
    "unlabelled_sites": section(
        required=False,
        provisional_decision=leaf("bool", default=False),
        max_decision=leaf("option", default="CONDITIONAL GO", options=("CONDITIONAL GO", "NO-GO")),
        ci_level=leaf("fraction", default=0.90),
    ),
    # Scores-only audits without the vendor's thresholds file: the rule that derives each
    # finding's threshold on the reference test split (never 0.5 silently).
    "scores_without_thresholds": section(
        required=False, reference_sensitivity=leaf("fraction", default=0.80)
    ),
    "monitoring": section(
        cadence=section(go=leaf("str", "monthly"), conditional_go=leaf("str", "weekly")),
        escalation=leaf("str_list", "[site AI lead, governance committee chair]"),
        suspend_after_consecutive_actions=leaf("int", "2"),
        drift=section(
            psi_warn=leaf(_NUMBER, "0.10"),
            psi_action=leaf(_NUMBER, "0.25"),
            mmd_p_warn=leaf("fraction", "0.05"),
            mmd_p_action=leaf("fraction", "0.01"),
        ),
        auroc=section(warn_margin=leaf("fraction", "0.05")),
        ece=section(warn_margin=leaf("fraction", "0.02")),
        alert_rate=section(
            warn_relative_change=leaf(_NUMBER, "0.25"),
            action_relative_change=leaf(_NUMBER, "0.50"),
        ),
        not_deployed_action=leaf("str", "re-audit after remediation"),
    ),
}


@dataclass(frozen=True)
class Criteria:
    """The blocking criteria (see the policy file's comments)."""

    auroc: Criterion
    ece: Criterion
    sensitivity: Criterion
    data_sufficiency: bool


@dataclass(frozen=True)
class DriftRule:
    """Which drift flags a site and the best decision a drifted site can get."""

    features: tuple[str, ...]
    psi_levels: tuple[str, ...]
    mmd: bool
    max_decision: str


@dataclass(frozen=True)
class UnlabelledRule:
    """What a site without labels may get from its label-free estimates.

    ``provisional_decision``: whether the estimates may decide at all (otherwise such a site is
    NO-GO until its labels land, and the estimates are shown only); ``max_decision``: the best
    provisional decision (never GO); ``ci_level``: level of the estimates' intervals.
    """

    provisional_decision: bool
    max_decision: str
    ci_level: float


@dataclass(frozen=True)
class MonitoringPolicy:
    """The policy's ``monitoring`` section; each attribute is its key path joined by ``_``."""

    cadence_go: str
    cadence_conditional_go: str
    escalation: tuple[str, ...]
    suspend_after_consecutive_actions: int
    drift_psi_warn: float
    drift_psi_action: float
    drift_mmd_p_warn: float
    drift_mmd_p_action: float
    auroc_warn_margin: float
    ece_warn_margin: float
    alert_rate_warn_relative_change: float
    alert_rate_action_relative_change: float
    not_deployed_action: str

    def cadence(self, decision: str) -> str:
        """The cadence for a deployed site's decision (``GO`` or ``CONDITIONAL GO``)."""
        return self.cadence_go if decision == Decision.GO else self.cadence_conditional_go


@dataclass(frozen=True, kw_only=True)
class Policy(PolicyBase):
    """A loaded multisite_cxr decision policy.

    Attributes
    ----------
    policy_id, version, study, title, text, sha256, source : str
        The envelope (:class:`~clinaudit.audit.policy_base.PolicyBase`).
    critical_findings : tuple of str
        Findings whose criteria drive the decision.
    criteria : Criteria
    drift : DriftRule
    allowed_mitigations : tuple of str
        Subset of ``("site_recalibration",)``.
    retrained_model_counts : bool
        Whether a re-trained model's AUROC may rescue discrimination (default no).
    derived_threshold_sensitivity : float
        Vendor scores without a thresholds file: each finding is judged at the highest threshold
        reaching this sensitivity on the reference site's test split (key
        ``scores_without_thresholds.reference_sensitivity``, default 0.80).
    monitoring : MonitoringPolicy
    unlabelled_sites : UnlabelledRule
        Sites without labels (key ``unlabelled_sites``; default: no provisional decision).
    """

    SCHEMA: ClassVar[Mapping[str, Field]] = SCHEMA
    STUDY: ClassVar[str] = "multisite_cxr"

    critical_findings: tuple[str, ...]
    criteria: Criteria
    drift: DriftRule
    allowed_mitigations: tuple[str, ...]
    retrained_model_counts: bool
    derived_threshold_sensitivity: float
    monitoring: MonitoringPolicy
    unlabelled_sites: UnlabelledRule

    def allows(self, mitigation: str) -> bool:
        """Whether ``mitigation`` (e.g. ``"site_recalibration"``) may rescue a criterion."""
        return mitigation in self.allowed_mitigations

    @classmethod
    def cross_checks(cls, values: dict[str, Any]) -> list[Problem]:
        return _cross_checks(values)

    @classmethod
    def from_values(cls, values: dict[str, Any], *, text: str, sha256: str, source: str) -> Self:
        return _build(cls, values, text=text, sha256=sha256, source=source)

    def describe(self) -> str:
        """Plain-text rendering of the decision rule, for the report appendix."""
        return describe_policy(self)


def shipped_policy() -> Path:
    """The policy shipped with the study (``policy.yaml`` beside this module)."""
    return Path(__file__).with_name("policy.yaml")


def load_policy(path: str | Path | None = None) -> Policy:
    """Load and strictly validate a multisite_cxr policy (default: the shipped one).

    Raises
    ------
    PolicyError
        Listing every unknown key, missing threshold, wrong type or out-of-range value by key path.
    AuditInputError
        If the file does not exist.

    Examples
    --------
    >>> p = load_policy()
    >>> p.criteria.auroc.threshold, p.critical_findings[0]
    (0.6, 'Effusion')
    """
    return Policy.load(path or shipped_policy())


def _cross_checks(v: dict[str, Any]) -> list[Problem]:
    """Relations between keys: each pair (key, low, high) must satisfy low < high."""
    m, c = v["monitoring"], v["criteria"]
    ece_limit = c["ece"]["limit"] if c["ece"]["enabled"] else 1.0
    return order_problems([
        ("monitoring.drift", "psi_warn", m["drift"]["psi_warn"], "psi_action",
         m["drift"]["psi_action"]),
        ("monitoring.alert_rate", "warn_relative_change", m["alert_rate"]["warn_relative_change"],
         "action_relative_change", m["alert_rate"]["action_relative_change"]),
        ("monitoring.ece.warn_margin", "warn_margin", m["ece"]["warn_margin"],
         "criteria.ece.limit", ece_limit),
        ("monitoring.drift", "mmd_p_action", m["drift"]["mmd_p_action"], "mmd_p_warn",
         m["drift"]["mmd_p_warn"]),
    ])  # fmt: skip


def _build(cls: type[Policy], v: dict[str, Any], *, text: str, sha256: str, source: str) -> Policy:
    c, d, m = v["criteria"], v["drift"], v["monitoring"]
    criteria = Criteria(
        auroc=Criterion.from_values(c["auroc"], "floor"),
        ece=Criterion.from_values(c["ece"], "limit"),
        sensitivity=Criterion.from_values(c["sensitivity"], "floor"),
        data_sufficiency=c["data_sufficiency"]["enabled"],
    )
    monitoring = MonitoringPolicy(**flatten_section(m))
    return cls(
        policy_id=v["policy_id"],
        version=v["version"],
        study=v["study"],
        title=v["title"],
        critical_findings=tuple(v["critical_findings"]),
        criteria=criteria,
        drift=DriftRule(tuple(d["features"]), tuple(d["psi_levels"]), d["mmd"], d["max_decision"]),
        allowed_mitigations=tuple(v["allowed_mitigations"]),
        retrained_model_counts=v["retrained_model_counts"],
        derived_threshold_sensitivity=v["scores_without_thresholds"]["reference_sensitivity"],
        monitoring=monitoring,
        unlabelled_sites=UnlabelledRule(**v["unlabelled_sites"]),
        text=text,
        sha256=sha256,
        source=source,
    )


def criterion_phrase(name: str, criterion: Criterion) -> str:
    """E.g. ``"lower CI bound of AUROC >= 0.60"`` for the criterion called ``name``."""
    return criterion.phrase(name, "<=" if name == "ECE" else ">=")


def describe_policy(policy: Policy) -> str:
    """Plain-text rendering of the decision rule, for the report appendix.

    Parameters
    ----------
    policy : Policy

    Returns
    -------
    str
        Identity and hash, criteria with thresholds, decision rule, mitigations and monitoring.
    """
    c, d, m = policy.criteria, policy.drift, policy.monitoring
    lines = [
        f"Policy {policy.policy_id} version {policy.version} (study {policy.study})",
        f"sha256 {policy.sha256}",
        policy.title,
        f"Critical findings: {', '.join(policy.critical_findings)}.",
        "Blocking criteria, per site and critical finding:",
    ]
    named = (("AUROC", c.auroc), ("ECE", c.ece), ("sensitivity", c.sensitivity))
    lines += [f"  - {criterion_phrase(n, crit)}" for n, crit in named if crit.enabled]
    if c.data_sufficiency:
        lines.append('  - data sufficiency: a cell with status "insufficient data" fails')
    flags = f"PSI level in {list(d.psi_levels)} on any of: {', '.join(d.features)}"
    lines += [
        f"Input drift is flagged by a {flags}" + ("; or a significant MMD test." if d.mmd else "."),
        f"Drift alone does not block: a drifted site gets at best {d.max_decision}.",
        "Decision rule:",
        "  GO: every criterion passes without mitigation and no drift is flagged.",
        "  CONDITIONAL GO: every blocking criterion passes after the allowed mitigations,",
        "    or only drift is flagged.",
        "  NO-GO: a blocking criterion fails even after the allowed mitigations.",
        f"Allowed mitigations: {', '.join(policy.allowed_mitigations) or 'none'}.",
        "A re-trained model counts toward the decision: "
        + ("yes." if policy.retrained_model_counts else "no (a new model version, own approval)."),
        "Vendor scores without the vendor's thresholds file are judged at the threshold giving "
        f"{policy.derived_threshold_sensitivity:.0%} sensitivity on the reference test split "
        "(derived by the audit, not the vendor's operating point).",
        f"Monitoring: {m.cadence_go} for GO sites, {m.cadence_conditional_go} for CONDITIONAL GO "
        f"sites; escalation {' -> '.join(m.escalation)}; suspend after "
        f"{m.suspend_after_consecutive_actions} consecutive windows past an action threshold.",
        f"NO-GO sites: not deployed; {m.not_deployed_action}.",
        _unlabelled_rule(policy),
    ]
    return "\n".join(lines)


def _unlabelled_rule(policy: Policy) -> str:
    """The rule for sites without labels, in words."""
    u, c = policy.unlabelled_sites, policy.criteria
    head = (
        f"Sites without labels: label-free estimates with {u.ci_level:.0%} intervals are shown "
        "as PROVISIONAL"
    )
    if not u.provisional_decision:
        return head + "; they decide nothing: such a site is NO-GO until its labels land."
    named = (("AUROC", c.auroc), ("sensitivity", c.sensitivity))
    rules = [criterion_phrase(f"estimated {n}", k) for n, k in named if k.enabled]
    return (
        head + f"; a site gets a provisional {u.max_decision} (pending labels) when every "
        f"critical finding is estimable and {' and '.join(rules) or 'estimable'}, else NO-GO. "
        "Calibration is not assessed without labels."
    )
