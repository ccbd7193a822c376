"""Validation of landed data: pandera schemas, per-image checks, image-quality features, Great
Expectations 1.x suites and quarantine records.

Nothing here imports Dagster: the ingest asset turns these results into asset checks.
"""
