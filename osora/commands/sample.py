"""`osora sample`: render prompts from a checkpoint (defaults: params/dit.yaml:sample), or with
--plan print the device memory it would need per offload mode, loading no weights."""

from __future__ import annotations

import argparse
from pathlib import Path

# command-line flag → params/dit.yaml:sample field (given flags override the params)
OVERRIDES = {"frames": int, "height": int, "width": int, "fps": int, "steps": int,
             "g_img": float, "g_txt": float, "seed": int, "num_samples": int, "batch_size": int,
             "negative_prompt": str, "device": str, "precision": str, "offload": str}


def add_parser(sub) -> None:
    p = sub.add_parser("sample", help="generate videos from prompts with a trained MMDiT",
                       description=__doc__)
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts-file", type=Path, help="a text file, one prompt per line")
    p.add_argument("--checkpoint", type=Path,
                   help="osora MMDiT .safetensors (training's export or `osora weights import`); "
                   "with --plan optional (default: the architecture of params/dit.yaml:model)")
    p.add_argument("--plan", action="store_true",
                   help="print each component's weights and activations and the expected peak "
                   "device memory per --offload mode for this size, frames and precision; "
                   "loads no weights")
    p.add_argument("--image", type=Path, help="condition image (i2v; default kind i2v_head)")
    p.add_argument("--video", type=Path, help="condition video (v2v; default kind v2v_head)")
    p.add_argument("--kind", help="t2v (default), i2v_head|i2v_tail|i2v_loop, "
                   "v2v_head|v2v_tail, or t2i2v: first frame from "
                   "params/dit.yaml:sample.first_frame, then i2v_head")
    p.add_argument("--motion-score", help="motion score stated in the prompt; 'none' omits it")
    p.add_argument("--out", type=Path, default=Path("samples"), help="output folder")
    p.add_argument("--autoencoder", type=Path,
                   help="AE weights to decode with (default: params/ae.yaml's, else "
                   "models/ae/dcae.safetensors)")
    p.add_argument("--profile", default="tiny", help="params profile")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    for name, kind in OVERRIDES.items():
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                       help=f"override params/dit.yaml:sample.{name}")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from osora.config import load_settings
    from osora.paths import project_root
    from osora.sample.run import SampleRequest, run_sampling

    if args.plan:
        return plan(args)
    if args.checkpoint is None:
        raise ValueError("give --checkpoint FILE (an osora MMDiT .safetensors), or --plan")
    if args.image and args.video:
        raise ValueError("give --image or --video, not both")
    prompts = list(args.prompt)
    if args.prompts_file:
        prompts += [line.strip() for line in args.prompts_file.read_text().splitlines()
                    if line.strip()]
    kind = args.kind or ("i2v_head" if args.image else "v2v_head" if args.video else "t2v")
    overrides = {k: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None}
    if args.motion_score is not None:
        overrides["motion_score"] = (None if args.motion_score.lower() == "none"
                                     else float(args.motion_score))
    request = SampleRequest(prompts, args.checkpoint, args.out, kind, args.image or args.video,
                            args.autoencoder, overrides)
    written = run_sampling(load_settings(args.profile), request, root=project_root(),
                           progress=not args.no_progress)
    for path in written:
        print(path)
    return 0


def plan(args: argparse.Namespace) -> int:
    from osora.config import load_settings
    from osora.config.dit import SampleParams
    from osora.sample.memory_plan import format_plan, sampling_plan
    from osora.sample.run import decode_tile_spec
    from osora.weights.mmdit import saved_config

    settings = load_settings(args.profile)
    overrides = {k: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None}
    params = SampleParams.model_validate({**settings.dit.sample.model_dump(), **overrides})
    config = (saved_config(args.checkpoint) if args.checkpoint is not None
              else settings.dit.model)
    print(format_plan(sampling_plan(settings, params, config, decode_tile_spec(params))))
    return 0
