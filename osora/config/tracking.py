"""params/tracking.yaml: the MLflow tracking store."""

from pydantic import Field

from osora.config.base import Params


class TrackingSettings(Params):
    uri: str | None = Field(
        default=None,
        description="an MLflow server URL; empty for the sqlite store under mlflow/",
    )
    experiment: str = Field(min_length=1, description="MLflow experiment every stage logs to")
