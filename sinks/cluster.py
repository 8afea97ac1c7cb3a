"""The ClickHouse schema for a cluster: ReplicatedReplacingMergeTree tables on every
shard plus a Distributed table over them, generated from the same migrations as the
single-server schema (`sinks.migrations.MIGRATIONS`), so the two never drift apart.

For each `CREATE TABLE IF NOT EXISTS {db}.<t> (...) ENGINE = ReplacingMergeTree(v)
ORDER BY k` of a migration:

    CREATE TABLE IF NOT EXISTS {db}.<t>_local ON CLUSTER <c> (...)
        ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/<db>/<t>_local',
                                              '{replica}'[, v]) ORDER BY k
    CREATE TABLE IF NOT EXISTS {db}.<t> ON CLUSTER <c> AS {db}.<t>_local
        ENGINE = Distributed(<c>, <db>, <t>_local, cityHash64(<first ORDER BY column>))

Every reader and the sink keep using `{db}.<t>`: inserts go through the Distributed
table, queries with FINAL are answered per shard. The sharding key is the first
column of the row's identity (ORDER BY), so every version of a row lands on the same
shard and ReplacingMergeTree / FINAL still collapse replays. `{shard}` and
`{replica}` are the servers' macros (config.xml <macros>); ZooKeeper or ClickHouse
Keeper is required. docs/operations.md ("ClickHouse cluster") shows how to apply it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sinks.migrations import MIGRATIONS, Migration

_CREATE = re.compile(
    r"^\s*CREATE TABLE IF NOT EXISTS \{db\}\.(?P<table>\w+) \((?P<columns>.*)\)\s*"
    r"ENGINE = (?P<engine>\w+)\((?P<args>[^)]*)\)\s*ORDER BY (?P<order>.+?)\s*$",
    re.S,
)
_ALTER = re.compile(r"^\s*ALTER TABLE \{db\}\.(?P<table>\w+) (?P<rest>.+?)\s*$", re.S)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ClusterSchemaError(ValueError):
    pass


@dataclass(frozen=True)
class ClusterTable:
    table: str
    local: str
    sharding_key: str
    statements: tuple[str, str]  # the local (replicated) table, the Distributed table


def _first_key(order: str) -> str:
    key = order.strip()
    if key.startswith("(") and key.endswith(")"):
        key = key[1:-1]
    first = key.split(",")[0].strip()
    if not _NAME.match(first):
        raise ClusterSchemaError(f"cannot shard by ORDER BY {order!r}")
    return first


def cluster_table(statement: str, cluster: str, database: str) -> ClusterTable:
    """One CREATE TABLE of `sinks.migrations` as its cluster pair."""
    m = _CREATE.match(statement)
    if m is None:
        raise ClusterSchemaError(f"not a CREATE TABLE of the schema: {statement[:80]!r}")
    table, engine, args = m["table"], m["engine"], m["args"].strip()
    if not engine.endswith("MergeTree") or engine.startswith("Replicated"):
        raise ClusterSchemaError(f"{table}: unexpected engine {engine}")
    local = f"{table}_local"
    zk_path = f"'/clickhouse/tables/{{shard}}/{database}/{local}'"
    engine_args = ", ".join([zk_path, "'{replica}'", *([args] if args else [])])
    key = f"cityHash64({_first_key(m['order'])})"
    on = f"ON CLUSTER {_quote(cluster)}"
    local_sql = (
        f"CREATE TABLE IF NOT EXISTS {{db}}.{local} {on} ({m['columns']})\n"
        f"ENGINE = Replicated{engine}({engine_args})\nORDER BY {m['order'].strip()}"
    )
    dist_sql = (
        f"CREATE TABLE IF NOT EXISTS {{db}}.{table} {on} AS {{db}}.{local}\n"
        f"ENGINE = Distributed({_quote(cluster)}, {_quote(database)}, {local}, {key})"
    )
    return ClusterTable(table, local, key, (local_sql, dist_sql))


def _quote(name: str) -> str:
    if not _NAME.match(name):
        raise ClusterSchemaError(f"cluster and database names are identifiers, got {name!r}")
    return name


def cluster_migrations(cluster: str, database: str) -> tuple[Migration, ...]:
    """`MIGRATIONS` for a cluster: same versions and names, cluster statements."""
    out = []
    for m in MIGRATIONS:
        stmts: list[str] = []
        for s in m.statements:
            a = _ALTER.match(s)
            if a is not None:  # the replicated table, then the Distributed one
                on = f"ON CLUSTER {_quote(cluster)}"
                stmts += [
                    f"ALTER TABLE {{db}}.{a['table']}_local {on} {a['rest']}",
                    f"ALTER TABLE {{db}}.{a['table']} {on} {a['rest']}",
                ]
                continue
            stmts += cluster_table(s, cluster, database).statements
        out.append(Migration(m.version, m.name, tuple(stmts)))
    return tuple(out)


def cluster_ddl(cluster: str, database: str) -> str:
    """The whole cluster schema as one SQL script (for clickhouse-client
    --multiquery), with the database name filled in."""
    _quote(database)
    parts = [
        f"CREATE DATABASE IF NOT EXISTS `{database}` ON CLUSTER {_quote(cluster)};",
        f"CREATE TABLE IF NOT EXISTS `{database}`.schema_migrations_local ON CLUSTER {cluster} "
        "(version UInt32, name String, applied_at DateTime('UTC') DEFAULT now())\n"
        f"ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{{shard}}/{database}/"
        "schema_migrations_local', '{replica}') ORDER BY version;",
        f"CREATE TABLE IF NOT EXISTS `{database}`.schema_migrations ON CLUSTER {cluster} "
        f"AS `{database}`.schema_migrations_local\n"
        f"ENGINE = Distributed({cluster}, {database}, schema_migrations_local, version);",
    ]
    for m in cluster_migrations(cluster, database):
        parts.append(f"-- migration {m.version}: {m.name}")
        parts += [s.replace("{db}", f"`{database}`") + ";" for s in m.statements]
        parts.append(
            f"INSERT INTO `{database}`.schema_migrations (version, name) VALUES "
            f"({m.version}, '{m.name.replace(chr(39), chr(39) * 2)}');"
        )
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> None:
    """python -m sinks.cluster CLUSTER [DATABASE] > cluster.sql"""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2 or args[0].startswith("-"):
        sys.exit("usage: python -m sinks.cluster CLUSTER [DATABASE]  (prints the cluster DDL)")
    try:
        sys.stdout.write(cluster_ddl(args[0], args[1] if len(args) > 1 else "tally"))
    except ClusterSchemaError as exc:
        sys.exit(str(exc))


if __name__ == "__main__":
    main()
