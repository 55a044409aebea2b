"""`osora eval`: evaluation (docs/recipe.md §7).

    osora eval study --model NAME=DIR --model NAME=DIR [...] --out DIR [--seed N]
    osora eval serve STUDY_DIR [--port N]
    osora eval analyze STUDY_DIR [--reference NAME] [--bootstraps N]
    osora eval vbench VIDEOS_DIR --out DIR [--profile paper]

A human-preference study pairs the index-0 samples (`osora sample --out DIR`) of every model on
the same prompts, serves them blinded to raters on 127.0.0.1, and turns the answers into the
paper's Figure 1 (win / tie / loss per aspect against each rival). `vbench` scores a folder of
VBench-named videos (any model's, e.g. the `vbench` stage's samples/vbench) on params/eval.yaml
vbench's suite and dimensions.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    """`osora eval` and its sub-commands; each `_add_*` registers one on the `eval` parser."""
    p = sub.add_parser("eval", help="human-preference studies, VBench (docs/recipe.md §7)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_subparsers(dest="what", required=True)
    _add_study(what)
    _add_serve(what)
    _add_analyze(what)
    _add_vbench(what)


def _add_study(what) -> None:
    p = what.add_parser("study", help="build a blinded pairwise study from sample folders")
    p.add_argument("--model", action="append", required=True, metavar="NAME=DIR",
                   help="a model's name and its `osora sample` folder (repeat, ≥ 2; the first "
                        "is the default reference of `analyze`)")
    p.add_argument("--out", type=Path, required=True, help="the study folder to write")
    p.add_argument("--seed", type=int, default=0, help="left/right, item order, media names")
    p.set_defaults(func=_study)


def _study(args: argparse.Namespace) -> int:
    from osora.eval.study.build import build_study
    from osora.eval.study.layout import ITEMS, read_study_json

    out = build_study(_models(args.model), args.out, args.seed)
    items = read_study_json(out, ITEMS)["items"]
    print(f"study in {out}: {len(items)} items ({len(args.model)} models, "
          f"{len({i['prompt'] for i in items})} prompts); serve it with "
          f"`osora eval serve {out}`")
    return 0


def _models(specs: list[str]) -> dict[str, Path]:
    models: dict[str, Path] = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not (sep and name.strip() and folder):
            raise ValueError(f"--model {spec!r}: write it as NAME=DIR, e.g. "
                             "--model osora=samples/dit")
        if name in models:
            raise ValueError(f"--model {name!r} given twice: give each model once")
        models[name] = Path(folder)
    return models


def _add_serve(what) -> None:
    p = what.add_parser("serve", help="serve a study's rating page on 127.0.0.1")
    p.add_argument("study_dir", type=Path, metavar="STUDY_DIR")
    p.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from osora.eval.study.server import serve

    serve(args.study_dir, port=args.port)
    return 0


def _add_analyze(what) -> None:
    p = what.add_parser("analyze", help="win/tie/loss rates, CIs, kappa and Figure 1")
    p.add_argument("study_dir", type=Path, metavar="STUDY_DIR")
    p.add_argument("--reference", help="the model compared against each rival (default: the "
                                       "first --model of `osora eval study`)")
    p.add_argument("--bootstraps", type=int, default=2000, help="bootstrap resamples of the CIs")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the analysis as an "
                   "MLflow run (stage human_study) of params/tracking.yaml's store")
    p.add_argument("--profile", default="tiny", help="params profile (tracking store)")
    p.set_defaults(func=_analyze)


def _analyze(args: argparse.Namespace) -> int:
    from osora.eval.study.analysis import analyze_study, flat_metrics, markdown

    result = analyze_study(args.study_dir, args.reference, args.bootstraps)
    print(markdown(result), end="")
    print(f"written: {args.study_dir / 'analysis.json'}, analysis.md, figure1.png")
    if not args.no_mlflow:
        from osora.config import load_settings
        from osora.tracking import stage_run

        with stage_run("human_study", load_settings(args.profile), "tracking") as run:
            run.log_metrics(flat_metrics(result))
            for name in ("analysis.json", "analysis.md", "figure1.png"):
                run.log_artifact(args.study_dir / name)
            print(f"MLflow run {run.run_id} (stage human_study)")
    return 0


def _add_vbench(what) -> None:
    p = what.add_parser("vbench", help="score VBench-named videos with params/eval.yaml vbench")
    p.add_argument("videos", type=Path, metavar="VIDEOS_DIR",
                   help="`{prompt}-{index}.mp4` for every prompt of the selected dimensions")
    p.add_argument("--out", type=Path, required=True, help="VBench's working folder and "
                   "report.json")
    p.add_argument("--profile", default="tiny", help="params profile")
    p.set_defaults(func=_vbench)


def _vbench(args: argparse.Namespace) -> int:
    from osora.config import load_settings
    from osora.eval.vbench import evaluate
    from osora.eval.vbench_suite import suite_for
    from osora.paths import project_root

    params = load_settings(args.profile).eval.vbench
    entries, prompts = suite_for(params, project_root())
    report = evaluate(params, entries, prompts, args.videos, args.out)
    for dim, score in report["scores"].items():
        print(f"{dim}: {score:.4f} ({report['source'][dim]})")
    for dim, why in report["not_evaluated"].items():
        print(f"{dim}: not evaluated — {why}")
    for key in ("quality", "semantic", "total"):
        print(f"{key}: {'not evaluated' if report[key] is None else f'{report[key]:.4f}'}")
    print(f"written: {args.out / 'report.json'}")
    return 0
