"""DVC stage `score@<scorer>`: one score filter's measurements for every clip.

A scorer that cannot run (no weights configured) says why, here and in MLflow, and writes null
scores: its filter is then off in the pyramid. It never makes a number up.
"""

from osora.data.runner import run_operator
from osora.data.scores import SCORERS
from osora.data.stage import publish, say, stage_cli
from osora.tracking import stage_run

STAGE = "score"
PARAMS = "data.scores.{scorer}"  # the section this stage reads; dvc.yaml tracks the same keys


def main() -> None:
    args, settings, store = stage_cli(
        __doc__,
        {"clips": "receipt of the clips table"},
        lambda p: p.add_argument("--scorer", choices=sorted(SCORERS), required=True),
    )
    stage = f"score_{args.scorer}"
    with stage_run(stage, settings, PARAMS.format(scorer=args.scorer)) as run:
        clips = run.read_input(store, args.clips, "clips")
        scorer = SCORERS[args.scorer](getattr(settings.data.scores, args.scorer), settings.store)
        unavailable = scorer.available()  # an unavailable scorer writes null scores itself
        if unavailable:
            say(run, [f"{unavailable}; filter off"])
        result = run_operator(scorer, clips, stage=stage, store=store,
                              params=settings.data.runner,
                              retry_quarantined=args.retry_quarantined)
        publish(run, store, {scorer.output_table: result.rows}, result, args.receipt,
                args.metrics, {"evaluated": 0 if unavailable else 1})


if __name__ == "__main__":
    main()
