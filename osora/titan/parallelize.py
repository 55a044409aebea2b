"""torchtitan's parallelize_fn for osora's MMDiT: context-parallel attention, activation
checkpointing, optional torch.compile, then FSDP2 / HSDP per MMDIT_SHARD_UNITS — torchtitan's
FLUX order (`parallelize_flux`) with osora's own pieces.

- activation checkpointing: osora.train.activation_checkpoint by block index. torchtitan's
  `activation_checkpoint.mode`: "none"; "full" = every block; "selective" = the first
  [osora] checkpoint_double / checkpoint_single blocks (osora's per-block selection, docs/recipe.md
  §6, not torchtitan's per-op SAC); [osora] checkpoint_offload moves saved inputs to CPU.
- compile (`compile.enable`, "model" in `compile.components`): each block compiled in place
  (`nn.Module.compile`, parameter names unchanged) with `compile.backend`.
- FSDP2 (`parallel_dims.fsdp_enabled`): osora.train.parallel.shard_model over torchtitan's
  "fsdp" mesh (["dp_replicate", "fsdp"] for HSDP), mixed precision from
  `training.mixed_precision_param` / `mixed_precision_reduce`, reshard policy from
  `parallelism.fsdp_reshard_after_forward`; then torchtitan's
  `disable_fsdp_gradient_division`, because its train_step already divides the loss by the
  global token count. On gloo, shard_model forces SUM reductions (no PREMUL_SUM there).
- context parallelism (cp > 1): every block's attention module becomes attention over the
  "cp" mesh's group with [osora] cp_attention (osora.train.context_parallel.
  parallelize_attention, as torchtitan swaps attention modules); the fsdp mesh includes the cp
  ranks, so FSDP2 sums their partial gradients; the root's `embed` is registered as an FSDP2
  forward method because osora.train.context_parallel.context_parallel_forward enters there.
  The trainer splits the sequence (OsoraTrainer).

Tensor, pipeline and expert parallelism, DDP without sharding, and FSDP CPU offload are
refused with an error naming the setting.
"""

from __future__ import annotations

from torch import nn
from torchtitan.config import TORCH_DTYPE_MAP
from torchtitan.models.llama3.infra.parallelize import disable_fsdp_gradient_division
from torchtitan.tools.logging import logger

from osora.titan.job_config import osora_options
from osora.train.activation_checkpoint import apply_checkpointing
from osora.train.block_compile import compile_blocks
from osora.train.context_parallel import parallelize_attention
from osora.train.dit_setup import MMDIT_SHARD_UNITS
from osora.train.parallel import shard_model


def parallelize_osora_mmdit(model: nn.Module, parallel_dims, job_config) -> nn.Module:
    """torchtitan's `parallelize_fn(model, parallel_dims, job_config)` (module doc); the
    model is still on the meta device and is changed in place and returned."""
    _refuse_unsupported(parallel_dims, job_config)
    opts = osora_options(job_config)

    if parallel_dims.cp_enabled:
        parallelize_attention(model, parallel_dims.get_mesh("cp").get_group(), opts.cp_attention)
        logger.info(f"Context parallelism: {opts.cp_attention} attention over the cp mesh")

    done = _apply_activation_checkpointing(model, job_config.activation_checkpoint.mode, opts)
    if done:
        kinds = sorted(set(done.values()))
        logger.info(f"osora activation checkpointing: {len(done)} blocks ({', '.join(kinds)})")

    if job_config.compile.enable and "model" in job_config.compile.components:
        compile_blocks(model, MMDIT_SHARD_UNITS, backend=job_config.compile.backend)
        logger.info(f"Compiled each MMDiT block with backend {job_config.compile.backend}")

    if parallel_dims.fsdp_enabled:
        names = ["dp_replicate", "fsdp"] if parallel_dims.dp_replicate_enabled else ["fsdp"]
        shard_model(
            model,
            MMDIT_SHARD_UNITS,
            mesh=parallel_dims.get_mesh(names),
            param_dtype=TORCH_DTYPE_MAP[job_config.training.mixed_precision_param],
            reduce_dtype=TORCH_DTYPE_MAP[job_config.training.mixed_precision_reduce],
            reshard_after_forward=_reshard_after_forward(job_config),
            forward_methods=("embed",) if parallel_dims.cp_enabled else (),
        )
        disable_fsdp_gradient_division(model)
        kind = "HSDP" if parallel_dims.dp_replicate_enabled else "FSDP2"
        units = ", ".join(u.__name__ for u in MMDIT_SHARD_UNITS)
        logger.info(f"Applied {kind} to the MMDiT ({units} units) over mesh {names}")
    return model


def _refuse_unsupported(parallel_dims, job_config) -> None:
    """Errors for what this adapter does not implement, before anything is changed."""
    unsupported = [
        (parallel_dims.tp_enabled, "parallelism.tensor_parallel_degree > 1 (tensor parallel)"),
        (parallel_dims.pp_enabled, "parallelism.pipeline_parallel_degree > 1 (pipeline)"),
        (parallel_dims.ep_enabled, "parallelism.expert_parallel_degree > 1 (no experts)"),
        (parallel_dims.dp_replicate_enabled and not parallel_dims.fsdp_enabled,
         "DDP without sharding (data_parallel_replicate_degree > 1 with shard degree 1): "
         "use data_parallel_shard_degree > 1 (FSDP2 / HSDP)"),
        (job_config.training.enable_cpu_offload,
         "training.enable_cpu_offload (FSDP2 CPU offload; use [osora] checkpoint_offload "
         "for activations)"),
    ]
    for refused, what in unsupported:
        if refused:
            raise NotImplementedError(f"osora_mmdit does not support {what}")
    if job_config.compile.enable and "loss" in job_config.compile.components:
        logger.warning("compile.components 'loss': the flow loss is not compiled separately")


def _apply_activation_checkpointing(model: nn.Module, mode: str, opts) -> dict[str, str]:
    """activation_checkpoint.mode → osora's per-block checkpointing (module doc)."""
    if mode == "none":
        return {}
    if mode == "full":
        return apply_checkpointing(model, -1, -1, opts.checkpoint_offload)
    if mode == "selective":
        return apply_checkpointing(model, opts.checkpoint_double, opts.checkpoint_single,
                                   opts.checkpoint_offload)
    raise NotImplementedError(f"activation_checkpoint.mode {mode!r}: osora_mmdit supports "
                              "none, full and selective (osora's per-block counts)")


def _reshard_after_forward(job_config) -> bool:
    """parallelism.fsdp_reshard_after_forward: "never" keeps blocks gathered after forward;
    "default" and "always" reshard (torchtitan's default without pipeline parallelism)."""
    return job_config.parallelism.fsdp_reshard_after_forward != "never"
