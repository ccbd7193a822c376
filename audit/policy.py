"""Versioned deployment decision policy: strict YAML loading into frozen dataclasses.

A policy is a YAML file (the study's default ships in ``audit/policies/<study>.yaml``; a user may
pass their own path). Parsing is strict: every problem in the file (unknown key, missing required
threshold, wrong type, value out of range) is collected and raised at once as a
:class:`PolicyError` naming the key path (``criteria.auroc.floor``), what was found and the fix.
``Policy.sha256`` is the sha256 of the file bytes, so decisions cite exactly the text they used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .types import AuditInputError

DECISIONS: tuple[str, ...] = ("GO", "CONDITIONAL GO", "NO-GO")
SITE_RECALIBRATION = "site_recalibration"


class PolicyError(AuditInputError):
    """A policy file that cannot be used, with every problem found (machine-readable).

    Attributes
    ----------
    source : str
        The file (or ``"<text>"``) the policy came from.
    problems : tuple of Problem
        One entry per problem: ``key`` (dotted path), ``received``, ``expected``, ``fix``.
    """

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        self.argument, self.expected = "policy", "a valid decision policy"
        self.received = f"{source} with {len(problems)} problem(s)"
        self.fix = "edit the policy file as listed"
        lines = [
            f"  - {p.key}: received {p.received}; expected {p.expected}. Fix: {p.fix}"
            for p in problems
        ]
        ValueError.__init__(self, f"invalid decision policy {self.received}:\n" + "\n".join(lines))


@dataclass(frozen=True)
class Problem:
    """One problem in a policy file: the dotted key path, what was found, expected, and the fix."""

    key: str
    received: str
    expected: str
    fix: str


@dataclass(frozen=True)
class _Field:
    """Schema of one policy key: ``kind`` in str, number, fraction, int, bool, str_list, option,
    option_list, map; ``default`` is used when an optional key is absent."""

    kind: str
    required: bool = True
    default: Any = None
    options: tuple[str, ...] = ()
    children: Mapping[str, _Field] | None = None
    example: str = ""
    required_if_enabled: bool = False


def _leaf(kind: str, example: str = "", **options: Any) -> _Field:
    """A required leaf; ``default=...`` makes it optional."""
    return _Field(kind, required="default" not in options, example=example, **options)


def _map(*, required: bool = True, **children: _Field) -> _Field:
    return _Field("map", required=required, children=children)


def _threshold_section(key: str, options: tuple[str, ...], example: str) -> _Field:
    return _map(
        enabled=_leaf("bool", default=True),
        statistic=_leaf("option", default=options[0], options=options),
        **{key: _Field("fraction", required=False, example=example, required_if_enabled=True)},
    )


_NUMBER = "number"
SCHEMA: Mapping[str, _Field] = {
    "policy_id": _leaf("str", "clinaudit.multisite_cxr.site_deployment"),
    "version": _leaf("str", '"1.0.0"'),
    "study": _leaf("str", "multisite_cxr"),
    "title": _leaf("str", default=""),
    "critical_findings": _leaf("str_list", "[Effusion, Pneumothorax]"),
    "criteria": _map(
        auroc=_threshold_section("floor", ("ci_low", "estimate"), "0.60"),
        ece=_threshold_section("limit", ("estimate", "ci_high"), "0.10"),
        sensitivity=_threshold_section("floor", ("ci_low", "estimate"), "0.50"),
        data_sufficiency=_map(required=False, enabled=_leaf("bool", default=True)),
    ),
    "drift": _map(
        features=_leaf("str_list", "[mean_intensity, contrast]"),
        psi_levels=_leaf("option_list", default=["major"], options=("moderate", "major")),
        mmd=_leaf("bool", default=True),
        max_decision=_leaf("option", default="CONDITIONAL GO", options=DECISIONS),
    ),
    "allowed_mitigations": _leaf(
        "option_list", "[site_recalibration] or []", options=(SITE_RECALIBRATION,)
    ),
    "retrained_model_counts": _leaf("bool", default=False),
    "monitoring": _map(
        cadence=_map(go=_leaf("str", "monthly"), conditional_go=_leaf("str", "weekly")),
        escalation=_leaf("str_list", "[site AI lead, governance committee chair]"),
        suspend_after_consecutive_actions=_leaf("int", "2"),
        drift=_map(
            psi_warn=_leaf(_NUMBER, "0.10"),
            psi_action=_leaf(_NUMBER, "0.25"),
            mmd_p_warn=_leaf("fraction", "0.05"),
            mmd_p_action=_leaf("fraction", "0.01"),
        ),
        auroc=_map(warn_margin=_leaf("fraction", "0.05")),
        ece=_map(warn_margin=_leaf("fraction", "0.02")),
        alert_rate=_map(
            warn_relative_change=_leaf(_NUMBER, "0.25"),
            action_relative_change=_leaf(_NUMBER, "0.50"),
        ),
        not_deployed_action=_leaf("str", "re-audit after remediation"),
    ),
}

_EXPECTED = {
    "str": "a non-empty string",
    "number": "a number > 0",
    "fraction": "a number in (0, 1)",
    "int": "an integer >= 1",
    "bool": "true or false",
    "str_list": "a non-empty list of distinct non-empty strings",
}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _leaf_ok(value: Any, field: _Field) -> bool:
    kind = field.kind
    if kind == "str":
        return isinstance(value, str) and bool(value.strip())
    if kind == "number":
        return _is_number(value) and value > 0
    if kind == "fraction":
        return _is_number(value) and 0 < value < 1
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "option":
        return isinstance(value, str) and value in field.options
    items = value if isinstance(value, list) else None
    if items is None or len(set(map(str, items))) != len(items):
        return False
    if kind == "str_list":
        return bool(items) and all(isinstance(x, str) and x.strip() for x in items)
    return all(isinstance(x, str) and x in field.options for x in items)  # option_list


def _expected(field: _Field) -> str:
    if field.children is not None:
        return f"a section with keys {list(field.children)}"
    if field.kind == "option":
        return f"one of {list(field.options)}"
    if field.kind == "option_list":
        return f"a list of distinct values from {list(field.options)}"
    return _EXPECTED[field.kind]


def _leaf_problem(key: str, value: Any, field: _Field) -> Problem:
    expected = _expected(field)
    received = f"{value!r} ({type(value).__name__})"
    example = field.example or yaml.safe_dump(field.default, default_flow_style=True).strip()
    fix = f"write e.g. '{key.rsplit('.', 1)[-1]}: {example.removesuffix(chr(10) + '...')}'"
    if field.kind == "str" and _is_number(value):
        fix = f'quote the value so YAML keeps it a string, e.g. {key.rsplit(".", 1)[-1]}: "{value}"'
    return Problem(key, received, expected, fix)


def parse_mapping(
    raw: Any, schema: Mapping[str, _Field], prefix: str, problems: list[Problem]
) -> dict[str, Any]:
    """Validate ``raw`` against ``schema``, appending every problem; return the parsed values."""
    where = prefix.rstrip(".") or "<top level>"
    if not isinstance(raw, dict):
        expected = f"a mapping with keys {list(schema)}"
        problems.append(Problem(where, repr(raw)[:60], expected, "see the shipped policy"))
        return {}
    for key in sorted(set(map(str, raw)) - set(schema)):
        problems.append(
            Problem(
                f"{prefix}{key}",
                "an unknown key",
                f"one of the allowed keys under {where}: {list(schema)}",
                "remove it or correct its spelling",
            )
        )
    out: dict[str, Any] = {}
    for key, field in schema.items():
        path = f"{prefix}{key}"
        if key in raw and field.kind == "map":
            out[key] = parse_mapping(raw[key], field.children or {}, f"{path}.", problems)
        elif key in raw:
            ok = _leaf_ok(raw[key], field)
            if not ok:
                problems.append(_leaf_problem(path, raw[key], field))
            number = ok and field.kind in ("number", "fraction")
            out[key] = float(raw[key]) if number else raw[key]
        else:
            needed = field.required or (
                field.required_if_enabled and raw.get("enabled") is not False
            )
            if needed:
                problems.append(_missing_problem(path, field))
            out[key] = field.default
            if field.kind == "map":
                sink = problems if not field.required else []
                out[key] = parse_mapping({}, field.children or {}, f"{path}.", sink)
    return out


def _missing_problem(path: str, field: _Field) -> Problem:
    key = path.rsplit(".", 1)[-1]
    return Problem(
        path, "nothing (missing)", _expected(field), f"add '{key}: {field.example or '...'}'"
    )


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
        The study the policy must govern (its ``study`` key must match).

    Returns
    -------
    Policy

    Raises
    ------
    PolicyError
        Listing every unknown key, missing threshold, wrong type or out-of-range value by key path.
    AuditInputError
        If the file does not exist or no policy ships for ``study``.

    Examples
    --------
    >>> p = load_policy()
    >>> p.criteria.auroc.threshold, p.critical_findings[0]
    (0.6, 'Effusion')
    """
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
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PolicyError(
            source, [Problem("<file>", "bytes that are not UTF-8", "UTF-8 text", "save as UTF-8")]
        ) from err
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise PolicyError(
            source, [Problem("<file>", f"invalid YAML ({err})", "valid YAML", "fix the syntax")]
        ) from err
    problems: list[Problem] = []
    values = parse_mapping(raw, SCHEMA, "", problems)
    if not problems:
        problems.extend(_cross_checks(values))
    if problems:
        raise PolicyError(source, problems)
    return _build(values, text=text, sha256=hashlib.sha256(data).hexdigest(), source=source)


def _cross_checks(v: dict[str, Any]) -> list[Problem]:
    """Relations between keys: each pair (key, low, high) must satisfy low < high."""
    m, c = v["monitoring"], v["criteria"]
    ece_limit = c["ece"]["limit"] if c["ece"]["enabled"] else 1.0
    pairs = [
        ("monitoring.drift", "psi_warn", m["drift"]["psi_warn"], "psi_action",
         m["drift"]["psi_action"]),
        ("monitoring.alert_rate", "warn_relative_change", m["alert_rate"]["warn_relative_change"],
         "action_relative_change", m["alert_rate"]["action_relative_change"]),
        ("monitoring.ece.warn_margin", "warn_margin", m["ece"]["warn_margin"],
         "criteria.ece.limit", ece_limit),
        ("monitoring.drift", "mmd_p_action", m["drift"]["mmd_p_action"], "mmd_p_warn",
         m["drift"]["mmd_p_warn"]),
    ]  # fmt: skip
    return [
        Problem(key, f"{lo_name}={lo}, {hi_name}={hi}", f"{lo_name} < {hi_name}", "adjust them")
        for key, lo_name, lo, hi_name, hi in pairs
        if lo >= hi
    ]


def _threshold(section: dict[str, Any], key: str) -> ThresholdCriterion:
    value = section[key]  # None only when the criterion is disabled
    return ThresholdCriterion(section["enabled"], section["statistic"], value or float("nan"))


def _flatten(section: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in section.items():
        if isinstance(value, dict):
            out |= _flatten(value, f"{prefix}{key}_")
        else:
            out[prefix + key] = tuple(value) if isinstance(value, list) else value
    return out


def _build(v: dict[str, Any], *, text: str, sha256: str, source: str) -> Policy:
    c, d, m = v["criteria"], v["drift"], v["monitoring"]
    criteria = Criteria(
        auroc=_threshold(c["auroc"], "floor"),
        ece=_threshold(c["ece"], "limit"),
        sensitivity=_threshold(c["sensitivity"], "floor"),
        data_sufficiency=c["data_sufficiency"]["enabled"],
    )
    monitoring = MonitoringPolicy(**_flatten(m))
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
