"""Data sources: readers for real formats (DICOM, PNG, NIH ChestX-ray14 / CheXpert CSVs), the
landing area layout with its manifests, and deterministic simulators that write data in the same
formats.

Nothing here imports Dagster.
"""
