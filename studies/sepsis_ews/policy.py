"""Versioned audit and deployment policy of study ``sepsis_ews``: strict YAML, frozen dataclasses.

The shipped policy is ``audit/policies/sepsis_ews.yaml`` (every key is commented there); a user may
pass their own file. Parsing uses the strict machinery of :mod:`clinaudit.audit.policy_yaml`
(shared with the ``multisite_cxr`` policy): every unknown key, missing value, wrong type or
out-of-range value is collected and raised at once as a
:class:`~clinaudit.audit.policy_yaml.PolicyError` naming the key path and the fix.
``SepsisPolicy.sha256`` is the sha256 of the file bytes: the audit cites exactly the text it used.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .fairness_mitigation import METHODS, TARGET_METRICS
from .policy_yaml import (
    Problem,
    flatten_section,
    leaf,
    order_problems,
    parse_policy_bytes,
    section,
)
from .types import AuditInputError

STUDY = "sepsis_ews"
LARGEST = "largest"
#: Protected attributes a policy may audit (columns of the sepsis stays table).
POLICY_ATTRIBUTES: tuple[str, ...] = ("sex", "race_ethnicity", "age_band")

_CRITERION = {
    "auroc": ("floor", ("ci_low", "estimate"), "0.70"),
    "ece": ("limit", ("estimate", "ci_high"), "0.05"),
}
SCHEMA = {
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
class Criterion:
    """A recommendation criterion: ``statistic`` (estimate / ci_low / ci_high) vs ``threshold``."""

    enabled: bool
    statistic: str
    threshold: float


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


@dataclass(frozen=True)
class SepsisPolicy:
    """A loaded ``sepsis_ews`` policy; ``text``/``sha256`` are the exact file and its hash."""

    policy_id: str
    version: str
    study: str
    title: str
    analysis: AnalysisSettings
    criteria: SepsisCriteria
    mitigation: MitigationSettings
    drift: DriftSettings
    monitoring: SepsisMonitoring
    text: str
    sha256: str
    source: str


def shipped_policy_path() -> Path:
    """Path of the policy shipped with clinaudit (``audit/policies/sepsis_ews.yaml``)."""
    return Path(str(resources.files("clinaudit.audit") / "policies" / f"{STUDY}.yaml"))


def load_sepsis_policy(path: str | Path | None = None) -> SepsisPolicy:
    """Load and strictly validate a ``sepsis_ews`` policy file.

    Parameters
    ----------
    path : str or Path, optional
        A user policy file; default the shipped one.

    Returns
    -------
    SepsisPolicy

    Raises
    ------
    PolicyError
        Listing every problem by key path (unknown key, missing value, wrong type, relations).
    AuditInputError
        If the file does not exist.

    Examples
    --------
    >>> p = load_sepsis_policy()
    >>> p.criteria.auroc.threshold, p.mitigation.method
    (0.7, 'group_thresholds')
    """
    file = Path(path) if path is not None else shipped_policy_path()
    if not file.is_file():
        raise AuditInputError(
            "path", str(file), "an existing policy YAML file", "check the path (or pass None)"
        )
    return sepsis_policy_from_bytes(file.read_bytes(), source=str(file))


def sepsis_policy_from_bytes(data: bytes, *, source: str = "<text>") -> SepsisPolicy:
    """Parse policy YAML bytes (UTF-8); see :func:`load_sepsis_policy`."""
    parsed = parse_policy_bytes(data, SCHEMA, source=source, cross_checks=_cross_checks)
    return _build(parsed.values, text=parsed.text, sha256=parsed.sha256, source=source)


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


def _cross_checks(v: dict[str, Any]) -> list[Problem]:
    """Relations between keys (the schema checks each key alone)."""
    problems = _pair_problems(v)
    a, mit = v["analysis"], v["mitigation"]
    if v["study"] != STUDY:
        problems.append(Problem("study", repr(v["study"]), repr(STUDY), f"write 'study: {STUDY}'"))
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
    if not v["criteria"]["fairness_gap"]["metrics"]:
        problems.append(
            Problem("criteria.fairness_gap.metrics", "[]", "[tpr] and/or [fpr]", "list a metric")
        )
    return problems


def _criterion(values: dict[str, Any], key: str) -> Criterion:
    return Criterion(values["enabled"], values.get("statistic", "estimate"), float(values[key]))


def _build(v: dict[str, Any], *, text: str, sha256: str, source: str) -> SepsisPolicy:
    a, c, mit = v["analysis"], v["criteria"], v["mitigation"]
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
        auroc=_criterion(c["auroc"], "floor"),
        ece=_criterion(c["ece"], "limit"),
        alert_rate=_criterion(c["alert_rate"], "limit"),
        fairness_gap=_criterion(c["fairness_gap"], "limit"),
        fairness_metrics=tuple(c["fairness_gap"]["metrics"]),
    )
    return SepsisPolicy(
        policy_id=v["policy_id"],
        version=v["version"],
        study=v["study"],
        title=v["title"],
        analysis=analysis,
        criteria=criteria,
        mitigation=MitigationSettings(
            mit["method"], tuple(mit["alternatives"]), mit["attribute"], mit["n_folds"]
        ),
        drift=DriftSettings(**v["drift"]),
        monitoring=SepsisMonitoring(**flatten_section(v["monitoring"])),
        text=text,
        sha256=sha256,
        source=source,
    )
