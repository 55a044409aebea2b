"""Per-bucket batch-size search (RECIPE §6): probes in their own processes, Optuna studies,
the result written into params/buckets.yaml."""
