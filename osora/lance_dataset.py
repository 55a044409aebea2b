"""One version of a Lance table as an MLflow dataset, for the inputs a stage run logs.

The dataset is named `<table>@<version>`, and its source (type "lance") holds the table's URI
and version, so the UI's Dataset column shows which version fed a run, runs filter on it
(`dataset.name = 'videos@3'`), and, once this module is imported,
`mlflow.data.get_source(dataset_input).load()` opens exactly that version. A dataset carries
metadata only; Lance keeps the rows.

Imported only when a run logs an input: MLflow's dataset classes take two seconds to import.
"""

from __future__ import annotations

from typing import Any

from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import register_dataset_source
from mlflow.data.meta_dataset import MetaDataset

from osora.lineage import TableRef
from osora.tracking import public_uri


class LanceTableSource(DatasetSource):
    """Where a dataset came from: one version of a Lance table."""

    def __init__(self, uri: str, version: int):
        self.uri = public_uri(uri)
        self.version = int(version)

    @staticmethod
    def _get_source_type() -> str:
        return "lance"

    def load(self) -> Any:
        """The table at this version (an S3 store reads its credentials from the
        environment, as Lance does)."""
        import lance

        return lance.dataset(self.uri, version=self.version)

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False  # built from a TableRef, never guessed from a string

    @classmethod
    def _resolve(cls, raw_source: Any) -> LanceTableSource:
        raise NotImplementedError("build a LanceTableSource from a TableRef (table_dataset)")

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "version": self.version}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> LanceTableSource:
        return cls(source_dict["uri"], source_dict["version"])


register_dataset_source(LanceTableSource)  # so mlflow.data.get_source parses logged inputs


def table_dataset(ref: TableRef) -> MetaDataset:
    """The dataset `<table>@<version>` of `ref`. Its digest hashes the name and the source
    (URI and version), so every run that read the same version shares one dataset record."""
    return MetaDataset(LanceTableSource(ref.uri, ref.version), name=f"{ref.table}@{ref.version}")
