"""Dagster wiring of the studies: the asset factory (one graph per registered study), its audit
stages, run configuration, metadata and every resource. Asset bodies only wire: they read inputs,
call one study function (pure, no Dagster) and attach metadata."""
