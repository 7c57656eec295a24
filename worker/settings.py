"""Typed configuration from the environment, built once when the app starts."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AliasChoices, BeforeValidator, Field, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from serializer.parts import MIN_PART_SIZE, parse_size

ByteSize = Annotated[int, BeforeValidator(parse_size)]


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return tuple(p.strip() for p in value.split(",") if p.strip())
    return value


CommaList = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_split_commas)]

#: Modules a spec's builder may come from when EXPORT_ALLOWED_BUILDERS is unset: only the
#: bundled examples, so nothing else is ever imported by default.
DEFAULT_ALLOWED_BUILDERS = ("worker.examples",)


class Settings(BaseSettings):
    """Every setting, with its ``EXPORT_`` (or standard Celery / AWS) name and default."""

    model_config = SettingsConfigDict(env_prefix="EXPORT_", extra="ignore", frozen=True)

    broker_url: str = Field(
        default="redis://localhost:6379/0",
        validation_alias=AliasChoices("CELERY_BROKER_URL", "EXPORT_BROKER_URL"),
        description="Redis broker URL (redis:// or rediss://; password in the URL)",
    )
    result_backend: str | None = Field(
        default=None,
        validation_alias=AliasChoices("CELERY_RESULT_BACKEND", "EXPORT_RESULT_BACKEND"),
        description="result backend URL; the broker URL when unset",
    )
    allowed_builders: CommaList = Field(
        default=DEFAULT_ALLOWED_BUILDERS,
        description="comma-separated module prefixes a spec's builder may be imported from",
    )
    part_size: ByteSize = Field(
        default=8 * 1024**2, ge=MIN_PART_SIZE, description="multipart part size (bytes, or e.g. 8MiB)"
    )
    max_in_flight: int = Field(default=4, ge=1, le=64, description="parts uploading at once per export")
    upload_strategy: Literal["spool", "fifo"] = Field(
        default="spool", description="how archive bytes reach the uploader (docs/benchmarks.md)"
    )
    spool_dir: str | None = Field(default=None, description="directory for spool files and pipes (on disk, not tmpfs)")
    checksum_algorithm: Literal["CRC32", "CRC32C", "SHA256", "CRC64NVME"] | None = Field(
        default=None, description="S3 flexible checksum per part, listed in Complete"
    )
    s3_checksum_mode: Literal["when_supported", "when_required"] = Field(
        default="when_supported",
        description="boto3 checksum mode; when_required for stores that reject its default trailers",
    )
    conditional_publish: bool = Field(
        default=True, description="publish with If-None-Match: * so a second writer cannot overwrite"
    )
    verify_mismatch: Literal["fail", "record"] = Field(
        default="fail", description="a verification mismatch fails the job (and removes the archive), or is recorded"
    )
    torch_threads: int | None = Field(
        default=None, ge=1, description="torch threads per worker process; default: cores / concurrency"
    )
    max_tasks_per_child: int | None = Field(
        default=100, ge=1, description="recycle a worker process after this many jobs"
    )
    max_memory_per_child: int | None = Field(
        default=None, ge=1, description="recycle a worker process above this resident memory, in KiB"
    )
    task_max_retries: int = Field(default=5, ge=0, description="retries of a job after transient S3 or broker errors")
    result_expires: int = Field(default=7 * 86400, ge=60, description="seconds results are kept in the backend")
    pool_start_method: Literal["fork", "spawn", "forkserver"] = Field(
        default="fork", description="how pool processes start; spawn on GPU hosts that touch CUDA early"
    )
    soft_time_limit: int = Field(default=3300, ge=1, description="seconds; the export aborts its upload cleanly")
    time_limit: int = Field(default=3600, ge=1, description="seconds; the worker process is killed")
    visibility_timeout: int = Field(
        default=4000, ge=1, description="seconds before Redis redelivers an unacknowledged job"
    )

    @model_validator(mode="after")
    def _check_limits(self) -> Settings:
        if not self.soft_time_limit < self.time_limit < self.visibility_timeout:
            raise ValueError(
                "need EXPORT_SOFT_TIME_LIMIT < EXPORT_TIME_LIMIT < EXPORT_VISIBILITY_TIMEOUT "
                f"(got {self.soft_time_limit}, {self.time_limit}, {self.visibility_timeout}); "
                "otherwise Redis redelivers jobs that are still running"
            )
        return self

    @property
    def backend_url(self) -> str:
        """The result backend, defaulting to the broker."""
        return self.result_backend or self.broker_url
