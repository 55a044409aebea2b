"""osora's MMDiT trained by torchtitan's own trainer (the `titan` extra: torchtitan 0.2.2).

torchtitan trains a model through a `TrainSpec`: the model class and its flavours, a
parallelize function, optimizer / LR-scheduler / dataloader / loss builders. This package is
that spec for osora's MMDiT, structured like torchtitan's own FLUX integration
(`torchtitan/models/flux`): a Trainer subclass whose `forward_backward_step` computes the
flow-matching loss, a parallelize function, a job-config extension and an entry point.

    model.py        OsoraMMDiTArgs (flavours tiny / paper / paper_d4), OsoraMMDiT (is an MMDiT)
    parallelize.py  osora's activation checkpointing + FSDP2 over MMDIT_SHARD_UNITS
    data.py         (input_dict, labels) batches: synthetic latents or osora's latents table
    trainer.py      OsoraTrainer: osora's FlowObjective inside torchtitan's train_step
    job_config.py   the [osora] section of a torchtitan TOML
    device.py       torchtitan 0.2.2 on a machine without an accelerator (gloo)
    spec.py         register(): the TrainSpec "osora_mmdit"
    train.py        `torchrun ... -m osora.titan.train --job.config_file ...`

Nothing in osora's core imports this package; it needs torchtitan (`pip install
'osora[titan]'`). See docs/torchtitan.md.
"""

try:
    import torchtitan as _torchtitan
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "osora.titan needs torchtitan 0.2.2: pip install 'osora[titan]' "
        "(or pip install torchtitan==0.2.2)"
    ) from err

TORCHTITAN_VERSION = "0.2.2"  # the release this adapter is written and tested against
if getattr(_torchtitan, "__version__", TORCHTITAN_VERSION) != TORCHTITAN_VERSION:
    import warnings

    warnings.warn(
        f"osora.titan is written for torchtitan {TORCHTITAN_VERSION}, found "
        f"{_torchtitan.__version__}: its Trainer internals may differ",
        stacklevel=2,
    )
