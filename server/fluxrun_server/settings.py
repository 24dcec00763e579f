"""Server configuration in one place: `FLUXRUN_SERVER_*` environment variables or a settings file.

With no configuration at all the server runs on the embedded default: one local data folder
holding the WAL, a SQLite index and a filesystem object store. Scale-out swaps in PostgreSQL and an
S3-compatible store by settings, the same code. Unsafe or contradictory values are refused at
start-up with a message that says what to change.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ServerSettings"]

KiB = 1024
MiB = 1024 * 1024


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLUXRUN_SERVER_", env_file=None, extra="forbid")

    data_dir: Path = Field(Path(".fluxrun/server"), description="WAL, and the embedded index and object store")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///DATA_DIR/index.db")
    object_store_url: str | None = Field(
        None, description="file:///path or s3://bucket/prefix; default DATA_DIR/objects"
    )
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(8400, ge=0, le=65535)
    max_batch_bytes: int = Field(16 * MiB, gt=0, description="compressed request body limit (413 past it)")
    max_decompressed_bytes: int = Field(64 * MiB, gt=0, description="a decompressed batch may not grow past this")
    max_bundle_bytes: int = Field(8 * MiB, gt=0)
    max_bundles_per_batch: int = Field(1000, gt=0)
    max_request_body_bytes: int = Field(
        256 * KiB, gt=0, description="body limit of every request but ingest and CI reports (413 past it)"
    )
    max_report_body_bytes: int = Field(4 * MiB, gt=0, description="body limit of POST /v1/regression-runs")
    max_header_bytes: int = Field(64 * KiB, gt=0, description="request line and headers (431 past it)")
    header_timeout_s: float = Field(10.0, gt=0, description="headers must arrive within this of the request's start")
    body_timeout_s: float = Field(60.0, gt=0, description="a body must arrive within this of its headers (408)")
    wal_segment_bytes: int = Field(64 * MiB, gt=0)
    wal_backlog_bytes: int = Field(512 * MiB, gt=0, description="429 with Retry-After past this backlog")
    segment_target_bytes: int = Field(8 * MiB, gt=0, description="payloads per object-store segment")
    aggregate_interval_s: float = Field(0.05, gt=0)
    aggregate_batch: int = Field(2000, gt=0)
    health_backlog_age_s: float = Field(
        120.0, gt=0, description="/healthz is unhealthy once the oldest record not yet indexed is older than this"
    )
    health_min_free_bytes: int = Field(64 * MiB, ge=0, description="/healthz is unhealthy below this free disk space")
    auth_stale_s: float = Field(
        900.0, ge=0, description="with the database down, tokens and keys seen within this long stay valid"
    )
    log_url: str | None = Field(None, description="nats://host:4222[,host2:4222,...]: JetStream instead of the WAL")
    log_stream: str = Field("FLUXRUN_BUNDLES", pattern=r"^[A-Za-z0-9_-]{1,64}$", description="the JetStream stream")
    log_replicas: int = Field(3, ge=1, le=5, description="JetStream replicas of the stream (1 on a single server)")

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> ServerSettings:
        if self.max_decompressed_bytes < self.max_batch_bytes:
            raise ValueError("max_decompressed_bytes must be at least max_batch_bytes")
        if self.max_bundle_bytes > self.max_decompressed_bytes:
            raise ValueError("max_bundle_bytes cannot exceed max_decompressed_bytes")
        store = self.object_store_url or ""
        if store.startswith("s3://") and bool(self.s3_access_key) != bool(self.s3_secret_key):
            raise ValueError("set both FLUXRUN_SERVER_S3_ACCESS_KEY and FLUXRUN_SERVER_S3_SECRET_KEY, or neither")
        if self.database_url and self.database_url.startswith("postgres://"):
            raise ValueError(
                "use postgresql+psycopg://... for FLUXRUN_SERVER_DATABASE_URL (postgres:// is not a SQLAlchemy URL)"
            )
        from fluxrun_server.ingest.log import refuse_contradictions  # the distributed log's own rules

        refuse_contradictions(self)
        return self

    @property
    def wal_dir(self) -> Path:
        return self.data_dir / "wal"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'index.db').resolve()}"

    @property
    def resolved_object_store_url(self) -> str:
        return self.object_store_url or f"file://{(self.data_dir / 'objects').resolve()}"
