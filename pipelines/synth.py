"""DVC stage `synth`: the synthetic demo videos, their captions and ground truth."""

import argparse
from pathlib import Path

from osora.config import load_settings
from osora.data.synth import generate
from osora.fileio import atomic_write_json
from osora.tracking import stage_run

STAGE = "synth"
PARAMS = "data.synth"  # the settings section this stage reads; dvc.yaml tracks the same keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="folder for videos + truth.json")
    parser.add_argument("--metrics", type=Path, required=True, help="DVC metrics JSON")
    args = parser.parse_args()

    settings = load_settings()
    with stage_run(STAGE, settings, PARAMS) as run:
        videos = generate(settings.data.synth, args.out)
        metrics = {
            "videos": len(videos),
            "megabytes": sum((args.out / v.file).stat().st_size for v in videos) / 1e6,
            "expected_rejections": sum(v.expected_reason is not None for v in videos),
        }
        run.log_metrics(metrics)
        run.log_artifact(args.out / "truth.json")
        atomic_write_json(args.metrics, metrics)


if __name__ == "__main__":
    main()
