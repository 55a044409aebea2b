"""The `osora` command.

    osora config show [--profile paper]   the resolved params (secrets masked)
    osora config apply paper               write a profile's resolved params into params/
    osora config check [--profile paper] [--stage NAME] [--no-weights]   the rules across files
    osora results                          where the pipeline's results are
    osora sample --prompt … --checkpoint … [--image …|--video …] [--offload model|sequential]
    osora sample --plan [--profile paper] [--height … --frames …]   memory per offload mode
    osora weights import opensora_v2|flux SRC DST   released weights → an osora checkpoint
    osora weights import diffusers DIR DST   an exported diffusers folder → the checkpoint
    osora weights export diffusers CKPT DIR  a checkpoint → a folder diffusers loads
    osora weights merge-lora BASE ADAPTER OUT   a LoRA adapter merged into its base
    osora cost [--forecast THROUGHPUT.yaml] [--profile paper]   the paper's Table 3, run or ahead
    osora tune buckets [--profile paper] [--dry-run]   per-bucket batch sizes → params/buckets.yaml
    osora eval study|serve|analyze …   blinded pairwise human-preference studies (docs/recipe.md §7)
    osora report [--run ID …] [--stage NAME …] [--out reports/runs.html]   compare MLflow runs
    osora dvc-deps --check|--write         dvc.yaml's code deps: each stage's import closure
"""

import argparse
import json
import sys
from pathlib import Path

import yaml

from osora.config import DEFAULT_PROFILE, SECTIONS, ConfigError, load_settings
from osora.paths import project_root


def _config_show(args: argparse.Namespace) -> int:
    settings = load_settings(args.profile)
    print(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def _config_apply(args: argparse.Namespace) -> int:
    """Materialise a profile into params/*.yaml: the files DVC tracks are then that profile,
    a reviewable diff (git checkout params/ goes back to the tiny default)."""
    from osora.fileio import atomic_write_text

    settings = load_settings(args.profile)
    params_dir = project_root() / "params"
    dumped = settings.model_dump(mode="json", exclude_none=False)
    for name in SECTIONS:
        if name == "store":
            dumped[name]["s3"].pop("access_key_id", None)  # credentials stay in the environment
            dumped[name]["s3"].pop("secret_access_key", None)
        header = f"# Profile {args.profile!r}, written by `osora config apply {args.profile}`.\n"
        atomic_write_text(
            params_dir / f"{name}.yaml", header + yaml.safe_dump(dumped[name], sort_keys=False)
        )
    print(f"params/ now holds the {args.profile!r} profile; `dvc repro` will run it")
    return 0


def _config_check(args: argparse.Namespace) -> int:
    """Print the broken cross-file rules (osora.config.check); 1 when any fails the check."""
    from osora.config.check import WEIGHTS_FIX, check_profile

    if args.stage and args.stage not in (stages := _dvc_stages()):
        raise ValueError(f"--stage {args.stage!r} is no stage of dvc.yaml ({', '.join(stages)})")
    violations = check_profile(load_settings(args.profile), args.stage)
    rules = [v for v in violations if not v.missing_weights]
    weights = [v for v in violations if v.missing_weights]
    scope = f"profile {args.profile!r}" + (f", stage {args.stage}" if args.stage else "")
    if rules:
        print(f"{scope}: {len(rules)} broken rule(s):")
        for v in rules:
            print(f"  - {v.describe(args.profile)}")
    if weights:
        print(f"{scope}: {len(weights)} weight file(s) missing"
              + (" (--no-weights: listed, not failed)" if args.no_weights else "")
              + f"; fix: {WEIGHTS_FIX}:")
        for v in weights:
            print(f"  - {v.describe(args.profile, fix=False)}")
    failing = rules + ([] if args.no_weights else weights)
    if not failing:
        print(f"{scope}: buckets, context parallelism, text widths"
              + (" check out (weight files not required)" if args.no_weights
                 else " and weight files check out"))
    return 1 if failing else 0


def _dvc_stages() -> list[str]:
    """dvc.yaml's stage names, a `foreach` stage's as name@item."""
    stages = yaml.safe_load((project_root() / "dvc.yaml").read_text())["stages"]
    return [f"{name}@{item}" if "foreach" in spec else name
            for name, spec in stages.items() for item in spec.get("foreach", [None])]


def _results(args: argparse.Namespace) -> int:
    from osora.store import Store
    from osora.tracking import tracking_uri

    settings = load_settings()
    root = project_root()
    store = Store.from_settings(settings.store)
    print(f"Tables ({store!r}):")
    tables = store.list_tables()
    for name in tables:
        print(f"  {name}: version {store.version(name)}, {store.read(name).num_rows} rows, "
              f"{store.table_uri(name)}")
    if not tables:
        print("  none yet: run the pipeline (`dvc repro`)")
    print("Receipts (table versions each stage produced):")
    for receipt in sorted((root / "lineage").rglob("*.json")):
        pinned = json.loads(receipt.read_text())["tables"]
        print(f"  {receipt.relative_to(root)}: "
              + ", ".join(f"{t['table']}@v{t['version']}" for t in pinned))
    print("Metrics (`dvc metrics show`):")
    for metrics in sorted((root / "metrics").glob("*.json")):
        print(f"  {metrics.relative_to(root)}: {json.dumps(json.loads(metrics.read_text()))}")
    print("Trained weights (safetensors):")
    for weights in sorted((root / "models").rglob("*.safetensors")):
        print(f"  {weights.relative_to(root)}: {weights.stat().st_size / 1e6:.1f} MB")
    print("Synthetic demo videos:", root / "data" / "synth")
    samples = root / "samples"
    print("Sample videos:", samples if samples.is_dir() else "none yet (no sampling stage has run)")
    uri = tracking_uri(settings)
    print("MLflow UI (binds 127.0.0.1):")
    print(f"  .venv/bin/mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")
    print("  then open http://127.0.0.1:5000/#/experiments?workflowType=machine_learning "
          "(the runs table with cost and Dataset columns; MLflow 3 opens on GenAI views)")
    _print_previews(root)
    return 0


def _print_previews(root: Path) -> None:
    """The pictures of the samples, or how to make them: last, where a reader's eye lands."""
    from osora.eval.preview import PREVIEW_DIR, existing_previews

    found = existing_previews(root / PREVIEW_DIR)
    if found:
        print("Look at the samples:", ", ".join(str(p.relative_to(root)) for p in found))
    else:
        print(f"Sample previews ({PREVIEW_DIR}/): none yet, they appear after "
              "`dvc repro dit_sample`")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="osora", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    config = sub.add_parser("config", help="inspect or apply params profiles")
    config_sub = config.add_subparsers(dest="action", required=True)
    show = config_sub.add_parser("show", help="print the resolved params")
    show.add_argument("--profile", default=DEFAULT_PROFILE)
    show.set_defaults(func=_config_show)
    apply = config_sub.add_parser("apply", help="write a profile's params into params/")
    apply.add_argument("profile")
    apply.set_defaults(func=_config_apply)
    check = config_sub.add_parser(
        "check", help="check the rules between params files: batch sizes for every latent "
        "frame count, context parallel degrees, text widths, weight files",
        description="Exit 1 listing every broken rule, each with its file, key and fix.")
    check.add_argument("--profile", default=DEFAULT_PROFILE)
    check.add_argument("--stage", help="only the rules that stop this DVC stage (e.g. "
                       "dit_stage3, ae_train), as the stage checks itself before it trains")
    check.add_argument("--no-weights", action="store_true",
                       help="check the structure alone: weight files that do not exist yet "
                       "(checkpoints you supply, as the paper profile's) are listed, not failed; "
                       "the training stages still require them")
    check.set_defaults(func=_config_check)

    results = sub.add_parser("results", help="print where the pipeline's results are")
    results.set_defaults(func=_results)

    from osora.commands.cost import add_parser as add_cost
    from osora.commands.data import add_parser as add_data
    from osora.commands.dvc_deps import add_parser as add_dvc_deps
    from osora.commands.eval import add_parser as add_eval
    from osora.commands.report import add_parser as add_report
    from osora.commands.sample import add_parser as add_sample
    from osora.commands.tune import add_parser as add_tune
    from osora.commands.weights import add_parser as add_weights

    add_sample(sub)
    add_weights(sub)
    add_cost(sub)
    add_tune(sub)
    add_eval(sub)
    add_report(sub)
    add_data(sub)
    add_dvc_deps(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as err:  # bad input: say which and why
        print(f"osora: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
