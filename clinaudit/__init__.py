"""clinaudit: a governance pipeline for clinical AI.

The stage folders at the top of the repository install as sub-packages of this one:
``clinaudit.sources``, ``clinaudit.validation``, ``clinaudit.models``, ``clinaudit.audit``,
``clinaudit.reporting`` (pure Python, no Dagster import) and ``clinaudit.assets`` /
``clinaudit.orchestration`` (the Dagster wiring).
"""

__version__ = "0.1.0"
