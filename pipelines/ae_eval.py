"""DVC stage `ae_eval`: PSNR, SSIM and LPIPS of the chosen AE on held-out clips (docs/recipe.md
Table 1's columns), with its D_info and D_token, to MLflow and DVC metrics."""

import argparse
from pathlib import Path

from osora.config import load_settings
from osora.data.split import split_rows
from osora.fileio import atomic_write_json
from osora.store import Store
from osora.tracking import stage_run

STAGE = "ae_eval"
PARAMS = ("ae.dcae", "ae.split", "ae.eval", "ae.autoencoder")  # dvc.yaml tracks the same keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pyramid", type=Path, required=True, help="receipt of the pyramid")
    parser.add_argument("--weights", type=Path, required=True,
                        help="the DC-AE of ae_train (used unless ae.autoencoder.weights is set)")
    parser.add_argument("--metrics", type=Path, required=True, help="DVC metrics JSON")
    args = parser.parse_args()

    from osora.eval.ae_eval import evaluate
    from osora.train.ae_setup import decode_clips
    from osora.weights.autoencoder import load_autoencoder

    settings = load_settings()
    params, ev = settings.ae, settings.ae.eval
    store = Store.from_settings(settings.store)
    with stage_run(STAGE, settings, PARAMS, device=ev.device) as run:
        rows = run.read_input(store, args.pyramid, f"pyramid_{params.split.level}").to_pylist()
        _, held_out = split_rows(rows, params.split.holdout_fraction)
        held_out = sorted(held_out, key=lambda r: r["id"])[: ev.max_clips]
        videos = decode_clips(store, held_out, ev.short_side, ev.frames)
        ae = load_autoencoder(params, args.weights, ev.device)
        if params.autoencoder.kind == "dcae":  # the one trained here, or params' file
            run.log_weights(Path(params.autoencoder.weights or args.weights), "input.checkpoint")
        lpips = None
        if ev.lpips_trunk and ev.lpips_heads:
            from osora.models.lpips import LPIPS

            lpips = LPIPS.from_pretrained(ev.lpips_trunk, ev.lpips_heads).to(ev.device)
        tiled = ev.tile.spatial is not None or ev.tile.temporal is not None
        tile = ev.tile if tiled else None
        metrics = evaluate(ae, videos, tile=tile, lpips=lpips,
                           dit_patch=params.autoencoder.dit_patch, device=ev.device)
        if lpips is None:
            print("ae_eval: no LPIPS weights (ae.eval.lpips_trunk/lpips_heads): column omitted")
        metrics = {k: round(float(v), 4) for k, v in metrics.items()}
        run.log_metrics(metrics)
        atomic_write_json(args.metrics, metrics)
        print("ae_eval:", ", ".join(f"{k} {v}" for k, v in metrics.items()))


if __name__ == "__main__":
    main()
