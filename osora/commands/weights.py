"""`osora weights import KIND SRC DST`: released weights → an osora MMDiT checkpoint
(`osora.weights.mmdit`), shaped by params/dit.yaml:model.

- opensora_v2: the released Open-Sora v2 DiT (key map + RoPE layout, `opensora_v2.py`);
- flux: FLUX.1 as the initialisation of training (`flux.py`): input/output layers are
  re-initialised when the configured AE's C·p² differs from FLUX's, and FLUX-dev's guidance
  embedding is dropped unless the config keeps it.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    weights = sub.add_parser("weights", help="import released weights")
    weights_sub = weights.add_subparsers(dest="action", required=True)
    p = weights_sub.add_parser("import", help="convert released weights into an osora "
                               "checkpoint", description=__doc__)
    p.add_argument("kind", choices=("opensora_v2", "flux"))
    p.add_argument("src", type=Path, help="a .safetensors file, shard index, or their folder")
    p.add_argument("dst", type=Path, help="the osora checkpoint to write (.safetensors)")
    p.add_argument("--profile", default="tiny", help="params profile giving dit.model")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                   help="cast the weights (default: keep the checkpoint's)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from osora.config import load_settings
    from osora.weights.mmdit import mmdit_config, save_mmdit

    config = mmdit_config(load_settings(args.profile).dit.model)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, None: None}[args.dtype]
    if args.kind == "opensora_v2":
        from osora.weights.opensora_v2 import load_opensora_v2

        model = load_opensora_v2(args.src, config, dtype=dtype)
    else:
        from osora.weights.flux import load_flux

        model, report = load_flux(args.src, config, dtype=dtype)
        print(report)
    print(save_mmdit(model, args.dst))
    return 0
