"""DVC stage `latents`: each latent set's clips (params/ae.yaml latents.sets: a pyramid level at
one bucket resolution) encoded once by the AE, at their bucket sizes, into the table
`latents_<set>` that DiT training reads. Images go to a set's 1-frame bucket; a set whose
frames do not list 1 sets them aside in its quarantine, saying so."""

from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from osora.data.latents import LatentEncoder, set_aside_images
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
    levels = read_receipt(args.pyramid)
    for name, latent_set in params.sets.items():
        if f"pyramid_{latent_set.level}" not in levels:
            raise SystemExit(f"latents: {args.pyramid} has no table pyramid_{latent_set.level}; "
                             f"set params/ae.yaml latents.sets.{name}.level to a level of "
                             "params/data.yaml pyramid.levels")
    # Each worker holds its own AE; on a GPU one worker owns the device.
    runner = settings.data.runner
    if params.device == "cuda":
        runner = runner.model_copy(update={"workers": 1})
    with stage_run(STAGE, settings, PARAMS, device=params.device) as run:
        tables, results, metrics = {}, {}, {}
        for name, latent_set in params.sets.items():
            clips = run.read_input(store, args.pyramid, f"pyramid_{latent_set.level}")
            inputs, images = set_aside_images(clips, name, latent_set.frames)
            if images.num_rows:
                say(run, [f"set {name}: {images.num_rows} images set aside, no 1-frame bucket "
                          f"(add 1 to params/ae.yaml latents.sets.{name}.frames)"])
            encoder = LatentEncoder(params, name, settings.ae, args.weights, settings.store)
            say(run, [f"set {name}: {clips.num_rows} clips of {latent_set.level} at "
                      f"{latent_set.resolution} px, AE {settings.ae.autoencoder.kind} from "
                      f"{encoder.weights} (sha256 {encoder.ae_sha256[:12]})"])
            result = run_operator(encoder, inputs, stage=f"{STAGE}_{name}", store=store,
                                  params=runner, retry_quarantined=args.retry_quarantined)
            result = replace(result, quarantine=pa.concat_tables([result.quarantine, images]))
            rows = result.rows
            stored = pc.sum(pc.binary_length(rows.column("latent"))).as_py() or 0
            metrics.update({
                f"{name}.clips": clips.num_rows,
                f"{name}.buckets": rows.group_by(["frames", "height", "width"])
                .aggregate([]).num_rows,
                f"{name}.latent_mb": round(stored / 2**20, 3),
            })
            tables[encoder.output_table] = rows
            results[encoder.output_table] = result
        publish(run, store, tables, results, args.receipt, args.metrics, metrics)


if __name__ == "__main__":
    main()
