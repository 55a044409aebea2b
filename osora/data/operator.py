"""The contract every row-wise step of the data pyramid follows.

An operator turns one input row (a dict of an input table's columns) into zero or more rows
of its output table. The runner (`osora.data.runner`) maps it over a table in worker processes,
commits results in batches and resumes after a crash. Operators are plain picklable objects:
construct them from params in the parent, load models in `setup()`, which each worker calls
once.

    class MotionScorer(Operator):
        output_table = "score_motion"
        def process(self, row): return [{"id": row["id"], "motion": ...}]

Errors say whose fault a failure is, and the runner acts on that (osora.data.runner):

- `OperatorError`: the input row is bad (undecodable file, no video stream, no caption for this
  clip). The row is quarantined with the reason and the stage goes on.
- `EnvironmentFault`: the machine or a service is broken (missing binary, refused key, store
  or endpoint unreachable, disk full). Nothing is recorded for the row; `transient` faults are
  retried with backoff, and the stage then fails with the cause.
- anything else is a bug: the stage fails at once with the traceback's last words.

An OperatorError raised *from* an environment fault (e.g. a full disk while writing a clip) is
treated as the fault: `environment_cause` looks through the exception chain.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from osora.errors import EnvironmentFault, environment_cause, is_transient

__all__ = [
    "EnvironmentFault", "Operator", "OperatorError", "Row", "code_fingerprint",
    "environment_cause", "is_transient",
]

Row = dict[str, Any]

class OperatorError(Exception):
    """This input row cannot be processed; `reason` says why. The runner quarantines the row
    with the reason and carries on with the others."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Operator(ABC):
    #: Name of the table the rows of `process` belong to (its schema is in osora.schemas).
    output_table: str
    #: GPUs each worker needs, for operators that run a model on CUDA: the Ray backend asks
    #: the cluster for them (`map_batches(num_gpus=...)`), so each worker lands on a node with
    #: a free GPU and sees only its own (CUDA_VISIBLE_DEVICES); the local pool ignores it. A
    #: class attribute or property, not an instance attribute, which `describe()` would count
    #: as a setting of the output.
    num_gpus: float = 0.0

    def setup(self) -> None:  # noqa: B027 - an optional hook, not abstract
        """Load models or other heavy state; called once in each worker before any row."""

    @abstractmethod
    def process(self, row: Row) -> list[Row]:
        """Output rows for one input row; raise OperatorError to quarantine the input."""

    def describe(self) -> dict[str, Any]:
        """What determines this operator's output besides its input (for resumption: work
        done under other settings is not reused). Defaults to the instance's attributes."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


def code_fingerprint(*modules: str) -> str:
    """Hash of the source files of `modules`, for an operator's `describe`: code that decides
    the output's values, so changing it redoes the work instead of reusing the work log."""
    digest = hashlib.sha256()
    for name in modules:
        digest.update(Path(inspect.getsourcefile(importlib.import_module(name))).read_bytes())
    return digest.hexdigest()[:16]
