"""The one settings object, read once from the environment (`PERCEPT_` prefix)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class LogFormat(str, Enum):
    AUTO = "auto"  # JSON unless stderr is a terminal
    JSON = "json"  # one JSON object per line
    CONSOLE = "console"  # coloured key=value lines for people


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PERCEPT_", extra="ignore", validate_default=True)

    data_dir: Path = Field(default=Path("data"), description="SQLite store, model files, model cache")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    metrics_port: int = Field(
        default=9100, ge=0, le=65535, description="`percept consumer` serves /metrics here; 0: off"
    )
    broker_url: str = Field(default="", description="empty: in-process broker; else amqp://...")
    store_url: str = Field(
        default="", description="empty: SQLite in the data dir; sqlite:///path; mongodb://..."
    )
    max_batch_size: int = Field(default=8, ge=1, le=1024)
    max_batch_delay_ms: float = Field(default=5.0, ge=0, le=60_000)
    prefetch: int = Field(default=32, ge=1, le=10_000, description="unacknowledged jobs per consumer")
    engine_processes: int = Field(
        default=0,
        ge=0,
        le=256,
        description="engine processes per consumer, each running batches on its own; 0: one per CPU core",
    )
    engine_threads: int = Field(
        default=1,
        ge=0,
        le=256,
        description="TensorFlow threads per engine process; 0: TensorFlow's default (every core)",
    )
    batch_prefetch_batches: int = Field(
        default=1,
        ge=1,
        le=16,
        description="batch jobs' sources a consumer holds unacknowledged, in model batches (max_batch_size)",
    )
    bootstrap_api_key: str = Field(default="", description="an API key that exists after start")
    public_url: str = Field(default="", description="base URL for links; default: from the request")
    max_request_mb: float = Field(default=64.0, gt=0, description="largest request body (network uploads)")
    max_inputs: int = Field(
        default=128, ge=1, le=1024, description="inputs per Deepomatic inference request; more is a 400"
    )
    max_image_pixels: int = Field(default=40_000_000, ge=1)
    fetch_timeout_s: float = Field(default=10.0, gt=0)
    fetch_max_mb: float = Field(default=20.0, gt=0)
    outbound_allow: str = Field(
        default="", description="comma-separated CIDRs or host names allowed for URLs"
    )
    model_cache_mb: int = Field(
        default=2048, ge=1, description="budget for loaded models per consumer process"
    )
    sandbox_memory_mb: int = Field(
        default=2048,
        ge=512,  # TensorFlow alone takes about 450 MB
        description="memory (RLIMIT_DATA) for the child process that trial-loads an uploaded network",
    )
    sandbox_timeout_s: float = Field(
        default=120.0, gt=0, le=3600, description="time for that child to load the network and run it once"
    )
    webhook_retry_schedule: str = Field(
        default="5,30,120,600,1800,3600,7200,14400,28800,28800",
        description="comma-separated seconds between webhook attempts; the default spans about a day",
    )
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=300, description="per webhook attempt")
    webhook_max_in_flight_per_endpoint: int = Field(
        default=0,
        ge=0,
        le=10_000,
        description="webhook attempts one endpoint may have in flight per consumer, the rest wait queued"
        " without holding a slot; 0: a quarter of the consumer's 16 webhook slots",
    )
    webhook_circuit_failures: int = Field(
        default=5,
        ge=0,
        le=1000,
        description="webhook attempts in a row without an answer that cut an endpoint off for a while;"
        " 0: never",
    )
    webhook_circuit_open_s: float = Field(
        default=30.0,
        gt=0,
        le=86_400,
        description="the first cut-off, doubled after each failed probe up to 10 minutes (or this)",
    )
    retention_days: float = Field(
        default=30.0,
        ge=0,
        description="days tasks, webhook attempts and idempotency records are kept; 0: forever",
    )
    max_run_s: float = Field(
        default=300.0,
        ge=0,
        description="a model run this long ends `percept consumer`, so its jobs are redelivered; 0: off",
    )
    deployment_lease_s: float = Field(
        default=60.0, ge=1, le=3600, description="a deployment whose worker died resumes after this long"
    )
    maintenance_interval_s: float = Field(
        default=60.0, gt=0, le=86_400, description="how often each consumer purges expired documents"
    )
    rate_limit_per_s: float = Field(
        default=0.0, ge=0, description="requests a second per API key, per gateway process; 0: no limit"
    )
    rate_limit_burst: int = Field(
        default=0, ge=0, description="requests an API key may send at once; 0: one second's worth"
    )
    queue_max_length: int = Field(
        default=100_000,
        ge=1,
        description="ready jobs a work queue holds before submissions are refused (503, Retry-After)",
    )
    demo_models: bool = Field(default=True, description="register the demo models on `serve`")
    log_format: LogFormat = LogFormat.AUTO
    log_level: str = "info"

    @field_validator("broker_url")
    @classmethod
    def _broker_scheme(cls, value: str) -> str:
        if value and not value.startswith(("amqp://", "amqps://")):
            raise ValueError("must be empty (in-process broker) or an amqp:// or amqps:// URL")
        return value

    @field_validator("store_url")
    @classmethod
    def _store_scheme(cls, value: str) -> str:
        if value and not value.startswith(("sqlite://", "mongodb://", "mongodb+srv://")):
            raise ValueError("must be empty (SQLite in the data dir), sqlite:///path or mongodb://...")
        return value

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        retry_delays(value)
        return value

    @field_validator("bootstrap_api_key")
    @classmethod
    def _key_length(cls, value: str) -> str:
        if value and len(value) < 16:
            raise ValueError("must be at least 16 characters")
        return value


def retry_delays(schedule: str) -> tuple[float, ...]:
    """`5,30,120` as seconds; empty means no retries. Raises ValueError naming the bad item."""
    delays = []
    for item in (part.strip() for part in schedule.split(",")):
        if not item:
            continue
        try:
            delay = float(item)
        except ValueError:
            raise ValueError(f"{item!r} is not a number of seconds") from None
        if not 0 < delay <= 7 * 86400:
            raise ValueError(f"{item!r} must be more than 0 and at most a week")
        delays.append(delay)
    return tuple(delays)


class SettingsError(Exception):
    """Bad settings, worded with the environment variable names."""


def load_settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        lines = []
        for problem in error.errors():
            field = ".".join(str(part) for part in problem["loc"])
            lines.append(f"PERCEPT_{field.upper()}: {problem['msg']}")
        raise SettingsError("; ".join(lines)) from None
