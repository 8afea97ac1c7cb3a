"""Shared fixtures. The broker fixture starts the real embedded Tansu broker (the
same binary `tally run` uses) on a free port, once per test session."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from streams.broker import EmbeddedBroker

# the ClickHouse fixtures (backend, backend_kind, storage, clickhouse_server, chdb_dir),
# registered once for every test module
pytest_plugins = ("tests.clickhouse",)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    logs = tmp_path_factory.mktemp("tansu")
    b = EmbeddedBroker("127.0.0.1", free_port(), str(logs))
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(autouse=True)
def _no_dotenv(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read a developer's .env or TALLY_* environment."""
    for k in list(os.environ):
        if k.startswith("TALLY_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("TALLY_LOG_LEVEL", "warning")
