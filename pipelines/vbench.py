"""DVC stage `vbench`: sample VBench's prompt suite with the last stage's MMDiT and score it
(osora.eval.vbench; docs/recipe.md §7).

Each prompt of the selected dimensions is rendered params/eval.yaml vbench.videos_per_prompt
times as `{prompt}-{index}.mp4` (video i with seed + i, recorded in its sidecar) at
params/dit.yaml sample's settings; then each dimension is scored by VBench in its own
environment when its weights are given, by osora when it needs none, or reported as not
evaluated. The report (reasons, per-video scores, checks) is reports/vbench/report.json.
"""

import argparse
from pathlib import Path

from osora.config import load_settings
from osora.fileio import atomic_write_json
from osora.paths import project_root
from osora.tracking import stage_run

STAGE = "vbench"
PARAMS = ("eval.vbench", "dit.sample", "dit.text")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True, help="the MMDiT to sample")
    parser.add_argument("--autoencoder", type=Path, required=True, help="AE weights to decode")
    parser.add_argument("--videos", type=Path, required=True, help="folder of the videos")
    parser.add_argument("--results", type=Path, required=True, help="VBench's working folder")
    parser.add_argument("--metrics", type=Path, required=True, help="DVC metrics JSON")
    args = parser.parse_args()

    from osora.eval.vbench import evaluate, flat_metrics
    from osora.eval.vbench_suite import suite_for
    from osora.sample.run import SampleRequest, run_sampling

    settings = load_settings()
    params = settings.eval.vbench
    root = project_root()
    entries, prompts = suite_for(params, root)
    with stage_run(STAGE, settings, PARAMS, device=settings.dit.sample.device) as run:
        run.log_weights(args.checkpoint, "input.checkpoint")
        request = SampleRequest([p.text for p in prompts], args.checkpoint, args.videos, "t2v",
                                autoencoder=args.autoencoder,
                                overrides={"seed": params.seed,
                                           "num_samples": params.videos_per_prompt})
        written = run_sampling(settings, request, root=root, progress=False)
        report = evaluate(params, entries, prompts, args.videos, args.results)
        metrics = flat_metrics(report, videos=len(written), prompts=len(prompts))
        run.log_metrics({f"vbench/{k}": v for k, v in metrics.items()})
        run.log_artifact(args.results / "report.json")
        atomic_write_json(args.metrics, metrics)


if __name__ == "__main__":
    main()
