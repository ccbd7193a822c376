"""System tools the report and UI tests need (poppler, chromium).

``make test`` installs the tools first (``make system-deps``). Where a tool is still missing a
test is skipped on a developer's machine, but *fails* when the ``CI`` environment variable is set:
a CI run must never pass by skipping what it was meant to check.
"""

from __future__ import annotations

import os
import shutil

import pytest


def require_tool(name: str, package: str) -> str:
    """The path of system tool ``name``; skip (fail under ``CI``) when it is not installed."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed ({package}): run `make system-deps`"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path
