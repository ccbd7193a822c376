"""Dagster ``Definitions``, resources, jobs, the in-process runner and the ``clinaudit`` CLI."""
