"""params/cost.yaml: prices that turn device-hours into USD."""

from pydantic import Field

from osora.config.base import Params


class CostParams(Params):
    # Keys are matched case-insensitively as substrings of torch.cuda.get_device_name(),
    # e.g. "H200" matches "NVIDIA H200". The paper prices every GPU-hour at $2 (H200).
    gpu_hour_usd: dict[str, float] = Field(
        min_length=1, description="USD per GPU-hour by device name fragment"
    )
    cpu_core_hour_usd: float = Field(ge=0.0, description="USD per CPU core-hour (CPU-only stages)")
