"""`osora weights import KIND SRC DST`: released weights → an osora MMDiT checkpoint
(`osora.weights.mmdit`), shaped by params/dit.yaml:model.

- opensora_v2: the released Open-Sora v2 DiT (key map + RoPE layout, `opensora_v2.py`);
- flux: FLUX.1 as the initialisation of training (`flux.py`): input/output layers are
  re-initialised when the configured AE's C·p² differs from FLUX's, and FLUX-dev's guidance
  embedding is dropped unless the config keeps it.
- diffusers: a folder `osora weights export diffusers` wrote, back to the checkpoint it came
  from: its tensors in their dtype and its metadata (`diffusers_export.py`).

`osora weights export diffusers CKPT DIR`: a checkpoint, its AE and text encoder reference as a
folder `osora.diffusers.OsoraPipeline.from_pretrained` loads (docs/diffusers.md).

`osora weights merge-lora BASE ADAPTER_DIR OUT`: a LoRA stage's adapter merged into its base
(`osora.weights.lora`).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    weights = sub.add_parser("weights", help="import, export and merge weights")
    weights_sub = weights.add_subparsers(dest="action", required=True)
    p = weights_sub.add_parser("import", help="convert released weights into an osora "
                               "checkpoint", description=__doc__)
    p.add_argument("kind", choices=("opensora_v2", "flux", "diffusers"))
    p.add_argument("src", type=Path, help="a .safetensors file, shard index, or their folder "
                   "(diffusers: the exported folder)")
    p.add_argument("dst", type=Path, help="the osora checkpoint to write (.safetensors)")
    p.add_argument("--profile", default="tiny", help="params profile giving dit.model")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                   help="cast the weights (default: keep the checkpoint's)")
    p.set_defaults(func=run)
    e = weights_sub.add_parser("export", help="an osora checkpoint in another format",
                               description=__doc__)
    e.add_argument("kind", choices=("diffusers",))
    e.add_argument("checkpoint", type=Path, help="the osora MMDiT checkpoint (.safetensors)")
    e.add_argument("out", type=Path, help="the folder to write")
    e.add_argument("--autoencoder", type=Path, default=None,
                   help="AE weights (default: as `osora sample`: params/ae.yaml's, else the "
                   "ae_train stage's DC-AE)")
    e.add_argument("--profile", default="tiny", help="params profile giving the AE and the "
                   "text encoder")
    e.set_defaults(func=run_export)
    m = weights_sub.add_parser(
        "merge-lora", help="a base checkpoint + a LoRA adapter folder → one osora checkpoint",
        description="Merge a LoRA adapter (the folder a LoRA stage writes, models/dit/<stage>/"
        "lora) into the checkpoint it was trained on: W + (alpha / r)·B·A, written as an "
        "osora MMDiT checkpoint with the base's text encoder. Refused when the adapter "
        "records another base (MMDiT config or sha256).")
    m.add_argument("base", type=Path, help="the osora checkpoint the adapter was trained on")
    m.add_argument("adapter", type=Path, help="the adapter folder (adapter_model.safetensors "
                   "+ adapter_config.json)")
    m.add_argument("out", type=Path, help="the merged checkpoint to write (.safetensors)")
    m.set_defaults(func=run_merge_lora)


def run_merge_lora(args: argparse.Namespace) -> int:
    # peft is imported only by the commands that use LoRA
    from osora.weights.lora import merge_lora

    print(merge_lora(args.base, args.adapter, args.out))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from osora.config import load_settings
    from osora.paths import project_root
    from osora.weights.diffusers_export import export_diffusers

    print(export_diffusers(args.checkpoint, args.out, load_settings(args.profile),
                           autoencoder=args.autoencoder, root=project_root()))
    return 0


def run_import_diffusers(args: argparse.Namespace) -> int:
    from osora.weights.diffusers_export import import_diffusers

    if args.dtype is not None:
        raise ValueError("import diffusers writes the exported checkpoint back in its own "
                         "dtype; drop --dtype")
    print(import_diffusers(args.src, args.dst))
    return 0


def run(args: argparse.Namespace) -> int:
    import torch

    if args.kind == "diffusers":
        return run_import_diffusers(args)

    from osora.config import load_settings
    from osora.weights.mmdit import save_mmdit

    config = load_settings(args.profile).dit.model
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
