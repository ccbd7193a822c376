"""Versioned deployment decision policy: strict YAML loading into frozen dataclasses.

A policy is a YAML file (the study's default ships in ``audit/policies/<study>.yaml``; a user may
pass their own path). Parsing is strict (:mod:`clinaudit.audit.policy_yaml`): every problem in the
file (unknown key, missing required threshold, wrong type, value out of range) is collected and
raised at once as a :class:`PolicyError` naming the key path (``criteria.auroc.floor``), what was
found and the fix. This module holds the site-deployment schema of ``multisite_cxr``; a study
with its own schema has its own loader (see ``OTHER_LOADERS``).
``Policy.sha256`` is the sha256 of the file bytes, so decisions cite exactly the text they used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .policy_yaml import (
    Field,
    PolicyError,
    Problem,
    flatten_section,
    leaf,
    order_problems,
    parse_mapping,
    parse_policy_bytes,
    section,
)
from .types import AuditInputError

__all__ = [
    "DECISIONS",
    "OTHER_LOADERS",
    "SCHEMA",
    "SITE_RECALIBRATION",
    "Criteria",
    "DriftRule",
    "MonitoringPolicy",
    "Policy",
    "PolicyError",
    "Problem",
    "ThresholdCriterion",
    "criterion_phrase",
    "describe_policy",
    "load_policy",
    "parse_mapping",
    "policy_from_bytes",
    "shipped_policies",
]

DECISIONS: tuple[str, ...] = ("GO", "CONDITIONAL GO", "NO-GO")
SITE_RECALIBRATION = "site_recalibration"
#: Studies whose policy has another schema -> the loader to use instead of :func:`load_policy`.
OTHER_LOADERS: Mapping[str, str] = {
    "sepsis_ews": "clinaudit.audit.sepsis_policy.load_sepsis_policy",
}


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
class ThresholdCriterion:
    """A per-finding criterion comparing one statistic with a threshold.

    Attributes
    ----------
    enabled : bool
        Whether the criterion is evaluated.
    statistic : str
        ``"ci_low"``, ``"ci_high"`` or ``"estimate"``: which number is compared.
    threshold : float
        The floor (``>=``) or limit (``<=``).
    """

    enabled: bool
    statistic: str
    threshold: float


@dataclass(frozen=True)
class Criteria:
    """The blocking criteria (see the policy file's comments)."""

    auroc: ThresholdCriterion
    ece: ThresholdCriterion
    sensitivity: ThresholdCriterion
    data_sufficiency: bool


@dataclass(frozen=True)
class DriftRule:
    """Which drift flags a site and the best decision a drifted site can get."""

    features: tuple[str, ...]
    psi_levels: tuple[str, ...]
    mmd: bool
    max_decision: str


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
        return self.cadence_go if decision == "GO" else self.cadence_conditional_go


@dataclass(frozen=True)
class Policy:
    """A loaded decision policy.

    Attributes
    ----------
    policy_id, version, study, title : str
        Identity of the policy (from the file).
    critical_findings : tuple of str
        Findings whose criteria drive the decision.
    criteria : Criteria
    drift : DriftRule
    allowed_mitigations : tuple of str
        Subset of ``("site_recalibration",)``.
    retrained_model_counts : bool
        Whether a re-trained model's AUROC may rescue discrimination (default no).
    monitoring : MonitoringPolicy
    text : str
        The file text (for the report appendix).
    sha256 : str
        sha256 of the file bytes.
    source : str
        Where the policy was read from.
    """

    policy_id: str
    version: str
    study: str
    title: str
    critical_findings: tuple[str, ...]
    criteria: Criteria
    drift: DriftRule
    allowed_mitigations: tuple[str, ...]
    retrained_model_counts: bool
    monitoring: MonitoringPolicy
    text: str
    sha256: str
    source: str

    def allows(self, mitigation: str) -> bool:
        """Whether ``mitigation`` (e.g. ``"site_recalibration"``) may rescue a criterion."""
        return mitigation in self.allowed_mitigations


def shipped_policies() -> dict[str, Path]:
    """Study name -> path of the policy files shipped with clinaudit."""
    folder = resources.files("clinaudit.audit") / "policies"
    return {
        Path(str(p)).stem: Path(str(p))
        for p in sorted(folder.iterdir(), key=str)
        if str(p).endswith(".yaml")
    }


def load_policy(path: str | Path | None = None, *, study: str = "multisite_cxr") -> Policy:
    """Load and strictly validate a decision policy.

    Parameters
    ----------
    path : str or Path, optional
        A user policy file; default the policy shipped for ``study``.
    study : str
        The study the policy must govern (its ``study`` key must match). A study in
        ``OTHER_LOADERS`` (``"sepsis_ews"``) has its own schema and is refused.

    Returns
    -------
    Policy

    Raises
    ------
    PolicyError
        Listing every unknown key, missing threshold, wrong type or out-of-range value by key path.
    AuditInputError
        If the file does not exist, no policy ships for ``study``, or ``study`` has its own
        loader (``load_policy(study="sepsis_ews")`` names ``load_sepsis_policy``).

    Examples
    --------
    >>> p = load_policy()
    >>> p.criteria.auroc.threshold, p.critical_findings[0]
    (0.6, 'Effusion')
    """
    if study in OTHER_LOADERS:
        raise AuditInputError(
            "study",
            repr(study),
            f"a study with the site-deployment policy schema (not one of {sorted(OTHER_LOADERS)})",
            f"the {study!r} policy has its own schema: load it with {OTHER_LOADERS[study]}(path)",
        )
    if path is None:
        shipped = shipped_policies()
        if study not in shipped:
            raise AuditInputError(
                "study",
                repr(study),
                f"a study with a shipped policy, one of {sorted(shipped)}",
                "pass path= your own policy file, or one of the shipped study names",
            )
        path = shipped[study]
    file = Path(path)
    if not file.is_file():
        raise AuditInputError(
            "path", str(file), "an existing policy YAML file", "check the path (or pass path=None)"
        )
    policy = policy_from_bytes(file.read_bytes(), source=str(file))
    if policy.study != study:
        raise PolicyError(
            str(file),
            [
                Problem(
                    "study",
                    repr(policy.study),
                    f"{study!r} (the study being decided)",
                    f"use a policy written for {study!r}, or pass study={policy.study!r}",
                )
            ],
        )
    return policy


def policy_from_bytes(data: bytes, *, source: str = "<text>") -> Policy:
    """Parse policy YAML bytes (UTF-8); see :func:`load_policy`."""
    parsed = parse_policy_bytes(data, SCHEMA, source=source, cross_checks=_cross_checks)
    return _build(parsed.values, text=parsed.text, sha256=parsed.sha256, source=source)


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


def _threshold(values: dict[str, Any], key: str) -> ThresholdCriterion:
    value = values[key]  # None only when the criterion is disabled
    return ThresholdCriterion(values["enabled"], values["statistic"], value or float("nan"))


def _build(v: dict[str, Any], *, text: str, sha256: str, source: str) -> Policy:
    c, d, m = v["criteria"], v["drift"], v["monitoring"]
    criteria = Criteria(
        auroc=_threshold(c["auroc"], "floor"),
        ece=_threshold(c["ece"], "limit"),
        sensitivity=_threshold(c["sensitivity"], "floor"),
        data_sufficiency=c["data_sufficiency"]["enabled"],
    )
    monitoring = MonitoringPolicy(**flatten_section(m))
    return Policy(
        policy_id=v["policy_id"],
        version=v["version"],
        study=v["study"],
        title=v["title"],
        critical_findings=tuple(v["critical_findings"]),
        criteria=criteria,
        drift=DriftRule(tuple(d["features"]), tuple(d["psi_levels"]), d["mmd"], d["max_decision"]),
        allowed_mitigations=tuple(v["allowed_mitigations"]),
        retrained_model_counts=v["retrained_model_counts"],
        monitoring=monitoring,
        text=text,
        sha256=sha256,
        source=source,
    )


def criterion_phrase(name: str, criterion: ThresholdCriterion) -> str:
    """E.g. ``"lower CI bound of AUROC >= 0.60"`` for the criterion called ``name``."""
    words = {"ci_low": "lower CI bound of ", "ci_high": "upper CI bound of ", "estimate": ""}
    comparator = "<=" if name == "ECE" else ">="
    return f"{words[criterion.statistic]}{name} {comparator} {criterion.threshold:.2f}"


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
        f"Monitoring: {m.cadence_go} for GO sites, {m.cadence_conditional_go} for CONDITIONAL GO "
        f"sites; escalation {' -> '.join(m.escalation)}; suspend after "
        f"{m.suspend_after_consecutive_actions} consecutive windows past an action threshold.",
        f"NO-GO sites: not deployed; {m.not_deployed_action}.",
    ]
    return "\n".join(lines)
