"""Typed configuration from the environment, built once when the app starts."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from serializer.formats import Format
from serializer.s3.parts import DEFAULT_MAX_IN_FLIGHT, MIN_PART_SIZE, parse_size
from serializer.s3.tuner import DEFAULT_CAP as MAX_CONNECTIONS

from .scopes import parse_scopes

ByteSize = Annotated[int, BeforeValidator(parse_size)]


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return tuple(p.strip() for p in value.split(",") if p.strip())
    return value


CommaList = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_split_commas)]
#: A comma list of ``s3://bucket[/prefix]`` scopes, canonical (worker/scopes.py), or ``*``.
ScopeList = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_split_commas), AfterValidator(parse_scopes)]

#: The bucket ``exportctl demo`` creates: a fresh install's scopes allow it and nothing else.
DEMO_BUCKET = "export-demo"
#: Where jobs may read and write when EXPORT_READ_SCOPES / EXPORT_WRITE_SCOPES are unset.
DEFAULT_SCOPES = (f"s3://{DEMO_BUCKET}",)

#: File suffixes read as catalogs of specs; any other selection is an ``s3://`` prefix.
JSONL_SUFFIXES = (".jsonl", ".ndjson")
YAML_SUFFIXES = (".yaml", ".yml")

#: What a bulk re-export redoes (see worker/bulk/planner.py).
#: What a bulk re-export does with an export that exists: ``if-stale`` redoes it where its
#: producer differs from this worker, ``always`` redoes every one, ``missing`` only absent ones.
Policy = Literal["if-stale", "always", "missing"]
#: Every policy, the default first.
POLICIES: tuple[Policy, ...] = get_args(Policy)


class ScheduleEntry(BaseModel):
    """One scheduled bulk re-export: what, which policy, and when (a crontab or an interval)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(description="s3://bucket/prefix of manifests, or a catalog (.jsonl/.yaml) on S3 or disk")
    policy: Policy = "if-stale"
    to_format: Format | None = Field(
        default=None, description="convert every spec to this format (pt2: TorchScript exports get a .pt2 next to them)"
    )
    cron: str | None = Field(default=None, description="crontab expression: minute hour day-of-month month day-of-week")
    every: float | None = Field(default=None, gt=0, description="seconds between runs, instead of cron")

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        from serializer.s3.uri import parse_s3_uri

        catalog = v.lower().endswith(JSONL_SUFFIXES + YAML_SUFFIXES)
        if v.startswith("s3://"):
            parse_s3_uri(v, require_key=catalog)
        elif not catalog:
            raise ValueError(f"source {v!r} is neither an s3://bucket/prefix nor a catalog (.jsonl, .yaml)")
        return v

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is not None:
            crontab_of(v)
        return v

    @model_validator(mode="after")
    def _when(self) -> ScheduleEntry:
        if (self.cron is None) == (self.every is None):
            raise ValueError(f"schedule entry for {self.source}: give exactly one of 'cron' and 'every'")
        return self


def _has_crt() -> bool:
    import importlib.util

    return importlib.util.find_spec("awscrt") is not None


def crontab_of(expression: str) -> object:
    """A Celery ``crontab`` from a five-field expression (``"30 3 * * *"``).

    Raises:
        ValueError: not five fields, or a field Celery does not accept.
    """
    from celery.schedules import crontab

    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"crontab {expression!r} needs 5 fields (minute hour day-of-month month day-of-week)")
    minute, hour, day_of_month, month_of_year, day_of_week = fields
    try:
        return crontab(
            minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month_of_year, day_of_week=day_of_week
        )
    except (ValueError, TypeError) as exc:
        raise ValueError(f"crontab {expression!r}: {exc}") from exc


#: Builders a spec may name when EXPORT_ALLOWED_BUILDERS is unset: the bundled examples'
#: registered builders only, so nothing else is ever imported by default.
DEFAULT_ALLOWED_BUILDERS = ("worker.examples",)


#: Settings that are URLs which may carry a password: masked in ``repr(settings)``.
URL_FIELDS = ("broker_url", "result_backend")
#: What a URL's password is replaced with.
PASSWORD_MASK = "********"  # noqa: S105 - the mask, not a password


def masked_url(url: str) -> str:
    """``url`` with its password (``redis://user:PASSWORD@host``) replaced by a mask."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return PASSWORD_MASK
    if not password:
        return url
    user, _, host = parts.netloc.rpartition("@")
    name = user.split(":", 1)[0]
    return parts._replace(netloc=f"{name}:{PASSWORD_MASK}@{host}").geturl()


class Settings(BaseSettings):
    """Every setting, with its ``EXPORT_`` (or standard Celery / AWS) name and default."""

    # hide_input_in_errors: a refused setting's error never echoes the environment (the
    # broker URL holds its password).
    model_config = SettingsConfigDict(env_prefix="EXPORT_", extra="ignore", frozen=True, hide_input_in_errors=True)

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
    message_signing_key: str | None = Field(
        default=None,
        description="path of the PEM private key (RSA) that signs every task and control message; "
        "unset: messages are not signed",
    )
    message_signing_cert: str | None = Field(
        default=None, description="path of the PEM certificate of that key (names the signer)"
    )
    message_signing_cert_store: str | None = Field(
        default=None,
        description="folder of PEM certificates whose signatures are trusted; with signing on, "
        "only messages signed by one of them are accepted",
    )
    signing_key: str | None = Field(
        default=None,
        description="path of the PEM elliptic-curve private key (P-256, P-384 or P-521) every export is signed "
        "with; unset (and no EXPORT_SIGNING_KEY_PEM): exports are unsigned, and their manifests say so",
    )
    signing_key_pem: SecretStr | None = Field(
        default=None, description="the signing key itself, PEM (from a secret), instead of EXPORT_SIGNING_KEY"
    )
    signing_key_password: SecretStr | None = Field(default=None, description="password of an encrypted signing key")
    trusted_keys: CommaList = Field(
        default=(),
        description="comma-separated paths of PEM public keys whose signatures are trusted; set: bulk runs, "
        "exportctl verify, show, extra and ls use only exports signed by one of them",
    )
    allowed_builders: CommaList = Field(
        default=DEFAULT_ALLOWED_BUILDERS,
        description=(
            "comma-separated builders a spec may name: exact callables (pkg.module:function) or modules "
            "(and their submodules) of builders registered with worker.allowlist.register_builder"
        ),
    )
    read_scopes: ScopeList = Field(
        default=DEFAULT_SCOPES,
        description="comma-separated s3://bucket/prefix list jobs may read (weights, extra files, catalogs, "
        "manifests of a bulk selection); * allows every location (single-team deployments and tests only)",
    )
    write_scopes: ScopeList = Field(
        default=DEFAULT_SCOPES,
        description="comma-separated s3://bucket/prefix list jobs may write (destinations, bulk reports); "
        "* allows every location (single-team deployments and tests only)",
    )
    part_size: ByteSize | None = Field(
        default=None,
        ge=MIN_PART_SIZE,
        description="multipart part size (bytes, or e.g. 8MiB); unset: sized to the archive (8 MiB to 64 MiB, "
        "8 MiB for a stream)",
    )
    fixed_in_flight: int | None = Field(
        default=None,
        ge=1,
        le=MAX_CONNECTIONS,
        validation_alias=AliasChoices("EXPORT_MAX_IN_FLIGHT", "max_in_flight"),
        description="parts uploading at once per export, fixed; unset: tuned to the measured throughput "
        f"(up to {MAX_CONNECTIONS} from a spool file, up to {DEFAULT_MAX_IN_FLIGHT} from a stream)",
    )
    upload_strategy: Literal["spool", "fifo"] = Field(
        default="spool", description="how archive bytes reach the uploader (docs/benchmarks.md)"
    )
    pt2_strategy: Literal["stream", "spool"] = Field(
        default="spool", description="how .pt2 archive bytes reach the uploader (docs/benchmarks.md)"
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
    max_extra_file_bytes: ByteSize = Field(
        default=256 * 1024**2, ge=1, description="largest extra file a spec may carry (bytes, or e.g. 16MiB)"
    )
    sweep_prefixes: CommaList = Field(
        default=(),
        description="comma-separated s3://bucket/prefix list the sweeper cleans (stale uploads, staging, orphans)",
    )
    sweep_after: int | None = Field(
        default=None, ge=1, description="seconds after which an upload or orphan is stale; default: visibility timeout"
    )
    sweep_every: float = Field(default=3600.0, gt=0, description="seconds between sweeps scheduled by beat")
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="port of the worker's Prometheus /metrics; unset: no metrics"
    )
    log_format: Literal["text", "json"] = Field(default="text", description="worker log lines as text or JSON")
    bulk_window: int = Field(
        default=64, ge=1, le=100_000, description="jobs a bulk re-export keeps queued or running at once"
    )
    bulk_lock_ttl: int | None = Field(
        default=None,
        ge=1,
        description="seconds a bulk run's lock outlives its last sign of progress; default: the visibility timeout",
    )
    report_prefix: str | None = Field(
        default=None,
        description="s3://bucket/prefix for bulk re-export reports; default: _reexport/ under the selection",
    )
    catalog_dir: str | None = Field(
        default=None,
        description="folder a bulk re-export's catalog on disk must lie in (symlinks and .. resolved); "
        "unset: catalogs on disk are refused, catalogs in S3 only",
    )
    reexport_schedule: list[ScheduleEntry] = Field(
        default_factory=list,
        description='JSON list of scheduled bulk re-exports for beat: [{"source": .., "policy": .., "cron": ..}]',
    )

    @model_validator(mode="after")
    def _check_limits(self) -> Settings:
        if not self.soft_time_limit < self.time_limit < self.visibility_timeout:
            raise ValueError(
                "need EXPORT_SOFT_TIME_LIMIT < EXPORT_TIME_LIMIT < EXPORT_VISIBILITY_TIMEOUT "
                f"(got {self.soft_time_limit}, {self.time_limit}, {self.visibility_timeout}); "
                "otherwise Redis redelivers jobs that are still running"
            )
        if self.checksum_algorithm in ("CRC32C", "CRC64NVME") and not _has_crt():
            raise ValueError(
                f"EXPORT_CHECKSUM_ALGORITHM={self.checksum_algorithm} needs botocore's CRT extension "
                "(pip install 'botocore[crt]'); CRC32 and SHA256 work without it"
            )
        if self.sweep_after is not None and self.sweep_after <= self.time_limit:
            raise ValueError(
                f"need EXPORT_SWEEP_AFTER > EXPORT_TIME_LIMIT (got {self.sweep_after}, {self.time_limit}): "
                "a live export's upload must never look stale"
            )
        if self.bulk_lock_ttl is not None and self.bulk_lock_ttl <= self.time_limit:
            raise ValueError(
                f"need EXPORT_BULK_LOCK_TTL > EXPORT_TIME_LIMIT (got {self.bulk_lock_ttl}, {self.time_limit}): "
                "one export may run that long without a sign of progress"
            )
        return self

    @model_validator(mode="after")
    def _check_message_signing(self) -> Settings:
        given = [self.message_signing_key, self.message_signing_cert, self.message_signing_cert_store]
        if any(v is not None for v in given) and not all(v is not None for v in given):
            raise ValueError(
                "message signing needs all of EXPORT_MESSAGE_SIGNING_KEY, EXPORT_MESSAGE_SIGNING_CERT and "
                "EXPORT_MESSAGE_SIGNING_CERT_STORE, or none of them"
            )
        return self

    @model_validator(mode="after")
    def _check_signing_key(self) -> Settings:
        if self.signing_key is not None and self.signing_key_pem is not None:
            raise ValueError("give the signing key as EXPORT_SIGNING_KEY (a path) or EXPORT_SIGNING_KEY_PEM, not both")
        return self

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """``repr(settings)`` with the passwords of the broker and backend URLs masked."""
        for name, value in super().__repr_args__():
            yield name, masked_url(value) if name in URL_FIELDS and isinstance(value, str) else value

    @property
    def stale_after(self) -> int:
        """Seconds after which an upload, staging object or orphan archive is stale."""
        return self.sweep_after or self.visibility_timeout

    @property
    def lock_ttl(self) -> int:
        """Seconds a bulk run's lock lasts without progress."""
        return self.bulk_lock_ttl or self.visibility_timeout

    @property
    def backend_url(self) -> str:
        """The result backend, defaulting to the broker."""
        return self.result_backend or self.broker_url

    @property
    def max_in_flight(self) -> int:
        """The most parts one export uploads at once (size S3 connection pools to it):
        ``EXPORT_MAX_IN_FLIGHT`` when set, else the tuner's cap."""
        return self.fixed_in_flight or MAX_CONNECTIONS
