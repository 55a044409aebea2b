"""DVC stage `pyramid`: nested levels of clips from loose to strict, one table per level."""

import argparse
from pathlib import Path

from osora.config import load_settings
from osora.data.pyramid import build_levels
from osora.data.stage import publish, say
from osora.store import Store
from osora.tracking import stage_run

STAGE = "pyramid"
PARAMS = "data.pyramid"  # the settings section this stage reads; dvc.yaml tracks the same keys
SCORES = ("aesthetic", "motion", "blur", "ocr", "jitter")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clips", type=Path, required=True, help="receipt of the clips table")
    parser.add_argument("--scores", type=Path, required=True,
                        help="folder of the score_<scorer>.json receipts")
    parser.add_argument("--captions", type=Path, required=True, help="receipt of captions")
    parser.add_argument("--receipt", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args()

    settings = load_settings()
    store = Store.from_settings(settings.store)
    with stage_run(STAGE, settings, PARAMS) as run:
        clips = run.read_input(store, args.clips, "clips")
        scores = {
            f"score_{s}": run.read_input(store, args.scores / f"score_{s}.json", f"score_{s}")
            for s in SCORES
        }
        captions = run.read_input(store, args.captions, "captions")
        levels = build_levels(clips, scores, captions, settings.data.pyramid.levels)
        say(run, levels.notes)
        tables = {f"pyramid_{name}": rows for name, rows in levels.tables.items()}
        counts = {f"level.{name}": rows.num_rows for name, rows in levels.tables.items()}
        publish(run, store, tables, None, args.receipt, args.metrics, counts)


if __name__ == "__main__":
    main()
