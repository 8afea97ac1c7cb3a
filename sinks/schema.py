"""The ClickHouse schema, as ordered migrations (the DDL: `sinks.migrations`).

Applied on sink start and by `tally db migrate`; idempotent (every statement is
`IF NOT EXISTS`, each applied version is recorded in `schema_migrations`, a
version is applied once, and re-running a half-applied one is harmless).

Never edit an applied migration: add the next one.
"""

from __future__ import annotations

import logging
import re

from sinks.backend import Backend
from sinks.migrations import LATEST, MIGRATIONS, RECON_TABLES, TABLES, Migration

__all__ = [
    "LATEST",
    "MIGRATIONS",
    "RECON_TABLES",
    "TABLES",
    "Migration",
    "applied_versions",
    "migrate",
    "schema_version",
]

log = logging.getLogger(__name__)


def applied_versions(db: Backend) -> set[int]:
    rows = db.query("SELECT version FROM {db}.schema_migrations FINAL")
    return {int(r["version"]) for r in rows}


def schema_version(db: Backend) -> int:
    """The highest applied migration, 0 when the schema was never applied."""
    exists = db.query(
        "SELECT count() AS n FROM system.tables WHERE database = %(d)s "
        "AND name = 'schema_migrations'",
        {"d": db.database},
    )
    if not exists or not int(exists[0]["n"]):
        return 0
    return max(applied_versions(db), default=0)


def migrate(db: Backend) -> tuple[int, int]:
    """Apply the pending migrations; returns (version before, version after)."""
    db.execute("CREATE DATABASE IF NOT EXISTS {db}")
    db.execute(
        """CREATE TABLE IF NOT EXISTS {db}.schema_migrations (
            version UInt32,
            name String,
            applied_at DateTime('UTC') DEFAULT now()
        ) ENGINE = ReplacingMergeTree() ORDER BY version"""
    )
    done = applied_versions(db)
    before = max(done, default=0)
    for m in MIGRATIONS:
        if m.version in done:
            continue
        log.info("applying ClickHouse migration %d: %s", m.version, m.name)
        for stmt in m.statements:
            if _column_exists(db, stmt):
                continue
            db.execute(stmt)
        db.insert("schema_migrations", ["version", "name"], [(m.version, m.name)])
    return before, max(before, LATEST)


_ADD_COLUMN = re.compile(r"^ALTER TABLE \{db\}\.(\w+) ADD COLUMN (\w+) ")


def _column_exists(db: Backend, stmt: str) -> bool:
    """Is `stmt` an ADD COLUMN of a column the table already has?"""
    m = _ADD_COLUMN.match(stmt)
    if m is None:
        return False
    rows = db.query(
        "SELECT count() AS n FROM system.columns WHERE database = %(d)s "
        "AND table = %(t)s AND name = %(c)s",
        {"d": db.database, "t": m[1], "c": m[2]},
    )
    return bool(rows and int(rows[0]["n"]))
