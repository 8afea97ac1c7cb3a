"""What every `tally` command shares: the settings the root group reads once (and hands
down as the click context's object), the ClickHouse connection, output formats, date
checks, logging and the embedded broker.

A command takes the state with `@pass_state` and reads `state.settings` where it needs
them: settings are read once per `tally` invocation, on first use, so a command that needs
none (e.g. `tally dashboards build`) works whatever the environment holds, and invalid
settings fail with the variable named.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from sinks.backend import Backend, ClickHouseError, connect
from tally.config import Settings

__all__ = [
    "FORMATS",
    "CliState",
    "broker_for",
    "cell",
    "check_date",
    "db",
    "demo_hint",
    "emit",
    "pass_state",
    "read_settings",
    "setup_logging",
]

FORMATS = click.Choice(["table", "json", "csv"])


def read_settings(**overrides: Any) -> Settings:
    """Settings from TALLY_* variables and ./.env (overrides win); invalid ones are a
    click error that names each variable at fault."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        lines = [
            f"  TALLY_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        ]
        raise click.ClickException("invalid settings:\n" + "\n".join(lines)) from None


class CliState:
    """The root group's object (ctx.obj): `--database` and the settings, read once."""

    def __init__(self, database: str | None = None) -> None:
        self.database = database
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        """The effective settings, read on first use (with `--database` applied)."""
        if self._settings is None:
            self._settings = read_settings(clickhouse_database=self.database)
        return self._settings

    def settings_for(self, database: str) -> Settings:
        """The settings with another ClickHouse database (a command's own --database)."""
        return self.settings.model_copy(update={"clickhouse_database": database})


# a command's first argument: the state the root group made (or a fresh one, for a
# command invoked on its own or added to another group)
pass_state = click.make_pass_decorator(CliState, ensure=True)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@contextlib.contextmanager
def broker_for(settings: Settings, quiet: bool = False) -> Iterator[Settings]:
    """The configured Kafka, or the embedded Tansu broker for the duration."""
    if not settings.embedded:
        yield settings
        return
    from streams.broker import MEMORY_ONLY_WARNING, BrokerError, EmbeddedBroker

    broker = EmbeddedBroker(
        settings.embedded_broker_host, settings.embedded_broker_port, settings.data_dir
    )
    try:
        broker.start()
    except BrokerError as exc:
        raise click.ClickException(str(exc)) from None
    if not quiet:
        click.echo(f"started {MEMORY_ONLY_WARNING} (listening on {broker.url})", err=True)
    try:
        yield settings
    finally:
        broker.stop()


def demo_hint(s: Settings) -> str:
    """Where `tally demo` left its data, when it did, as the command to read it."""
    try:
        doc = json.loads((Path(s.data_dir) / "demo" / "demo.json").read_text(encoding="utf-8"))
        name = str(doc["database"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    if name == s.clickhouse_database:
        return ""
    return f"; the demo's results are in database {name}: `tally --database {name} {_command()}`"


def _command() -> str:
    """The running subcommand's path below `tally`, e.g. "breaks suspense"."""
    names = []
    ctx = click.get_current_context(silent=True)
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(reversed(names)) or "breaks"


@contextlib.contextmanager
def db(s: Settings, migrate_first: bool = False) -> Iterator[Backend]:
    """A ClickHouse connection holding tally's schema (migrated first if asked);
    ClickHouse errors become click errors naming the server."""
    try:
        conn = connect(s)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        if migrate_first:
            from sinks.schema import migrate

            migrate(conn)
        else:
            from sinks.schema import schema_version

            if schema_version(conn) == 0:
                raise click.ClickException(
                    f"no tally schema in {conn.describe()}: run `tally db migrate` (or "
                    "`tally run`)" + demo_hint(s)
                )
        yield conn
    except ClickHouseError as exc:
        raise click.ClickException(f"{conn.describe()}: {exc}") from None
    finally:
        conn.close()


# ---------------------------------------------------------------------- output


def cell(v: Any) -> str:
    """A value as one table or CSV cell."""
    if v is None:
        return ""
    if isinstance(v, (list, dict)):
        return json.dumps(v, ensure_ascii=False, separators=(",", ":"))
    return str(v)


def emit(rows: list[dict[str, Any]], fmt: str, columns: list[str]) -> None:
    """Print rows as an aligned table, JSON (all fields) or CSV (the columns)."""
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False, default=str))
        return
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow([cell(r.get(c)) for c in columns])
        click.echo(buf.getvalue(), nl=False)
        return
    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    right = {i for i, c in enumerate(columns) if rows and _numeric(rows, c)}

    def line(values: list[str]) -> str:
        return "  ".join(
            v.rjust(w) if i in right else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ).rstrip()

    click.echo(line(columns))
    click.echo(line(["-" * w for w in widths]))
    for row in cells:
        click.echo(line(row))


def _numeric(rows: list[dict[str, Any]], col: str) -> bool:
    for r in rows:
        v = r.get(col)
        if v is None:
            continue
        if isinstance(v, int):
            continue
        if isinstance(v, str) and v.lstrip("-").replace(".", "", 1).isdigit():
            continue
        return False
    return True


def check_date(_ctx: Any, _param: Any, value: str | None) -> str | None:
    """A click callback: a business date like 2026-11-24, or none."""
    if value is None:
        return None
    try:
        date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date like 2026-11-24") from None
    return value
