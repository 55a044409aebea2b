"""RecoverySettings, what auto-recovery (osora.train.recovery) counts as a fault and does:
plain Python (no torch), so params/dit.yaml `train.recovery` (osora.config.dit) takes it as its
type without loading torch."""

from dataclasses import dataclass


@dataclass(frozen=True)
class RecoverySettings:
    """What counts as a fault and what is done; also the type of params/dit.yaml
    `train.recovery` (osora.config.dit), where every field is stated and __post_init__ is its
    validation."""

    __pydantic_config__ = {"extra": "forbid"}  # as params: an unknown key is an error

    max_recoveries: int = 0  # NaN/spike restores per process; 0: a NaN loss is an error
    spike_sigma: float = 0.0  # a loss above mean + k·std of the window is a spike; 0: off
    spike_window: int = 50  # accepted losses the spike statistics use (and must have first)
    slow_factor: float = 0.0  # a step slower than factor × median step time is slow; 0: off
    slow_window: int = 20  # recent step times the median is taken over
    slow_patience: int = 3  # slow steps in a row before RestartRequired
    # no step for this long: dump stacks and exit, for torchrun --max-restarts to restart; 0: off
    hang_seconds: float = 0.0

    def __post_init__(self):
        least = {"max_recoveries": 0, "spike_window": 2, "slow_window": 2, "slow_patience": 1}
        for name, bound in least.items():
            if getattr(self, name) < bound:
                raise ValueError(f"RecoverySettings: {name} must be ≥ {bound}, got "
                                 f"{getattr(self, name)}")
        for name in ("spike_sigma", "slow_factor", "hang_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"RecoverySettings: {name} must be ≥ 0 (0: off), got "
                                 f"{getattr(self, name)}")
