"""DVC stages `dit_stage1`, `dit_stage2`, …: train the MMDiT with flow matching on a latents
table (docs/recipe.md §4–§6), a stage a run: `--stage NAME` picks params/dit.yaml:train.stages.NAME
and params/buckets.yaml:stages.NAME.

Started by `python -m osora.launch` (dvc.yaml): torchrun with params/launch.yaml's ranks, one
CPU process in the tiny default, sharded with FSDP2 over several — with the stage's
`context_parallel` degree, groups of that many ranks share each sample's sequence — and
restarted after a hang or slowdown (osora.train.recovery; docs/launch.md):
    python -m osora.launch pipelines/dit_train.py --stage stage1 ...
Rank 0 owns the stage's MLflow run (osora.tracking).
Resumes from the newest checkpoint of an identical run; writes the weights as an osora MMDiT
checkpoint (config and text encoder in its metadata) to <models>/<stage>/dit.safetensors.
A LoRA stage (`dit_finetune`; docs/finetune.md) also writes its adapter alone to
<models>/<stage>/lora/, and its dit.safetensors is the base with the adapter merged in.
"""

import argparse
import sys
from functools import partial
from pathlib import Path

from osora.config import load_settings
from osora.config.check import require_valid
from osora.launch import process_group_backend
from osora.lineage import read_receipt
from osora.paths import workspace_root
from osora.progress import progress_bar
from osora.store import Store
from osora.tracking import stage_run

PARAMS = ("dit.model", "dit.text", "dit.conditioning", "dit.train", "buckets.stages")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stage", required=True, help="a key of params/dit.yaml train.stages")
    parser.add_argument("--latents", type=Path, required=True, help="receipt of the latents")
    parser.add_argument("--texts", type=Path, required=True,
                        help="receipt of the text_embed stage (read when the stage's "
                        "text_source is table)")
    parser.add_argument("--models", type=Path, required=True,
                        help="models/dit: earlier stages' weights are read from here, this "
                        "stage's written to <models>/<stage>/")
    parser.add_argument("--metrics", type=Path, required=True, help="DVC metrics JSON")
    parser.add_argument("--curve", type=Path, required=True, help="loss curve CSV (DVC plot)")
    args = parser.parse_args()

    from osora.data.text_embeds import TABLE as TEXT_TABLE
    from osora.train.checkpoint import full_state_dict, run_folder
    from osora.train.curve import CurveLog
    from osora.train.dit_batches import LatentBatches
    from osora.train.dit_setup import (
        bucket_rules,
        build_objective,
        exported_model,
        init_weights,
        initial_model,
        loop_settings,
        stage_weights,
    )
    from osora.train.latent_table import LatentTable
    from osora.train.loop import train
    from osora.train.parallel import (
        close_distributed,
        context_layout,
        init_distributed,
        offload_backend,
    )
    from osora.train.prefetch import Prefetcher
    from osora.train.recovery import HANG_EXIT_CODE, RestartRequired
    from osora.train.text_source import build_text_source
    from osora.weights.mmdit import save_mmdit

    settings = load_settings()
    require_valid(settings, f"dit_{args.stage}")  # the rules across params files
    params = settings.dit
    if args.stage not in params.train.stages:
        raise SystemExit(f"dit_train: no stage {args.stage!r} in params/dit.yaml train.stages "
                         f"({', '.join(params.train.stages)})")
    stage = params.train.stages[args.stage]
    name = f"dit_{args.stage}"  # the DVC stage
    store = Store.from_settings(settings.store)
    backend = process_group_backend(settings.launch, params.train.device)
    # FSDP2 CPU offload reduces the clipping norm and the exported weights as CPU tensors
    dist = init_distributed(offload_backend(backend) if stage.fsdp_offload else backend)
    device = f"cuda:{dist.local_rank}" if params.train.device == "cuda" else "cpu"
    try:
        context = context_layout(dist, stage.context_parallel)
    except ValueError as err:
        raise SystemExit(f"dit_train: stage {args.stage}: {err}") from None
    with stage_run(name, settings, PARAMS, device=device) as run:
        table = f"latents_{stage.latents}"
        if table not in read_receipt(args.latents):
            raise SystemExit(f"dit_train: {args.latents} has no table {table}; set "
                             f"train.stages.{args.stage}.latents to the level the latents "
                             "stage encodes (params/ae.yaml latents.level)")
        ref = run.pin_input(args.latents, table)
        latents = LatentTable(store, table, ref.version)  # read per step, never whole
        text_version = (run.pin_input(args.texts, TEXT_TABLE).version
                        if stage.text_source == "table" else None)
        text = build_text_source(params, args.stage, store, text_version, device)
        cond = params.conditioning
        batches = LatentBatches(
            latents, text,
            bucket_rules(settings.buckets, args.stage), world=context.dp, rank=context.dp_rank,
            seed=params.train.seed, condition_weights=cond.weights if stage.conditioned else None,
            v2v_frames=cond.v2v_frames, text_dropout=cond.text_dropout,
            image_dropout=cond.image_dropout, micro_batches=stage.grad_accum)
        prefetch = Prefetcher(batches, device=device, ahead=params.train.prefetch_ahead)
        model = initial_model(params, args.stage, args.models).to(device)
        init = init_weights(params, args.stage, args.models)
        if init is not None:  # a no-op on ranks other than 0 (OtherRankRun)
            run.log_weights(init, "input.init")
        objective = build_objective(params, model, args.stage, dist.world_size, context)
        curve = CurveLog(run)
        checkpoints = run_folder(workspace_root() / "checkpoints" / name,
                                 params.model, params.train, stage, settings.buckets,
                                 ref.uri, ref.version, dist.world_size, text.identity, text.origin)
        try:
            result = train(objective, prefetch,
                           loop_settings(params, args.stage, device),
                           checkpoint_dir=checkpoints, log=curve, rank=dist.rank,
                           data_rank=context.dp_rank, on_event=run.log_event,
                           progress=partial(progress_bar, desc=name))  # shown on rank 0
        except RestartRequired as err:  # torchrun --max-restarts restarts it; it resumes
            print(f"dit_train: {err}", file=sys.stderr)
            sys.exit(HANG_EXIT_CODE)
        finally:
            prefetch.close()

        weights = full_state_dict(objective.model)  # collective: every rank calls
        if dist.rank == 0:
            export = exported_model(params, weights, args.stage)  # a LoRA stage: adapted
            trainable = sum(p.numel() for p in export.parameters() if p.requires_grad)
            if stage.lora is not None:  # the adapter alone, then merged into its base
                from osora.models.lora import merge_into_base  # peft: LoRA stages only
                from osora.weights.lora import WEIGHTS_NAME, save_lora

                adapter = save_lora(export, stage_weights(args.models, args.stage).parent /
                                    "lora", base=init, text_encoder=text.identity)
                run.log_weights(adapter / WEIGHTS_NAME, "output.lora")
                export = merge_into_base(export)
            save_mmdit(export, stage_weights(args.models, args.stage),
                       text_encoder=text.identity)
            run.log_weights(stage_weights(args.models, args.stage), "output")
            metrics = {**result.summary(), "train_clips": len(latents),
                       "parameters": sum(p.numel() for p in export.parameters()),
                       "trainable_parameters": trainable}
            curve.finish(metrics, args.metrics, args.curve)
    close_distributed()


if __name__ == "__main__":
    main()
