"""Where the committee portal and its pages are (no web framework here: the Dagster package
asset imports it to put each package's portal page into its metadata).

Environment variables are read when a function is called, never at import.
"""

from __future__ import annotations

import os
import re
from urllib.parse import quote

__all__ = [
    "DAGSTER_URL_ENV",
    "DEFAULT_DAGSTER_URL",
    "DEFAULT_PORT",
    "NAME",
    "PORTAL_URL_ENV",
    "dagster_base_url",
    "package_path",
    "package_url",
    "portal_base_url",
]

#: Port of ``clinaudit portal`` and ``make ui`` (Dagster's UI is on 3000).
DEFAULT_PORT = 3001
#: Base URL of the portal as its users reach it (a reverse proxy's URL in production).
PORTAL_URL_ENV = "CLINAUDIT_PORTAL_URL"
#: Base URL of the Dagster UI the portal links to.
DAGSTER_URL_ENV = "CLINAUDIT_DAGSTER_URL"
DEFAULT_DAGSTER_URL = "http://127.0.0.1:3000"
#: A study, audit id or file-name component in a URL: letters, digits, ``_ - .``, starting with
#: a letter or digit, at most 128 characters; never ``..``.
NAME = re.compile(r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def portal_base_url() -> str:
    """``$CLINAUDIT_PORTAL_URL`` without a trailing slash, else ``http://127.0.0.1:3001``."""
    base = os.environ.get(PORTAL_URL_ENV) or f"http://127.0.0.1:{DEFAULT_PORT}"
    return base.rstrip("/")


def dagster_base_url() -> str:
    """``$CLINAUDIT_DAGSTER_URL`` without a trailing slash, else ``http://127.0.0.1:3000``."""
    return (os.environ.get(DAGSTER_URL_ENV) or DEFAULT_DAGSTER_URL).rstrip("/")


def package_path(study: str, audit_id: str) -> str:
    """The portal path of one package's page, ``/studies/<study>/packages/<audit_id>``.

    Raises
    ------
    ValueError
        If ``study`` or ``audit_id`` is not a simple name (:data:`NAME`).
    """
    for argument, value in (("study", study), ("audit_id", audit_id)):
        if not NAME.match(value):
            raise ValueError(
                f"{argument}={value!r} is not a simple name; expected letters, digits, '_', '-', "
                "'.' (no '..'), as package folders are named"
            )
    return f"/studies/{quote(study)}/packages/{quote(audit_id)}"


def package_url(study: str, audit_id: str, base: str | None = None) -> str:
    """The absolute URL of one package's portal page (``base`` default: :func:`portal_base_url`).

    Examples
    --------
    >>> package_url("sepsis_ews", "20261202T095730Z-e07663b5", base="https://audit.example.org")
    'https://audit.example.org/studies/sepsis_ews/packages/20261202T095730Z-e07663b5'
    """
    return (base.rstrip("/") if base else portal_base_url()) + package_path(study, audit_id)
