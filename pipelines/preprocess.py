"""DVC stage `preprocess`: the keep/drop verdict of docs/recipe.md §1 for every ingested video."""

from collections import Counter

from osora.data.preprocess import preprocess_table
from osora.data.stage import publish, stage_cli
from osora.tracking import stage_run

STAGE = "preprocess"
PARAMS = "data.preprocess"  # the settings section this stage reads; dvc.yaml tracks the same keys


def main() -> None:
    args, settings, store = stage_cli(
        __doc__,
        {"videos": "receipt of the videos table"},
    )
    with stage_run(STAGE, settings, PARAMS) as run:
        videos = run.read_input(store, args.videos, "videos")
        verdicts = preprocess_table(videos, settings.data.preprocess)
        dropped = Counter(
            r.split(",")[0].split(":")[0] for r in verdicts.column("reason").to_pylist() if r
        )
        kept = verdicts.num_rows - sum(dropped.values())
        counts = {"kept": kept, **{f"dropped.{reason}": n for reason, n in dropped.items()}}
        publish(run, store, {"preprocess": verdicts}, None, args.receipt, args.metrics, counts)


if __name__ == "__main__":
    main()
