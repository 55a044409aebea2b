"""DVC stage `ae_train`: train the Video DC-AE on a pyramid level's training clips.

Started by `python -m osora.launch` (dvc.yaml): torchrun with params/launch.yaml's ranks, one
CPU process in the tiny default, sharded with FSDP2 over several (docs/launch.md):
    python -m osora.launch pipelines/ae_train.py --pyramid ... --out ...
Rank 0 owns the stage's MLflow run (osora.tracking).
Resumes from the newest checkpoint of an identical run (same params, same input table) that
was interrupted; writes the weights (the EMA's when on) as safetensors.
Only the level's small columns are read up front; each step's windows are decoded from the
clips it draws, a few steps ahead (osora.train.clip_windows, osora.train.prefetch).
"""

import argparse
from functools import partial
from pathlib import Path

from osora.config import load_settings
from osora.config.check import require_valid
from osora.data.split import split_rows
from osora.launch import process_group_backend
from osora.paths import workspace_root
from osora.progress import progress_bar
from osora.store import Store
from osora.tracking import stage_run

STAGE = "ae_train"
PARAMS = ("ae.dcae", "ae.split", "ae.train")  # dvc.yaml tracks the same keys
WEIGHTS_FILE = "dcae.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pyramid", type=Path, required=True, help="receipt of the pyramid")
    parser.add_argument("--out", type=Path, required=True, help="folder for the weights")
    parser.add_argument("--metrics", type=Path, required=True, help="DVC metrics JSON")
    parser.add_argument("--curve", type=Path, required=True, help="loss curve CSV (DVC plot)")
    args = parser.parse_args()

    import torch

    from osora.train.ae_setup import build_objective, fsdp
    from osora.train.checkpoint import run_folder
    from osora.train.clip_windows import CLIP_COLUMNS, ClipWindows
    from osora.train.curve import CurveLog
    from osora.train.loop import LoopSettings, train
    from osora.train.parallel import close_distributed, init_distributed
    from osora.train.prefetch import Prefetcher
    from osora.weights.autoencoder import save_dcae

    settings = load_settings()
    require_valid(settings, STAGE)  # the rules across params files
    params = settings.ae
    store = Store.from_settings(settings.store)
    dist = init_distributed(process_group_backend(settings.launch, params.train.device))
    device = f"cuda:{dist.local_rank}" if params.train.device == "cuda" else "cpu"
    if params.train.device == "cuda":
        torch.cuda.set_device(device)
    with stage_run(STAGE, settings, PARAMS, device=device) as run:
        table = f"pyramid_{params.split.level}"
        ref = run.pin_input(args.pyramid, table)
        # the small columns only: the pixels are read per step, never the level whole
        rows = store.read(table, version=ref.version,
                          columns=[*CLIP_COLUMNS, "video_id"]).to_pylist()
        train_rows, held_out = split_rows(rows, params.split.holdout_fraction)

        ae, objective = build_objective(params, device, fsdp(dist.world_size))
        t = params.train
        windows = ClipWindows(train_rows, store, f"{table}@{ref.version}",
                              short_side=t.short_side, frames=t.frames, crop=t.crop,
                              batch_size=t.batch_size, seed=t.seed, rank=dist.rank,
                              cache_bytes=int(t.clip_cache_mib * 2**20))
        prefetch = Prefetcher(windows, device=device, ahead=t.prefetch_ahead)
        curve = CurveLog(run)

        checkpoints = run_folder(workspace_root() / "checkpoints" / STAGE, params.dcae,
                                 params.split, t, ref.uri, ref.version, dist.world_size)
        try:
            result = train(
                objective,
                prefetch,
                LoopSettings(steps=t.phase1_steps + t.phase2_steps, grad_clip=t.grad_clip,
                             log_every=t.log_every, checkpoint_every=t.checkpoint_every,
                             precision=t.precision, device=device, seed=t.seed,
                             warmup_steps=t.warmup_steps, schedule=t.lr_schedule),
                checkpoint_dir=checkpoints,
                log=curve,
                rank=dist.rank,
                progress=partial(progress_bar, desc=STAGE),  # shown on rank 0
            )
        finally:
            prefetch.close()

        weights = objective.exported_weights()  # collective: every rank calls
        if dist.rank == 0:
            save_dcae(weights, args.out / WEIGHTS_FILE, ae.config)
            run.log_weights(args.out / WEIGHTS_FILE, "output")
            metrics = {**result.summary(), "train_clips": len(train_rows) - windows.skipped,
                       "held_out_clips": len(held_out),
                       "parameters": sum(p.numel() for p in ae.parameters())}
            curve.finish(metrics, args.metrics, args.curve)
    close_distributed()


if __name__ == "__main__":
    main()
