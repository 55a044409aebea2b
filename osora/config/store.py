"""params/store.yaml: where tables and artifacts live (a local directory or s3://bucket/prefix)."""

from pydantic import Field, SecretStr

from osora.config.base import Params


class S3Settings(Params):
    """S3-compatible object storage. Credentials come from the environment
    (OSORA_STORE__S3__ACCESS_KEY_ID / ..._SECRET_ACCESS_KEY, or AWS_* as boto reads them) and are
    never logged nor written to MLflow."""

    endpoint_url: str | None = Field(default=None, description="e.g. http://127.0.0.1:9000")
    region: str = Field(default="us-east-1")
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    allow_http: bool = Field(default=False, description="allow a plain-http endpoint (local S3)")


class StoreSettings(Params):
    uri: str = Field(
        min_length=1,
        description="table root: a path (relative to the project's main checkout) or s3://...",
    )
    s3: S3Settings = S3Settings()
