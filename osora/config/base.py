"""The base of every params model: unknown keys are errors, values are immutable once loaded."""

from pydantic import BaseModel, ConfigDict


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
