"""osora's sampling schedule as diffusers' `FlowMatchEulerDiscreteScheduler`.

osora samples on linspace(1, 0, N+1) shifted by α = `flow.latent_shift(latent shape, p)`:
t ← α·t / (1 + (α − 1)·t) (osora.diffusion.sampler.sampling_timesteps). The scheduler with
`use_dynamic_shifting=True, time_shift_type="linear"` shifts sigmas by
mu / (mu + (1/σ − 1)) (its `_time_shift_linear`, exponent 1), which is that formula for mu = α;
given the unshifted sigmas linspace(1, 1/N, N) (FLUX's pipeline passes the same) it appends the
final 0. So `set_osora_timesteps(scheduler, N, α)` gives osora's N+1 times, in float32.
"""

from __future__ import annotations

import numpy as np
from diffusers import FlowMatchEulerDiscreteScheduler

# the config that makes the scheduler compute osora's schedule (every other option off)
OSORA_SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True,
                              time_shift_type="linear", shift_terminal=None,
                              use_karras_sigmas=False, use_exponential_sigmas=False,
                              use_beta_sigmas=False, invert_sigmas=False,
                              stochastic_sampling=False)


def osora_scheduler() -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(**OSORA_SCHEDULER_CONFIG)


def check_scheduler(scheduler) -> None:
    """ValueError unless `scheduler` computes osora's schedule (the pipeline's sampler only
    knows that one)."""
    if not isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        raise ValueError(f"OsoraPipeline samples with osora's Euler schedule; give it a "
                         f"FlowMatchEulerDiscreteScheduler, not {type(scheduler).__name__}")
    wrong = {k: scheduler.config[k] for k, v in OSORA_SCHEDULER_CONFIG.items()
             if k != "num_train_timesteps" and scheduler.config.get(k) != v}
    if wrong:
        raise ValueError(f"scheduler config {wrong} differs from osora's schedule "
                         f"{OSORA_SCHEDULER_CONFIG}: use osora.diffusers.osora_scheduler()")


def set_osora_timesteps(scheduler: FlowMatchEulerDiscreteScheduler, steps: int, alpha: float,
                        device=None) -> None:
    """scheduler.sigmas ← osora's `sampling_timesteps(steps, alpha)` (N+1, float32)."""
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1.0 / steps, steps), mu=alpha,
                            device=device)
