"""Strict YAML parsing for policy files: a small schema language and one parse entry point.

Every study's policy (``studies/<study>/policy.yaml``) is parsed the same way: the schema is a
mapping of key -> :class:`Field` built with :func:`leaf` and :func:`section`;
:func:`parse_policy_bytes` decodes, loads and validates the file, collecting every problem (unknown
key, missing required value, wrong type, value out of range, broken relation between keys) and
raising them at once as a :class:`PolicyError` naming the dotted key path
(``criteria.auroc.floor``), what was found, what was expected and the fix.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from .types import AuditInputError

__all__ = [
    "Field",
    "ParsedPolicy",
    "PolicyError",
    "Problem",
    "flatten_section",
    "leaf",
    "order_problems",
    "parse_mapping",
    "parse_policy_bytes",
    "section",
]


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
class Field:
    """Schema of one policy key.

    Attributes
    ----------
    kind : str
        ``str``, ``number`` (> 0), ``fraction`` (in (0, 1)), ``int`` (>= 1), ``bool``,
        ``str_list``, ``option``, ``option_list`` or ``map`` (a nested section).
    required : bool
        Whether the key must be present.
    default : Any
        Value used when an optional key is absent.
    options : tuple of str
        Allowed values of an ``option`` / ``option_list``.
    children : mapping of str to Field, optional
        The keys of a ``map``.
    example : str
        Example value quoted in the fix of a problem.
    required_if_enabled : bool
        Required unless the enclosing section says ``enabled: false``.
    """

    kind: str
    required: bool = True
    default: Any = None
    options: tuple[str, ...] = ()
    children: Mapping[str, Field] | None = None
    example: str = ""
    required_if_enabled: bool = False


def leaf(kind: str, example: str = "", **options: Any) -> Field:
    """A required leaf key of ``kind``; passing ``default=...`` makes it optional.

    Parameters
    ----------
    kind : str
        See :class:`Field`.
    example : str
        Example value for the fix of a missing or invalid value.
    **options
        Further :class:`Field` attributes (``default``, ``options``, ``required_if_enabled``).

    Returns
    -------
    Field

    Examples
    --------
    >>> leaf("fraction", "0.05").required, leaf("bool", default=True).required
    (True, False)
    """
    return Field(kind, required="default" not in options, example=example, **options)


def section(*, required: bool = True, **children: Field) -> Field:
    """A nested section (``map``) with the given child keys.

    Examples
    --------
    >>> list(section(enabled=leaf("bool", default=True)).children or {})
    ['enabled']
    """
    return Field("map", required=required, children=children)


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


def _leaf_ok(value: Any, field: Field) -> bool:
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


def _expected(field: Field) -> str:
    if field.children is not None:
        return f"a section with keys {list(field.children)}"
    if field.kind == "option":
        return f"one of {list(field.options)}"
    if field.kind == "option_list":
        return f"a list of distinct values from {list(field.options)}"
    return _EXPECTED[field.kind]


def _leaf_problem(key: str, value: Any, field: Field) -> Problem:
    expected = _expected(field)
    received = f"{value!r} ({type(value).__name__})"
    example = field.example or yaml.safe_dump(field.default, default_flow_style=True).strip()
    fix = f"write e.g. '{key.rsplit('.', 1)[-1]}: {example.removesuffix(chr(10) + '...')}'"
    if field.kind == "str" and _is_number(value):
        fix = f'quote the value so YAML keeps it a string, e.g. {key.rsplit(".", 1)[-1]}: "{value}"'
    return Problem(key, received, expected, fix)


def _missing_problem(path: str, field: Field) -> Problem:
    key = path.rsplit(".", 1)[-1]
    return Problem(
        path, "nothing (missing)", _expected(field), f"add '{key}: {field.example or '...'}'"
    )


def parse_mapping(
    raw: Any, schema: Mapping[str, Field], prefix: str, problems: list[Problem]
) -> dict[str, Any]:
    """Validate ``raw`` against ``schema``, appending every problem; return the parsed values.

    Parameters
    ----------
    raw : Any
        The loaded YAML (a mapping when valid).
    schema : mapping of str to Field
        Allowed keys.
    prefix : str
        Dotted path of ``raw`` followed by ``"."`` (``""`` at the top level).
    problems : list of Problem
        Appended to, in place.

    Returns
    -------
    dict
        Every schema key: the value (numbers as float), or the default of an absent key.

    Examples
    --------
    >>> problems = []
    >>> parse_mapping({"a": 0.5, "b": 1}, {"a": leaf("fraction")}, "", problems)
    {'a': 0.5}
    >>> problems[0].key
    'b'
    """
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


@dataclass(frozen=True)
class ParsedPolicy:
    """A validated policy file: parsed ``values``, the decoded ``text`` and its ``sha256``."""

    values: dict[str, Any]
    text: str
    sha256: str


def parse_policy_bytes(
    data: bytes,
    schema: Mapping[str, Field],
    *,
    source: str,
    cross_checks: Callable[[dict[str, Any]], list[Problem]],
) -> ParsedPolicy:
    """Decode (UTF-8), load (YAML) and validate policy bytes against ``schema``.

    Parameters
    ----------
    data : bytes
        The file bytes (the sha256 is taken over exactly these).
    schema : mapping of str to Field
        The study's top-level schema.
    source : str, keyword-only
        Where the bytes came from (named in the error).
    cross_checks : callable, keyword-only
        Relations between keys, called on the parsed values only when every key is valid alone.

    Returns
    -------
    ParsedPolicy

    Raises
    ------
    PolicyError
        Listing every problem: not UTF-8, invalid YAML, or each key / relation that fails.
    """
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
    values = parse_mapping(raw, schema, "", problems)
    if not problems:
        problems.extend(cross_checks(values))
    if problems:
        raise PolicyError(source, problems)
    return ParsedPolicy(values, text, hashlib.sha256(data).hexdigest())


def order_problems(pairs: Sequence[tuple[str, str, float, str, float]]) -> list[Problem]:
    """A problem for each ``(key, low_name, low, high_name, high)`` where not ``low < high``.

    Examples
    --------
    >>> [p.received for p in order_problems([("drift", "warn", 0.3, "action", 0.2)])]
    ['warn=0.3, action=0.2']
    """
    return [
        Problem(key, f"{lo_name}={lo}, {hi_name}={hi}", f"{lo_name} < {hi_name}", "adjust them")
        for key, lo_name, lo, hi_name, hi in pairs
        if lo >= hi
    ]


def flatten_section(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested parsed values: key paths joined by ``_``, lists turned into tuples.

    Examples
    --------
    >>> flatten_section({"drift": {"psi_warn": 0.1}, "escalation": ["a", "b"]})
    {'drift_psi_warn': 0.1, 'escalation': ('a', 'b')}
    """
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out |= flatten_section(value, f"{prefix}{key}_")
        else:
            out[prefix + key] = tuple(value) if isinstance(value, list) else value
    return out
