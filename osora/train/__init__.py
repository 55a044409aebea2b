"""Training: parallelism, the training loop, objectives and resumable checkpoints."""
