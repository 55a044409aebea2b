"""OsoraTrainer: torchtitan's Trainer with osora's flow-matching step (as torchtitan's
FluxTrainer is for FLUX).

torchtitan keeps everything it owns: process groups and meshes, building the model on the
meta device and parallelizing it (osora.titan.parallelize), AdamW and the LR schedule
(build_optimizers / build_lr_schedulers), gradient accumulation, gradient clipping
(dist_utils.clip_grad_norm_), DCP checkpoints, metrics (loss, tps, tflops, MFU, memory),
profiling and the GC schedule. One method changes, `forward_backward_step`: it reseeds the
global RNG from (seed, data rank, step) exactly as osora's loop does (osora.train.loop._step)
and takes the microbatch through osora's `FlowObjective` — t drawn logit-normal with the
bucket's resolution shift, the noise, the velocity MSE with conditioned frames left out
(osora.diffusion.flow) — under torchtitan's train context and AMP. The mean loss is weighted
by the microbatch's share of the step's tokens (torchtitan's `global_valid_tokens`), because
FSDP's own gradient division is off (`disable_fsdp_gradient_division`): summed over ranks and
microbatches it is the mean. (`train_step` only resets the microbatch count.)

So with the same weights, batches and seed, a step here is osora's step (tests/titan).

Context parallelism (parallelism.context_parallel_degree > 1): the ranks of a cp group read
the same batch and draw the same noise (data rank = batch-mesh rank), and FlowObjective runs
the MMDiT through osora.train.context_parallel.context_parallel_forward, its attention bound to
torchtitan's cp mesh by osora.titan.parallelize. Every rank of a group then holds the group's
whole loss, so the value returned for logging is divided by the cp degree (torchtitan sums it
over its "loss" mesh).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torchtitan.config import JobConfig
from torchtitan.train import Trainer

from osora.titan.data import from_titan
from osora.titan.device import use_cpu_without_accelerator
from osora.titan.job_config import osora_options
from osora.train.flow_objective import FlowObjective

MODEL_NAME = "osora_mmdit"


class OsoraTrainer(Trainer):
    def __init__(self, job_config: JobConfig):
        if job_config.model.name != MODEL_NAME:
            raise ValueError(f"OsoraTrainer trains model.name = {MODEL_NAME!r}, the config "
                             f"says {job_config.model.name!r}")
        use_cpu_without_accelerator()  # no-op where there is a GPU (osora.titan.device)
        super().__init__(job_config)

        opts = osora_options(job_config)
        dims = self.parallel_dims
        self.seed = job_config.debug.seed or 0
        self.data_rank = dims.get_mesh("batch").get_local_rank() if dims.dp_enabled else 0
        self.cp = dims.cp if dims.cp_enabled else 1
        self._microbatch = 0
        model = self.model_parts[0]
        context = {}
        if self.cp > 1:
            from osora.train.parallel import ContextLayout

            dp = dims.get_mesh("batch").size() if dims.dp_enabled else 1
            layout = ContextLayout(self.cp, dp, self.data_rank, dims.get_mesh("cp").get_group())
            context = {"context": layout}  # attention bound to the cp group by parallelize
        # osora's objective; its Update's optimizer is not used here (torchtitan's train_step
        # zeroes, clips and steps self.optimizers)
        self.objective = FlowObjective(model, self.optimizers, patch_size=model.config.patch_size,
                                       sigma_min=opts.sigma_min, **context)

    def train_step(self, data_iterator: Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]
                   ) -> None:
        """torchtitan's own train_step; forward_backward_step counts its microbatches."""
        self._microbatch = 0
        super().train_step(data_iterator)

    def _seed_microbatch(self) -> None:
        """Seed the global RNG as osora's loop seeds a step: from (seed, data rank, step),
        osora's 0-based step (self.step counts from 1). Later microbatches of a step (gradient
        accumulation, which osora's loop does not have) add their index. Seeding here, not at
        the start of the step, keeps the draws independent of the dataloader's own use of the
        RNG (torch's DataLoader draws a base seed when its iterator starts)."""
        key = (self.seed, self.data_rank, self.step - 1)
        if self._microbatch:
            key += (self._microbatch,)
        torch.manual_seed(hash(key) % 2**63)
        self._microbatch += 1

    def forward_backward_step(self, *, input_dict: dict[str, torch.Tensor],
                              labels: torch.Tensor,
                              global_valid_tokens: torch.Tensor | float) -> torch.Tensor:
        """One microbatch's flow loss, backpropagated (module doc). labels: the (B, L + N)
        token mask of osora.titan.data; returns the loss for logging (detached)."""
        if self.parallel_dims.pp_enabled:
            raise NotImplementedError("osora_mmdit has no pipeline parallelism")
        batch = from_titan(input_dict)
        self._seed_microbatch()
        update = next(self.objective.updates(batch, self.step - 1))
        with self.train_context():
            with self.maybe_enable_amp:
                mean_loss, _ = update.loss()  # scalar, float32
                loss = mean_loss * (labels.numel() / global_valid_tokens)
            loss.backward()
        return loss.detach() / self.cp
