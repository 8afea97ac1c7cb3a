"""Fixtures of the end-of-day tests: a migrated ClickHouse database (each backend of
`tests.clickhouse`) and settings pointing at it."""

from __future__ import annotations

from typing import Any

import pytest

from sinks.backend import Backend
from sinks.schema import migrate
from tally.config import Settings


@pytest.fixture()
def db(backend: Backend) -> Backend:
    migrate(backend)
    return backend


@pytest.fixture()
def settings(storage: dict[str, Any]) -> Settings:
    return Settings(_env_file=None, **storage)  # type: ignore[call-arg]
