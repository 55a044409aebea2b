"""DVC stage `stats`: the paper's data statistics (Figures 3–4) for one pyramid level."""

import argparse
from pathlib import Path

from osora.config import load_settings
from osora.data.stage import say
from osora.data.stats import histograms, write_histogram, write_word_cloud
from osora.store import Store
from osora.tracking import stage_run

STAGE = "stats"
PARAMS = "data.stats"  # the settings section this stage reads; dvc.yaml tracks the same keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pyramid", type=Path, required=True, help="receipt of the levels")
    parser.add_argument("--level", required=True, help="which level to describe")
    parser.add_argument("--out", type=Path, required=True, help="folder for PNGs and CSVs")
    args = parser.parse_args()

    settings = load_settings()
    store = Store.from_settings(settings.store)
    with stage_run(STAGE, settings, PARAMS) as run:
        level = run.read_input(store, args.pyramid, f"pyramid_{args.level}")
        drawn, notes = histograms(level)
        say(run, notes)
        files = [p for h in drawn for p in write_histogram(h, settings.data.stats.bins, args.out)]
        cloud = write_word_cloud(level.column("caption").to_pylist(), args.out)
        for path in [*files, *([cloud] if cloud else [])]:
            run.log_artifact(path, artifact_path="stats")
        run.log_metrics({"clips": level.num_rows, "figures": len(files) // 2 + bool(cloud)})


if __name__ == "__main__":
    main()
