"""DVC stage `latents`: a pyramid level's clips encoded once by the AE, at their bucket sizes,
into the table `latents_<level>` that DiT training reads."""

from pathlib import Path

import pyarrow.compute as pc

from osora.data.latents import LatentEncoder
from osora.data.runner import run_operator
from osora.data.stage import publish, say, stage_cli
from osora.lineage import read_receipt
from osora.tracking import stage_run

STAGE = "latents"
PARAMS = ("ae.latents", "ae.autoencoder", "ae.dcae")  # the sections read; dvc.yaml tracks them


def main() -> None:
    args, settings, store = stage_cli(
        __doc__,
        {"pyramid": "receipt of the pyramid levels"},
        lambda p: p.add_argument("--weights", type=Path, required=True,
                                 help="the DC-AE that ae_train wrote (used when "
                                      "params/ae.yaml autoencoder.weights is null)"),
    )
    params = settings.ae.latents
    level = f"pyramid_{params.level}"
    if level not in read_receipt(args.pyramid):
        raise SystemExit(f"latents: {args.pyramid} has no table {level}; set params/ae.yaml "
                         "latents.level to a level of params/data.yaml pyramid.levels")
    # Each worker holds its own AE; on a GPU one worker owns the device.
    runner = settings.data.runner
    if params.device == "cuda":
        runner = runner.model_copy(update={"workers": 1})
    with stage_run(STAGE, settings, PARAMS, device=params.device) as run:
        clips = run.read_input(store, args.pyramid, level)
        encoder = LatentEncoder(params, settings.ae, args.weights, settings.store)
        say(run, [f"AE {settings.ae.autoencoder.kind} from {encoder.weights} "
                  f"(sha256 {encoder.ae_sha256[:12]})"])
        result = run_operator(encoder, clips, stage=STAGE, store=store, params=runner)
        rows = result.rows
        buckets = rows.group_by(["frames", "height", "width"]).aggregate([]).num_rows
        stored = pc.sum(pc.binary_length(rows.column("latent"))).as_py() or 0
        publish(run, store, {encoder.output_table: rows}, result, args.receipt, args.metrics,
                {"clips": clips.num_rows, "buckets": buckets,
                 "latent_mb": round(stored / 2**20, 3)})


if __name__ == "__main__":
    main()
