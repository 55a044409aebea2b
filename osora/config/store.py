"""params/store.yaml: where tables and artifacts live (a local directory or s3://bucket/prefix)."""

from __future__ import annotations

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
    # Every S3 call (Lance tables, s3fs files) is bounded by these, so an outage fails with
    # osora.store.StoreUnavailable naming the endpoint instead of hanging.
    connect_timeout_s: float = Field(default=5.0, gt=0, description="seconds to open a connection")
    request_timeout_s: float = Field(
        default=30.0, gt=0,
        description="seconds a request may go without an answer (Lance: the whole request; "
        "s3fs: each read)",
    )
    max_attempts: int = Field(
        default=3, ge=1, le=10,
        description="tries per request, the first included, with exponential backoff between",
    )


class StoreSettings(Params):
    uri: str = Field(
        min_length=1,
        description="table root: a path (relative to the project's main checkout) or s3://...",
    )
    s3: S3Settings = S3Settings()
    cache_dir: str | None = Field(
        default=None,
        description="where stages keep the S3 files they read (raw videos, clips), shared by "
        "every process on the machine; a relative path resolves against the project's main "
        "checkout; null: ~/.cache/osora/files ($XDG_CACHE_HOME/osora/files)",
    )
    cache_max_gib: float = Field(
        default=2.0, gt=0,
        description="the cache's size cap; least recently used files are evicted beyond it "
        "(files in use stay)",
    )
