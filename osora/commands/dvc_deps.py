"""`osora dvc-deps --check|--write`: each dvc.yaml stage's code deps against what its script
imports, transitively (osora/pipeline_deps.py), so that changing any module a stage runs makes
DVC rerun that stage and only the stages that run it."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("dvc-deps", help="check or rewrite dvc.yaml's code deps: each stage's "
                       "script and every osora module it imports", description=__doc__)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true",
                      help="exit 1 listing, per stage, the osora files missing from its deps "
                      "and those it lists but does not import")
    mode.add_argument("--write", action="store_true",
                      help="rewrite the deps lists in dvc.yaml: the script, its osora files "
                      "(sorted), then the other deps as they were")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from osora.paths import project_root
    from osora.pipeline_deps import FIX, stage_deps, write_deps

    root = project_root()
    if args.write:
        changed = write_deps(root)
        print(f"dvc.yaml: rewrote the deps of {', '.join(changed)}" if changed
              else "dvc.yaml: every stage's code deps were already its import closure")
        return 0
    wrong = [d for d in stage_deps(root) if d.missing or d.extra]
    for deps in wrong:
        print(f"{deps.stage}:")
        print("".join(f"  missing {path}\n" for path in deps.missing)
              + "".join(f"  extra   {path}\n" for path in deps.extra), end="")
    if wrong:
        print(f"dvc.yaml: {len(wrong)} stage(s) whose code deps differ from their imports; "
              f"fix: {FIX}")
        return 1
    print("dvc.yaml: every stage's code deps are its import closure")
    return 0
