"""Model adapters (registry), vendor model package I/O, training / fine-tuning and batched
inference. Imports no Dagster."""
