"""Dagster software-defined assets, one module per study. Asset bodies only wire: they read inputs,
call the pure core packages and attach metadata."""
