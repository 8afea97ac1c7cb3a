"""One configuration object for every part of tally.

Read from the environment (prefix `TALLY_`) and from `.env` in the working
directory; `tally config` prints the effective values with secrets masked.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tally.core.policy import ChannelPolicy, Policies


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TALLY_",
        env_file=".env",
        env_file_encoding="utf-8",
        frozen=True,
        extra="ignore",
    )

    # ------------------------------------------------------------------ broker
    broker: str | None = Field(
        None,
        description="Kafka bootstrap servers as kafka://host:port[,host:port]; unset: start "
        "the embedded Tansu broker (memory only)",
    )
    embedded_broker_host: str = Field("127.0.0.1", description="embedded broker listen address")
    embedded_broker_port: int = Field(9092, description="embedded broker port")
    app_id: str = Field("tally", description="Faust app id: consumer group and table prefix")
    partitions: int = Field(4, ge=1, description="partitions of every tally topic")
    processing_guarantee: str = Field(
        "at_least_once",
        description="at_least_once: outputs, then state, then input offsets (docs/realtime.md)",
    )

    # ------------------------------------------------------------------ topics
    topic_transactions: str = Field("payments.transactions", description="input: our orders")
    topic_callbacks: str = Field("payments.callbacks", description="input: channel evidence")
    topic_breaks: str = Field("payments.breaks", description="output: real-time breaks")
    topic_postings: str = Field("payments.postings", description="output: balance movements")
    topic_status_queries: str = Field(
        "payments.status-queries", description="output: requests to query a pending order"
    )
    topic_dead_letter: str = Field(
        "payments.dead-letter", description="output: messages not processed, with the reason"
    )
    topic_order_states: str = Field(
        "payments.order-states",
        description="output: each order's state after every batch that changed it (the "
        "orders table's changelog; compact it on Kafka)",
    )
    topic_balances: str = Field(
        "payments.balances",
        description="output: balance shard snapshots after every batch that changed them (the "
        "balances table's changelog; compact it on Kafka)",
    )

    # --------------------------------------------------------------- behaviour
    channels: dict[str, ChannelPolicy] = Field(
        default_factory=dict,
        description='per-channel policy as JSON, e.g. {"unionpay": {"cutoff": "23:00", '
        '"query_before_final_success": true}}',
    )
    default_channel: ChannelPolicy = Field(
        default_factory=ChannelPolicy, description="policy for channels not in TALLY_CHANNELS"
    )
    allowed_lateness_seconds: float = Field(
        5.0, ge=0, description="event-time slack before timers fire"
    )
    idle_tick_seconds: float = Field(
        2.0, gt=0, description="an idle partition's watermark follows the wall clock after this"
    )
    batch_max_events: int = Field(
        2000, gt=0, description="a worker takes at most this many input messages per batch"
    )
    batch_max_ms: float = Field(
        20.0,
        gt=0,
        description="... and waits at most this long (milliseconds) for a batch to fill",
    )
    consumer_fetch_max_wait_ms: int = Field(
        100,
        ge=0,
        description="how long the broker may hold a fetch for data to arrive (Faust's own "
        "default is 1500 ms: the floor of an idle worker's latency)",
    )
    max_message_bytes: int = Field(
        64 * 1024, gt=0, description="larger input messages go to the dead-letter topic"
    )

    # ----------------------------------------------------------------- storage
    data_dir: str = Field(
        "./data", description="local data (embedded broker log, embedded chDB under <dir>/chdb)"
    )
    clickhouse_url: SecretStr | None = Field(
        None,
        description="ClickHouse server as clickhouse://user:password@host:9000/db (native "
        "protocol; clickhouses:// for TLS); unset: embedded chDB under TALLY_DATA_DIR",
    )
    clickhouse_secure: bool = Field(
        False, description="TLS to the ClickHouse server (default port 9440)"
    )
    clickhouse_verify: bool = Field(True, description="verify the server's TLS certificate")
    clickhouse_ca_certs: str | None = Field(
        None, description="CA bundle (PEM file) to verify the ClickHouse server with"
    )
    clickhouse_database: str = Field(
        "tally", description="ClickHouse database (a path in TALLY_CLICKHOUSE_URL wins)"
    )
    sink_batch_size: int = Field(
        5000, gt=0, description="sinks insert at most this many messages per batch"
    )
    sink_batch_seconds: float = Field(
        1.0, gt=0, description="... and at least this often while messages arrive"
    )
    sink_retry_max_seconds: float = Field(
        30.0, gt=0, description="longest pause between retries while ClickHouse is unreachable"
    )

    # ------------------------------------------------------------- operations
    web_port: int = Field(
        6066, ge=0, description="Faust web endpoint (health, metrics); 0 turns it off"
    )
    metrics_port: int = Field(
        9108,
        ge=0,
        description="Prometheus metrics of the workers and the sink on this port "
        "(http://host:port/metrics); 0 turns the exporter off",
    )
    log_level: str = Field("warning", description="worker log level")

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        if not re.match(r"^kafka://[^/,\s]+:\d+(,[^/,\s]+:\d+)*/?$", v):
            raise ValueError(
                f"TALLY_BROKER must look like kafka://host:port[,host:port], got {v!r}"
            )
        return v.rstrip("/")

    @field_validator("processing_guarantee")
    @classmethod
    def _guarantee(cls, v: str) -> str:
        if v == "exactly_once":
            raise ValueError(
                "TALLY_PROCESSING_GUARANTEE=exactly_once is not supported: the workers commit "
                "outputs, then state, then input offsets, with deterministic output ids that "
                "the sink de-duplicates (docs/realtime.md); Faust transactions are not used"
            )
        if v != "at_least_once":
            raise ValueError("TALLY_PROCESSING_GUARANTEE is at_least_once")
        return v

    # ---------------------------------------------------------------- helpers

    @property
    def embedded(self) -> bool:
        return self.broker is None

    def broker_url(self) -> str:
        if self.broker:
            return self.broker
        return f"kafka://{self.embedded_broker_host}:{self.embedded_broker_port}"

    def bootstrap_servers(self) -> str:
        return self.broker_url().removeprefix("kafka://")

    def policies(self) -> Policies:
        return Policies(self.channels, self.default_channel)

    def masked(self) -> dict[str, Any]:
        """Effective settings as JSON-ready values, secrets masked."""
        out: dict[str, Any] = json.loads(self.model_dump_json())
        for name, value in self:
            if isinstance(value, SecretStr):
                out[name] = _mask_url(value.get_secret_value())
        if self.broker:
            out["broker"] = _mask_url(self.broker)
        return out


def _mask_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()
