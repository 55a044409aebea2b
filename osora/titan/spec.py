"""The TrainSpec "osora_mmdit": osora's MMDiT for torchtitan 0.2.2 (cf. torchtitan's
`torchtitan/models/flux/__init__.py:get_train_spec`).

Importing this module registers the spec, so torchtitan's `--experimental.custom_import
osora.titan.spec` works; `register()` is idempotent. Train with OsoraTrainer
(`python -m osora.titan.train`): torchtitan's plain Trainer would feed the model
`input_dict["input"]`, which these batches do not have.
"""

from __future__ import annotations

from torchtitan.components.lr_scheduler import build_lr_schedulers
from torchtitan.components.optimizer import build_optimizers
from torchtitan.protocols.train_spec import TrainSpec, get_train_spec, register_train_spec

from osora.diffusion.flow import flow_loss
from osora.titan.data import build_osora_dataloader
from osora.titan.model import OsoraMMDiT, flavours
from osora.titan.parallelize import parallelize_osora_mmdit
from osora.titan.trainer import MODEL_NAME


def build_flow_loss(job_config, **kwargs):
    """torchtitan's `build_loss_fn`: osora's flow_loss (model_out, x0, noise, loss_mask,
    sigma_min). OsoraTrainer applies it through FlowObjective, which also draws t and the
    noise, so the Trainer's `loss_fn` attribute itself is not called."""
    return flow_loss


def train_spec() -> TrainSpec:
    """A new TrainSpec for osora's MMDiT (flavours read from osora's params)."""
    return TrainSpec(
        model_cls=OsoraMMDiT,
        model_args=flavours(),
        parallelize_fn=parallelize_osora_mmdit,
        pipelining_fn=None,
        build_optimizers_fn=build_optimizers,
        build_lr_schedulers_fn=build_lr_schedulers,
        build_dataloader_fn=build_osora_dataloader,
        build_tokenizer_fn=None,
        build_loss_fn=build_flow_loss,
        build_validator_fn=None,
        build_metrics_processor_fn=None,
        state_dict_adapter=None,
    )


def register() -> TrainSpec:
    """Register "osora_mmdit" with torchtitan unless it already is; returns the registered
    spec."""
    try:
        return get_train_spec(MODEL_NAME)
    except ValueError:  # torchtitan: "TrainSpec osora_mmdit is not registered."
        spec = train_spec()
        register_train_spec(MODEL_NAME, spec)
        return spec


register()
