"""`tally db migrate | status` (the ClickHouse schema) and `tally sink` (the ClickHouse
sink on its own); `register(main)` adds them."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import click

from sinks.backend import ClickHouseError, connect
from tally.cli.common import CliState, db, emit, pass_state, setup_logging


@click.group("db")
def db_group() -> None:
    """The ClickHouse schema."""


@db_group.command("migrate")
@pass_state
def db_migrate(state: CliState) -> None:
    """Apply the pending schema migrations (idempotent)."""
    from sinks.schema import LATEST, migrate

    conn = connect(state.settings)
    try:
        before, after = migrate(conn)
    except ClickHouseError as exc:
        raise click.ClickException(f"{conn.describe()}: {exc}") from None
    finally:
        conn.close()
    if before == after:
        click.echo(f"{conn.describe()}: schema is at version {after} (latest {LATEST})")
    else:
        click.echo(f"{conn.describe()}: schema migrated from version {before} to {after}")


@db_group.command("status")
@click.option("--json", "as_json", is_flag=True)
@pass_state
def db_status(state: CliState, as_json: bool) -> None:
    """Schema version and rows per table (stored, and distinct as queries see them)."""
    from sinks.queries import counts
    from sinks.schema import LATEST, schema_version

    with db(state.settings) as conn:
        version = schema_version(conn)
        c = counts(conn)
        where = conn.describe()
    if as_json:
        click.echo(json.dumps({"target": where, "schema_version": version, "tables": c}, indent=2))
        return
    click.echo(f"{where}: schema version {version} (latest {LATEST})")
    emit([{"table": t, **v} for t, v in c.items()], "table", ["table", "rows", "distinct"])


@click.command("sink")
@click.option(
    "--until-caught-up",
    is_flag=True,
    help="exit once everything on the output topics at start is stored",
)
@click.option("--group", default=None, help="consumer group (default: <TALLY_APP_ID>-sink)")
@pass_state
def sink_cmd(state: CliState, until_caught_up: bool, group: str | None) -> None:
    """Run only the ClickHouse sink (the stream workers run elsewhere)."""
    from sinks.runner import SinkRunner

    s = state.settings
    setup_logging(s.log_level)
    if s.embedded:
        from streams.broker import port_open

        if not port_open(s.embedded_broker_host, s.embedded_broker_port):
            raise click.ClickException(
                f"no broker at {s.broker_url()}: the sink reads the topics of a running "
                "`tally run`, or set TALLY_BROKER"
            )

    async def main() -> dict[str, Any]:
        runner = SinkRunner(s, group_id=group)
        await runner.start()
        click.echo(f"sink running ({runner.group_id}): {runner.db.describe()}", err=True)
        try:
            if until_caught_up:
                await runner.wait_caught_up()
            else:
                while True:
                    await asyncio.sleep(3600)
        finally:
            await runner.stop()
        return runner.stats.to_json()

    try:
        stats = asyncio.run(main())
    except KeyboardInterrupt:
        return
    click.echo(json.dumps(stats))


def register(main: click.Group) -> None:
    """Add `tally db` and `tally sink` to `tally`."""
    main.add_command(db_group)
    main.add_command(sink_cmd)
