"""The subcommands of `osora` (osora/cli.py) that load models; each imports torch only when run."""
