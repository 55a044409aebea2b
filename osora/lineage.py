"""Receipts: the small files that tie DVC's graph to Lance table versions.

A stage that writes a table records (table, URI, version, tag) in a JSON receipt that dvc.yaml
declares as the stage's output. The next stage takes that receipt as its dependency and reads
exactly the pinned version, so `dvc repro` knows when a table changed, the same pipeline works
whether the store is a local folder or s3://, and MLflow records which version fed which run.
"""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from osora.fileio import atomic_write_json


@dataclass(frozen=True)
class TableRef:
    """One version of one table in the store."""

    table: str
    uri: str  # the table's URI; never carries credentials
    version: int
    tag: str | None = None


def write_receipt(path: Path, *, stage: str, outputs: list[TableRef]) -> None:
    """Only what identifies the data (no run id, no time), so an unchanged table gives an
    unchanged receipt and DVC skips everything downstream."""
    body = {"stage": stage, "tables": [asdict(ref) for ref in outputs]}
    atomic_write_json(Path(path), body)


def read_receipt(path: Path) -> dict[str, TableRef]:
    """The tables a receipt pins, by table name."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"receipt {path} not found: run the stage that produces it (`dvc repro`) first"
        )
    try:
        body = json.loads(path.read_text())
        return {t["table"]: TableRef(**t) for t in body["tables"]}
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"receipt {path} is malformed ({err}); rerun its stage") from None
