"""DCAEConfig, the Video DC-AE's architecture: plain Python (no torch), so params/ae.yaml `dcae`
(osora.config.ae) takes it as its type without loading torch."""

from dataclasses import dataclass

BLOCK_TYPES = ("res", "vit")


@dataclass(frozen=True)
class DCAEConfig:
    """The Video DC-AE architecture; also the type of params/ae.yaml `dcae` (osora.config.ae),
    where every field but in_channels is stated and these checks are its validation."""

    __pydantic_config__ = {"extra": "forbid"}  # as params: an unknown key is an error

    in_channels: int = 3  # RGB; fixed by the code, no params key
    latent_channels: int = 128  # C: channels of the latent
    widths: tuple[int, ...] = (128, 256, 512, 512, 1024, 1024)  # channels, one per stage
    encoder_depths: tuple[int, ...] = (2, 2, 2, 3, 3, 3)  # blocks per encoder stage
    decoder_depths: tuple[int, ...] = (3, 3, 3, 3, 3, 3)  # the reference decoder is deeper
    block_types: tuple[str, ...] = ("res", "res", "res", "vit", "vit", "vit")
    # per down/up block, i.e. between stage i and i + 1 (len(widths) - 1 entries): halve time too?
    temporal_down: tuple[bool, ...] = (False, False, False, True, True)
    head_dim: int = 32  # linear attention: heads = width // head_dim
    attn_scales: tuple[int, ...] = (5,)  # depthwise kernel sizes aggregating q/k/v (multi-scale)
    mlp_ratio: float = 4.0  # GLU MLP hidden width = mlp_ratio · width
    norm_eps: float = 1e-5  # every norm is an RMS norm over channels (reference `rms3d`)
    # the latent's scale: the DiT sees encode(x) / scaling_factor (reference divides in encode)
    scaling_factor: float = 1.0

    def __post_init__(self):
        # lists from YAML params become tuples, so configs stay hashable and comparable
        for name in ("widths", "encoder_depths", "decoder_depths", "block_types", "attn_scales"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "temporal_down", tuple(bool(t) for t in self.temporal_down))
        n = len(self.widths)
        if n < 1:
            raise ValueError("DCAEConfig: widths needs at least one stage")
        if min(self.widths) < 1 or self.in_channels < 1 or self.latent_channels < 1:
            raise ValueError(
                f"DCAEConfig: channel counts must be ≥ 1, got in_channels={self.in_channels}, "
                f"latent_channels={self.latent_channels}, widths={self.widths}"
            )
        for name in ("encoder_depths", "decoder_depths", "block_types"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"DCAEConfig: {name} has {len(getattr(self, name))} entries, widths has {n}; "
                    f"give one per stage"
                )
        if len(self.temporal_down) != n - 1:
            raise ValueError(
                f"DCAEConfig: temporal_down needs one flag per down block ({n - 1}), got "
                f"{len(self.temporal_down)}"
            )
        if any(d < 0 for d in self.encoder_depths + self.decoder_depths):
            raise ValueError("DCAEConfig: depths must be ≥ 0")
        if self.head_dim < 1 or self.mlp_ratio <= 0 or self.norm_eps <= 0:
            raise ValueError(
                f"DCAEConfig: head_dim must be ≥ 1, mlp_ratio and norm_eps > 0, got "
                f"{self.head_dim}, {self.mlp_ratio}, {self.norm_eps}"
            )
        for i, (w, kind) in enumerate(zip(self.widths, self.block_types)):
            if kind not in BLOCK_TYPES:
                raise ValueError(f"DCAEConfig: block_types[{i}]={kind!r}; use one of {BLOCK_TYPES}")
            if kind == "vit" and w % self.head_dim != 0:
                raise ValueError(
                    f"DCAEConfig: vit stage {i} width {w} is not a multiple of head_dim "
                    f"{self.head_dim}"
                )
        if any(k % 2 == 0 for k in self.attn_scales):
            raise ValueError(
                f"DCAEConfig: attn_scales must be odd kernel sizes, got {self.attn_scales}"
            )
        # The parameter-free shortcuts average / duplicate whole channel groups.
        for i in range(n - 1):
            f = 8 if self.temporal_down[i] else 4
            cin, cout = self.widths[i], self.widths[i + 1]
            if (cin * f) % cout or (cout * f) % cin:
                raise ValueError(
                    f"DCAEConfig: widths {cin} → {cout} (space/time factor {f}) cannot share a "
                    f"channel-averaging shortcut: {cin}·{f} and {cout}·{f} must be multiples of "
                    f"{cout} and {cin}"
                )
        if self.widths[-1] % self.latent_channels:
            raise ValueError(
                f"DCAEConfig: last width {self.widths[-1]} must be a multiple of latent_channels "
                f"{self.latent_channels} (channel-averaging shortcut)"
            )
        if self.scaling_factor <= 0:
            raise ValueError(f"DCAEConfig: scaling_factor must be > 0, got {self.scaling_factor}")
