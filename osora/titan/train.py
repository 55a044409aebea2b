"""Entry point: torchtitan's `main` with OsoraTrainer (cf. torchtitan's flux/train.py).

    torchrun --nproc_per_node 8 -m osora.titan.train \
        --job.config_file osora/titan/configs/paper_d4_256px.toml

Every torchtitan option can follow as `--section.key value` (CLI > TOML > defaults). The
[osora] section (osora.titan.job_config) is added as torchtitan's custom config module
when neither the command line nor the TOML names one.
"""

from __future__ import annotations

import sys

CUSTOM_CONFIG_MODULE = "osora.titan.job_config"
_CUSTOM_KEYS = ("--job.custom_config_module", "--job.custom-config-module")


def with_osora_config(args: list[str]) -> list[str]:
    """args plus `--job.custom_config_module osora.titan.job_config` unless the command line
    or its TOML (--job.config_file) already names a custom config module."""
    if any(a.split("=", 1)[0] in _CUSTOM_KEYS for a in args):
        return list(args)
    toml = _toml(args)
    if (toml.get("job") or {}).get("custom_config_module"):
        return list(args)
    return [*args, f"{_CUSTOM_KEYS[0]}={CUSTOM_CONFIG_MODULE}"]


def _toml(args: list[str]) -> dict:
    """The TOML that --job.config_file (or --job.config-file) names; {} without one."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: torchtitan's own dependency
        import tomli as tomllib

    keys = ("--job.config_file", "--job.config-file")
    for i, arg in enumerate(args):
        key, _, value = arg.partition("=")
        if key in keys:
            path = value if value else (args[i + 1] if i + 1 < len(args) else None)
            if path:
                with open(path, "rb") as f:
                    return tomllib.load(f)
    return {}


def main() -> None:
    from torchtitan.train import main as titan_main

    from osora.titan.spec import register
    from osora.titan.trainer import OsoraTrainer

    register()
    sys.argv[1:] = with_osora_config(sys.argv[1:])  # torchtitan's main parses sys.argv
    titan_main(OsoraTrainer)


if __name__ == "__main__":
    main()
