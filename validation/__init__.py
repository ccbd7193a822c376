"""Validation of landed data: pandera schemas, per-image checks, image-quality features, Great
Expectations 1.x suites and quarantine records.

Only ``clinaudit.validation.checks`` imports Dagster (it turns the pure results into asset checks).
"""
