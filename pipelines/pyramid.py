"""DVC stage `pyramid`: nested levels of clips from loose to strict, one table per level."""

from osora.data.pyramid import build_levels
from osora.data.stage import publish, say, stage_cli
from osora.tracking import stage_run

STAGE = "pyramid"
PARAMS = "data.pyramid"  # the settings section this stage reads; dvc.yaml tracks the same keys
SCORES = ("aesthetic", "motion", "blur", "ocr", "jitter")


def main() -> None:
    args, settings, store = stage_cli(
        __doc__,
        {"clips": "receipt of the clips table", "captions": "receipt of captions",
         "scores": "folder of the score_<scorer>.json receipts"},
    )
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
