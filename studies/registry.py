"""The study registry (timm-style): ``register_study`` once, ``get_study(name)`` everywhere.

The code location, the runner and the CLI loop over :func:`registered_studies`; nothing shared
names a study. An unknown name lists the known ones and the closest match.
"""

from __future__ import annotations

import difflib

from clinaudit.audit.types import AuditInputError

from .base import Study

__all__ = ["UnknownStudyError", "get_study", "register_study", "registered_studies"]

_REGISTRY: dict[str, Study] = {}


class UnknownStudyError(AuditInputError, KeyError):
    """No study is registered under the name asked for."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return ValueError.__str__(self)


def register_study(study: Study) -> Study:
    """Make ``study`` known under ``study.name`` (re-registering the same class is a no-op).

    Raises
    ------
    ValueError
        If another study class is registered under that name.
    """
    name = getattr(study, "name", None)
    if not isinstance(name, str) or not name.isidentifier() or name != name.lower():
        raise ValueError(
            f"study name {name!r} is not a lowercase identifier; it becomes an asset key prefix, "
            "a folder name and an environment-variable stem (e.g. 'multisite_cxr')"
        )
    known = _REGISTRY.get(name)
    if known is not None and type(known) is not type(study):
        raise ValueError(
            f"study {name!r} is already registered by {type(known).__qualname__}; choose "
            "another name"
        )
    _REGISTRY[name] = study
    return study


def registered_studies(*, order: str = "name") -> list[Study]:
    """Every registered study, by name (``order="registration"``: in the order they were
    registered, the demo order: a study that reuses another's model registers after it)."""
    if order not in ("name", "registration"):
        raise ValueError(f"order={order!r}: use 'name' or 'registration'")
    return (
        list(_REGISTRY.values())
        if order == "registration"
        else [_REGISTRY[k] for k in sorted(_REGISTRY)]
    )


def get_study(name: str) -> Study:
    """The study registered as ``name``.

    Raises
    ------
    UnknownStudyError
        Listing the known studies and the closest match.

    Examples
    --------
    >>> get_study("sepsis_ews").unit
    'stay'
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}?" if close else "register it with register_study()"
        raise UnknownStudyError("study", repr(name), f"one of {sorted(_REGISTRY)}", hint) from None
