"""What every table-writing data stage does after its own work: store, tag, count, log.

    with stage_run("shots", settings, PARAMS) as run:
        videos = run.read_input(store, args.videos, "videos")
        result = run_operator(ShotDetector(...), videos, stage="shots", store=store, ...)
        publish(run, store, {"shots": result.rows}, result, args.receipt, args.metrics)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from osora.fileio import atomic_write_json

if TYPE_CHECKING:
    from osora.config import Settings
    from osora.data.runner import RunResult
    from osora.store import Store
    from osora.tracking import StageRun


def stage_cli(
    doc: str,
    inputs: dict[str, str],
    more: Callable[[argparse.ArgumentParser], None] | None = None,
) -> tuple[argparse.Namespace, Settings, Store]:
    """Parse a table stage's command line — one `--<name>` receipt path per input, plus
    `--receipt` and `--metrics` for its outputs — and load the settings and the store."""
    from osora.config import load_settings
    from osora.store import Store

    parser = argparse.ArgumentParser(description=doc)
    for name, what in inputs.items():
        parser.add_argument(f"--{name}", type=Path, required=True, help=what)
    parser.add_argument("--receipt", type=Path, required=True, help="receipt to write")
    parser.add_argument("--metrics", type=Path, required=True, help="DVC metrics JSON to write")
    parser.add_argument(
        "--retry-quarantined", action="store_true",
        help="process again the rows this stage quarantined under the same code and params "
        "(rows set aside under other code or params are retried anyway)",
    )
    if more:
        more(parser)
    args = parser.parse_args()
    settings = load_settings()
    return args, settings, Store.from_settings(settings.store)


def publish(
    run: StageRun,
    store: Store,
    tables: dict[str, pa.Table],
    result: RunResult | dict[str, RunResult] | None,
    receipt: Path,
    metrics_path: Path,
    metrics: dict[str, float] | None = None,
) -> dict[str, float]:
    """Sync each table (and the run's quarantine) into the store, tag and record the versions,
    log the counts to MLflow and write the receipt and the DVC metrics file. A stage that ran
    several operators passes {name: result}: each quarantine goes to `<name>_quarantine` and
    the counts are summed."""
    out: dict[str, float] = dict(metrics or {})
    if result is not None:
        results = result if isinstance(result, dict) else {run.stage: result}
        tables = {**tables, **{f"{name}_quarantine": r.quarantine for name, r in results.items()}}
        out.update(
            quarantined=sum(r.quarantine.num_rows for r in results.values()),
            processed=sum(r.processed for r in results.values()),
            resumed=sum(r.resumed for r in results.values()),
            seconds=round(sum(r.seconds for r in results.values()), 3),
        )
    dropped = []
    for name, table in tables.items():
        version, removed = sync_counted(store, name, table)
        run.log_output(store, name, version)
        out[f"rows.{name}"] = table.num_rows
        if removed:
            out[f"removed.{name}"] = removed
            dropped.append(f"{removed} rows of {name}")
    if dropped:  # their inputs left the input table (e.g. videos removed from a source)
        say(run, [f"dropped {', '.join(dropped)} whose inputs are gone"])
    run.log_metrics(out)
    run.write_receipt(receipt)
    atomic_write_json(metrics_path, out)
    return out


def sync_counted(store: Store, name: str, table: pa.Table) -> tuple[int, int]:
    """Sync `table` into the store by id (osora.store.Store.sync); the new version and how many
    rows left the table (their ids are no longer in `table`)."""
    import pyarrow.compute as pc

    before = store.read(name, columns=["id"]).column("id") if store.exists(name) else None
    version = store.sync(name, table, key="id", update_matched=True)
    if before is None:
        return version, 0
    kept = pc.is_in(before, value_set=table.column("id").combine_chunks())
    return version, int(pc.sum(pc.invert(kept)).as_py() or 0)


def say(run: StageRun, lines: list[str]) -> None:
    """Notes a person must see (e.g. a filter that is off): printed and kept in MLflow."""
    import mlflow

    for line in lines:
        print(f"[{run.stage}] {line}", flush=True)
    if lines:
        mlflow.set_tag("osora.notes", " | ".join(lines)[:5000])
