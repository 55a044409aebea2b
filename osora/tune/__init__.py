"""Per-bucket batch-size search: probes as torchrun jobs of the tuned stage's ranks, with its
FSDP2, context parallelism and checkpointing; Optuna studies; the result written into
params/buckets.yaml."""
