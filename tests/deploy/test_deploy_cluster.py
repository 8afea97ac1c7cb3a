"""sinks/cluster.py: the cluster variant of the schema is generated from the same
migrations, table for table. (Executing it needs a ClickHouse cluster with
ZooKeeper/Keeper, which this machine has not: the generated SQL is checked
structurally here, and the column definitions are the single-server schema's,
which tests/sinks/test_schema.py runs on chDB and clickhouse-server.)"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from sinks.cluster import ClusterSchemaError, cluster_ddl, cluster_migrations, cluster_table
from sinks.schema import MIGRATIONS, RECON_TABLES, TABLES


def tables_of(statements: tuple[str, ...]) -> list[str]:
    return re.findall(r"CREATE TABLE IF NOT EXISTS \{db\}\.(\w+) \(", "\n".join(statements))


def test_every_table_of_every_migration_gets_a_replicated_and_a_distributed_table() -> None:
    cm = cluster_migrations("c1", "tally")
    assert [(m.version, m.name) for m in cm] == [(m.version, m.name) for m in MIGRATIONS]
    for plain, clustered in zip(MIGRATIONS, cm, strict=True):
        names = tables_of(plain.statements)
        assert len(clustered.statements) == 2 * len(plain.statements)
        creates = [s for s in clustered.statements if s.startswith("CREATE")]
        for name, (local, dist) in zip(
            names,
            zip(creates[::2], creates[1::2], strict=True),
            strict=True,
        ):
            assert f"{{db}}.{name}_local ON CLUSTER c1 (" in local
            assert (
                "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/tally/" in local
            )
            assert f"/{name}_local', '{{replica}}'" in local
            assert f"{{db}}.{name} ON CLUSTER c1 AS {{db}}.{name}_local" in dist
            assert f"ENGINE = Distributed(c1, tally, {name}_local, cityHash64(" in dist
    for plain, clustered in zip(MIGRATIONS, cm, strict=True):
        alters = [s for s in plain.statements if s.startswith("ALTER")]
        for a, (local, dist) in zip(
            alters,
            zip(
                [s for s in clustered.statements if s.startswith("ALTER")][::2],
                [s for s in clustered.statements if s.startswith("ALTER")][1::2],
                strict=True,
            ),
            strict=True,
        ):
            table, rest = a.split(" ", 3)[2].removeprefix("{db}."), a.split(" ", 3)[3]
            assert local == f"ALTER TABLE {{db}}.{table}_local ON CLUSTER c1 {rest}"
            assert dist == f"ALTER TABLE {{db}}.{table} ON CLUSTER c1 {rest}"
    generated = {t for m in MIGRATIONS for t in tables_of(m.statements)}
    assert generated == set(TABLES) | set(RECON_TABLES)


def test_columns_order_and_version_are_the_single_server_schema() -> None:
    stmt = MIGRATIONS[0].statements[0]  # order_states: ReplacingMergeTree(version)
    t = cluster_table(stmt, "c1", "tally")
    local = t.statements[0]
    body = stmt[stmt.index("(") + 1 : stmt.rindex(") ENGINE")]
    assert body in local  # column definitions verbatim
    assert local.endswith("'{replica}', version)\nORDER BY txn_id")
    assert t.sharding_key == "cityHash64(txn_id)"


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ("postings", "cityHash64(posting_id)"),  # all legs of a posting on one shard
        ("balances", "cityHash64(account)"),  # all shards/versions of an account together
        ("breaks", "cityHash64(break_id)"),
        ("statement_lines", "cityHash64(channel_id)"),
    ],
)
def test_sharding_key_keeps_every_version_of_a_row_on_one_shard(table: str, key: str) -> None:
    stmt = next(s for m in MIGRATIONS for s in m.statements if f"{{db}}.{table} (" in s)
    assert cluster_table(stmt, "c1", "tally").sharding_key == key


def test_script_and_bad_names() -> None:
    sql = cluster_ddl("prod", "tally")
    assert sql.startswith("CREATE DATABASE IF NOT EXISTS `tally` ON CLUSTER prod;")
    assert "{db}" not in sql and "schema_migrations_local" in sql
    assert sql.count("INSERT INTO `tally`.schema_migrations") == len(MIGRATIONS)
    assert "DateTime64" not in sql and "LowCardinality" not in sql  # 18.16 rules hold
    with pytest.raises(ClusterSchemaError):
        cluster_ddl("prod; DROP", "tally")
    with pytest.raises(ClusterSchemaError):
        cluster_table("SELECT 1", "c", "d")
    r = subprocess.run(
        [sys.executable, "-m", "sinks.cluster", "prod"], capture_output=True, text=True, check=True
    )
    assert r.stdout == sql
