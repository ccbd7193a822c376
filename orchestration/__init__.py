"""Dagster ``Definitions``, resources, sensors, jobs and the ``clinaudit`` command line."""
