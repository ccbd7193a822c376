"""Audit statistics shared by every study: discrimination with confidence intervals, calibration,
drift, subgroup gaps, worst cells, mitigations and the decision policy. Imports no Dagster."""
