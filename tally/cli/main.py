"""The `tally` command line. Every command has --help."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from tally.cli import dashboards, recon, settle, statements, storage
from tally.cli.examples import add_examples
from tally.config import Settings
from tally.core.breaks import BreakKind


def _settings(**overrides: Any) -> Settings:
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        lines = [
            f"  TALLY_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        ]
        raise click.ClickException("invalid settings:\n" + "\n".join(lines)) from None


def _logging(level: str) -> None:
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--database",
    metavar="DB",
    default=None,
    help="ClickHouse database for this command, as TALLY_CLICKHOUSE_DATABASE=DB would "
    "(e.g. the demo's: tally --database tally_demo breaks)",
)
@click.version_option(package_name="tally")
@click.pass_context
def main(ctx: click.Context, database: str | None) -> None:
    """tally: streaming real-time clearing and reconciliation for payment platforms.

    Settings come from TALLY_* environment variables and ./.env; `tally config`
    prints them. With TALLY_BROKER unset, commands that need a broker start the
    embedded Tansu broker (memory only).
    """
    if database is not None:
        # every command reads its settings from the environment: set it for this
        # command only (and put it back, for callers that invoke several commands)
        name = "TALLY_CLICKHOUSE_DATABASE"
        before = os.environ.get(name)
        os.environ[name] = database

        def restore() -> None:
            if before is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = before

        ctx.call_on_close(restore)


# ------------------------------------------------------------------------ config


@main.command()
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def config(as_json: bool) -> None:
    """Print the effective settings (secrets masked)."""
    s = _settings()
    values = s.masked()
    if as_json:
        click.echo(json.dumps(values, indent=2, default=str))
        return
    fields = Settings.model_fields
    for name, value in values.items():
        desc = fields[name].description or ""
        shown = json.dumps(value, default=str) if not isinstance(value, str) else value
        click.echo(f"TALLY_{name.upper():<32}{shown}")
        if desc:
            click.echo(f"{'':<38}# {desc}")


# ------------------------------------------------------------------------- run


@main.command()
@click.option(
    "--simulate",
    "rate",
    type=float,
    default=None,
    metavar="RATE",
    help="also feed simulated traffic at RATE events/s (event time follows the wall clock)",
)
@click.option(
    "--until-idle",
    type=float,
    default=None,
    metavar="SECONDS",
    help="exit once every input topic is drained and quiet for SECONDS; print a summary",
)
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
@click.option(
    "--sink/--no-sink",
    default=True,
    show_default=True,
    help="restore state from ClickHouse before starting and store every result there "
    "(--no-sink: the workers only; run `tally sink` elsewhere)",
)
def run(rate: float | None, until_idle: float | None, as_json: bool, sink: bool) -> None:
    """Run the always-on stream workers (and the ClickHouse sink)."""
    s = _settings()
    _logging(s.log_level)
    if rate and until_idle is not None:
        raise click.ClickException(
            "--until-idle waits for the input to run dry, which --simulate never does; "
            "use one or the other (stop a simulated run with Ctrl-C)"
        )
    with broker_for(s, quiet=as_json):
        summary, stored = asyncio.run(_run(s, rate, until_idle, sink=sink))
    if as_json:
        click.echo(json.dumps({**summary.to_json(), "clickhouse": stored}, indent=2))
    else:
        click.echo(summary.render())
        if stored is not None:
            click.echo(_stored_line(stored))


def _stored_line(stored: dict[str, Any]) -> str:
    rows = stored["rows"]
    shown = ", ".join(f"{n:,} {t}" for t, n in rows.items() if n) or "nothing new"
    return f"rows written to {stored['where']}: {shown}"


async def _start_sink(s: Settings, restore: bool) -> Any:
    """Restore the tables from ClickHouse (a fresh broker holds nothing) and start
    the sink; failures name ClickHouse and what to do."""
    from sinks.backend import ClickHouseError
    from sinks.restore import RestoreError, restore_from_clickhouse
    from sinks.runner import SinkRunner

    try:
        if restore:
            report = await restore_from_clickhouse(s)
            click.echo(report.render(), err=True)
        sink = SinkRunner(s)
        await sink.start()
    except (ClickHouseError, RestoreError) as exc:
        raise click.ClickException(
            f"ClickHouse: {exc} (fix TALLY_CLICKHOUSE_URL, or run with --no-sink)"
        ) from None
    except ValueError as exc:  # a malformed TALLY_CLICKHOUSE_URL
        raise click.ClickException(str(exc)) from None
    return sink


async def _stop_sink(sink: Any, drain: bool) -> dict[str, Any]:
    """Store what the workers produced (up to a minute), then stop the sink."""
    try:
        if drain:
            await sink.wait_caught_up(60)
    except TimeoutError as exc:
        click.echo(f"warning: {exc}; the rest stays on the broker for the next run", err=True)
    finally:
        await sink.stop()
    return {"where": sink.db.describe(), **sink.stats.to_json()}


async def _run(
    s: Settings, rate: float | None, until_idle: float | None, sink: bool = True
) -> tuple[Any, dict[str, Any] | None]:
    from streams.app import create_app
    from streams.worker import WorkerRunner, summarize

    sink_runner = await _start_sink(s, restore=True) if sink else None
    tally = create_app(s)
    runner = WorkerRunner(tally)
    try:
        await runner.start()
    except BaseException:
        if sink_runner is not None:
            await sink_runner.stop()
        raise
    t0 = time.monotonic()
    click.echo(
        f"tally workers running on {s.broker_url()} ({s.partitions} partitions)"
        + (f", storing results in {sink_runner.db.describe()}" if sink_runner else "")
        + "; "
        + ("waiting for the input to drain" if until_idle is not None else "Ctrl-C to stop"),
        err=True,
    )
    feeder: asyncio.Task[Any] | None = None
    if rate:
        from streams.produce import produce
        from tally.sim.traffic import live_stream

        feeder = asyncio.ensure_future(
            produce(s.bootstrap_servers(), live_stream(rate, s.policies()), rate=rate)
        )
    stored: dict[str, Any] | None = None
    try:
        if until_idle is not None:
            await runner.wait_idle(until_idle)
        else:
            await runner.wait_stopped(feeder)
    finally:
        if feeder is not None:
            feeder.cancel()
            with contextlib.suppress(BaseException):
                await feeder
        await runner.stop()
        if sink_runner is not None:
            stored = await _stop_sink(sink_runner, drain=True)
    summary = await summarize(tally, max(tally.stats.last_activity - t0, 1e-3))
    return summary, stored


# ---------------------------------------------------------------------- produce


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--topic",
    default=None,
    help="send every line (a JSON value) to this topic, keyed by its txn_id; without "
    'it every line is an envelope {"topic": ..., "key": ..., "value": {...}}',
)
def produce(file: Path, topic: str | None) -> None:
    """Feed a JSON-lines FILE to the broker."""
    from streams.produce import produce as send
    from tally.core.pipeline import Envelope

    s = _settings()
    envelopes: list[Envelope] = []
    with open(file, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            if topic is None:
                try:
                    envelopes.append(Envelope.from_line(line, lineno))
                except ValueError as exc:
                    raise click.ClickException(f"{file}: {exc}") from None
            else:
                try:
                    value = json.loads(line)
                    key = value.get("txn_id") if isinstance(value, dict) else None
                    envelopes.append(Envelope(topic, key, value))
                except ValueError:
                    # a bad line is still sent: the worker dead-letters it with a reason
                    envelopes.append(Envelope(topic, None, line.rstrip("\n")))
    if s.embedded:
        from streams.broker import port_open

        if not port_open(s.embedded_broker_host, s.embedded_broker_port):
            raise click.ClickException(
                f"no broker at {s.broker_url()}: start `tally run` first (it starts the "
                "embedded broker) or set TALLY_BROKER"
            )
    n = asyncio.run(
        send(s.bootstrap_servers(), envelopes, progress=sys.stderr.isatty(), total=len(envelopes))
    )
    click.echo(f"sent {n:,} messages to {s.broker_url()}")


# --------------------------------------------------------------------- simulate


@main.command()
@click.option(
    "--events", type=int, default=100_000, show_default=True, help="number of input messages"
)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="write JSON lines (events.jsonl, expected-breaks.json) here instead of "
    "sending to the broker",
)
@click.option(
    "--rates",
    default=None,
    metavar="JSON",
    help='anomaly rates as JSON, e.g. {"amount_mismatch": 0.01}',
)
@click.option(
    "--statements",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="also write each channel's statement files for each business day, in every "
    "format (DIR/<format>/<channel>-<date>.*), with injected statement anomalies and "
    "the answer (DIR/expected-recon.json); the traffic is then in CNY only and without "
    "currency mismatches, since Alipay, MT940 and camt.053 statements hold one currency; "
    "and the platform's bank statements (DIR/bank/, MT940 and camt.053) and payout files "
    "(DIR/payouts/) with injected settlement and payout anomalies (DIR/expected-funds.json)",
)
@click.option(
    "--start",
    default=None,
    metavar="RFC3339",
    help="the first event's time, e.g. 2026-11-27T23:50:00+08:00 (a Friday: the "
    "settlements roll over the weekend); default: late yesterday",
)
def simulate(
    events: int,
    seed: int,
    out: Path | None,
    rates: str | None,
    statements: Path | None,
    start: str | None,
) -> None:
    """Generate realistic traffic with every anomaly of domain.md injected."""
    from tally.sim.traffic import SimConfig, generate, write_jsonl

    s = _settings()
    try:
        r = json.loads(rates) if rates else {}
        first = datetime.fromisoformat(start) if start else None
        if first is not None and first.tzinfo is None:
            raise ValueError("--start needs a UTC offset, e.g. +08:00")
        if statements is not None:
            cfg = SimConfig(
                events=events,
                seed=seed,
                rates={"currency_mismatch": 0, **r},
                currencies={"CNY": 1},
                start=first,
            )
        else:
            cfg = SimConfig(events=events, seed=seed, rates=r, start=first)
    except (ValueError, TypeError) as exc:
        raise click.ClickException(f"--rates / --start: {exc}") from None
    if statements is not None:
        from recon.simday import simulate_day
        from recon.statements import FORMATS

        day = simulate_day(cfg, s.policies())
        sim = day.sim
        doc = day.write_files(statements, FORMATS)
        click.echo(
            f"wrote {len(day.statements)} statements in {len(doc['files'])} formats to "
            f"{statements} ({sum(day.counts.values()):,} injected statement anomalies, "
            f"expected classes in {statements / 'expected-recon.json'})"
            + "".join(f"; {f} skipped: {why}" for f, why in doc["skipped"].items())
        )
        from recon.funds.simfunds import simulate_funds

        try:
            funds = simulate_funds(day, seed=seed).write_files(statements)
        except ValueError as exc:
            raise click.ClickException(f"the bank statements: {exc}") from None
        click.echo(
            f"wrote {len(funds['files']['mt940'])} bank statements (MT940 and camt.053, "
            f"account {funds['account']}) and {len(funds['files']['payouts'])} payout "
            f"files to {statements} (injected: "
            + ", ".join(sorted(set(funds["injected"].values())))
            + "".join(f"; {a} not injected: {why}" for a, why in funds["skipped"].items())
            + f"; expected classes in {statements / 'expected-funds.json'})"
        )
    else:
        sim = generate(cfg, s.policies())
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_jsonl(sim, out / "events.jsonl")
        (out / "expected-breaks.json").write_text(
            json.dumps(sorted(sim.expected), indent=1) + "\n", encoding="utf-8"
        )
        click.echo(
            f"wrote {len(sim.envelopes):,} messages to {out / 'events.jsonl'} "
            f"({len(sim.expected):,} expected breaks, {sim.malformed:,} malformed, "
            f"{sim.duplicates:,} re-deliveries)"
        )
        return
    from streams.broker import port_open
    from streams.produce import produce as send

    if s.embedded and not port_open(s.embedded_broker_host, s.embedded_broker_port):
        raise click.ClickException(
            f"no broker at {s.broker_url()}: start `tally run` first, set TALLY_BROKER, "
            "or use --out DIR"
        )
    n = asyncio.run(
        send(
            s.bootstrap_servers(),
            sim.envelopes,
            progress=sys.stderr.isatty(),
            total=len(sim.envelopes),
        )
    )
    click.echo(f"sent {n:,} messages to {s.broker_url()}")


# ------------------------------------------------------------------------- demo


DEMO_MARKER = "tally_demo_marker"  # a table in the demo's database: the demo created it


@main.command()
@click.option(
    "--events", type=int, default=100_000, show_default=True, help="simulated input messages"
)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option(
    "--database",
    default="tally_demo",
    show_default=True,
    help="ClickHouse database the demo creates for itself (dropped and created afresh on "
    "every run; refused if it exists and the demo did not create it); your "
    "TALLY_CLICKHOUSE_DATABASE is left alone",
)
@click.option(
    "--live",
    is_flag=True,
    help="instead of the day: feed simulated traffic at a steady --rate for --seconds to a "
    "running worker and report the real event-to-break latency (stores nothing)",
)
@click.option(
    "--rate", type=float, default=500.0, show_default=True, help="--live: events per second"
)
@click.option(
    "--seconds", type=float, default=20.0, show_default=True, help="--live: how long to feed"
)
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def demo(
    events: int, seed: int, database: str, live: bool, rate: float, seconds: float, as_json: bool
) -> None:
    """A newcomer's first run: one simulated business day, end to end.

    The stream: the embedded broker, the workers and the ClickHouse sink over
    --events simulated messages with every real-time anomaly of the product brief
    injected. Then the next morning: each channel's statement in its own format
    (WeChat Pay, Alipay GBK, MT940, camt.053; CSV where a format cannot hold the day)
    with injected statement anomalies, loaded and reconciled, breaks parked in
    suspense, a few written off, the merchant settlement and the morning report
    (an HTML file under TALLY_DATA_DIR/demo). It prints what was injected, what was
    found (precision and recall), where the data is, and commands to look further
    that work as printed from the same directory."""
    s = _settings(clickhouse_database=database)
    _logging(s.log_level)
    if logging.getLogger().level > logging.INFO:
        # the demo feeds its whole backlog at once: Faust's back-pressure warnings
        # ("producer buffer full", "Timer commit is overlapping") are expected here
        for name in ("faust.transport.producer", "mode.timers"):
            logging.getLogger(name).setLevel(logging.ERROR)
    if live:
        _demo_live(s, rate, seconds, seed, as_json)
        return
    from recon.demo import CHANNEL_FORMATS
    from recon.simday import simulate_day
    from tally.sim.traffic import SimConfig, generate

    t0 = time.monotonic()
    out_dir = Path(s.data_dir) / "demo"
    _claim_demo_dir(out_dir)
    _claim_demo_database(s)
    if not as_json:
        click.echo(f"simulating {events:,} events (seed {seed}) and their statements ...", err=True)
    # CNY orders: Alipay's bill, MT940 and camt.053 hold one currency; a currency
    # mismatch (a witness in another currency, on the statement too) on WeChat only
    cfg = SimConfig(
        events=events,
        seed=seed,
        channels=list(CHANNEL_FORMATS),
        currencies={"CNY": 1},
        currency_mismatch_channels=["wechat"],
    )
    sim = generate(cfg, s.policies())
    day = simulate_day(cfg, s.policies(), sim=sim)
    t_sim = time.monotonic() - t0
    with broker_for(s, quiet=as_json):
        summary, found, stored = asyncio.run(_demo(s, sim, progress=not as_json))
    t_stream = time.monotonic() - t0 - t_sim
    if not as_json:
        click.echo(
            "the next morning: statements, reconciliation, suspense, settlement ...", err=True
        )
    eod = _demo_end_of_day(s, day, out_dir)
    wall = time.monotonic() - t0
    missed = sim.expected - found
    extra = found - sim.expected
    hit = len(found & sim.expected)
    result = summary.to_json()
    result["latency_measures"] = "backlog drain (every event fed at once), not live latency"
    result["clickhouse"] = stored
    result["injected"] = {
        "expected_breaks": len(sim.expected),
        "found": hit,
        "missed": len(missed),
        "unexpected": len(extra),
        "precision": round(hit / len(found), 4) if found else 1.0,
        "recall": round(hit / len(sim.expected), 4) if sim.expected else 1.0,
        "malformed": sim.malformed,
        "redeliveries": sim.duplicates,
        "statement_anomalies": day.counts,
    }
    result["end_of_day"] = eod.to_json()
    result["data"] = {"clickhouse": stored["where"], "files": str(out_dir)}
    result["timing"] = {
        "wall_seconds": round(wall, 1),
        "simulate_seconds": round(t_sim, 1),
        "stream_seconds": round(t_stream, 1),
        "end_of_day_seconds": round(eod.seconds, 1),
        "target": "<= 60 s for 100,000 events on the benchmark machine",
    }
    result["next_commands"] = _next_commands(database, eod)
    (out_dir / "demo.json").write_text(
        json.dumps(
            {
                "database": database,
                "where": stored["where"],
                "next_commands": result["next_commands"],
            },
            indent=1,
        )
        + "\n",
        encoding="utf-8",
    )
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
    else:
        click.echo(_demo_story(summary, result, eod, out_dir))
    missing_kinds = [k for k in _KINDS if not summary.breaks_by_kind.get(k)]
    if missing_kinds or not summary.invariant_holds:
        raise click.ClickException(
            f"demo incomplete: no {', '.join(missing_kinds)} breaks"
            if missing_kinds
            else "double-entry invariant broken"
        )


_KINDS = tuple(kind.value for kind in BreakKind)


def _claim_demo_dir(out_dir: Path) -> None:
    """Empty the demo's directory for a fresh run; refuse one the demo did not make."""
    import shutil

    if out_dir.exists():
        if any(out_dir.iterdir()) and not (out_dir / "demo.json").exists():
            raise click.ClickException(
                f"{out_dir} exists and was not written by `tally demo` (no demo.json): "
                "move it away or set TALLY_DATA_DIR to another directory"
            )
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    # marks the directory as the demo's from the start (a run stopped half-way too);
    # rewritten with the next commands at the end
    (out_dir / "demo.json").write_text("{}\n", encoding="utf-8")


def _claim_demo_database(s: Settings) -> None:
    """Drop the demo's database from a previous demo and create it afresh, with a
    marker table; refuse a database that exists without the marker (not ours), and
    one named in TALLY_CLICKHOUSE_URL (it wins over --database)."""
    from sinks.backend import ClickHouseError, connect

    db = connect(s)
    try:
        if db.database != s.clickhouse_database:
            raise click.ClickException(
                f"TALLY_CLICKHOUSE_URL names the database {db.database!r}; the demo creates "
                "its own database, so give it a URL without one (it uses --database)"
            )
        _claim(db)
    except ClickHouseError as exc:
        raise click.ClickException(f"{db.describe()}: {exc}") from None
    finally:
        db.close()


def _claim(db: Any) -> None:
    n = db.query("SELECT count() AS n FROM system.databases WHERE name = %(d)s", {"d": db.database})
    if int(n[0]["n"]):
        ours = db.query(
            "SELECT count() AS n FROM system.tables WHERE database = %(d)s AND name = %(t)s",
            {"d": db.database, "t": DEMO_MARKER},
        )
        if not int(ours[0]["n"]):
            raise click.ClickException(
                f"{db.describe()} exists and was not created by `tally demo`: the demo "
                "never writes into a database it did not create; give it another --database"
            )
        db.execute("DROP DATABASE IF EXISTS {db}")
    db.execute("CREATE DATABASE {db}")
    db.execute(f"CREATE TABLE {{db}}.{DEMO_MARKER} (created_at_ms UInt64) ENGINE = TinyLog")
    db.insert(DEMO_MARKER, ["created_at_ms"], [(int(time.time() * 1000),)])


async def _demo(
    s: Settings, sim: Any, progress: bool
) -> tuple[Any, set[tuple[str, str]], dict[str, Any]]:
    from streams.app import create_app
    from streams.produce import produce as send
    from streams.worker import WorkerRunner, read_topic

    sink = await _start_sink(s, restore=False)
    tally = create_app(s)
    runner = WorkerRunner(tally)

    async def feed() -> None:
        await send(
            s.bootstrap_servers(), sim.envelopes, progress=progress, total=len(sim.envelopes)
        )

    try:
        summary = await runner.run_until_idle(3.0, during=feed)
    finally:
        stored = await _stop_sink(sink, drain=True)
    found = {
        (b["kind"], b["txn_id"]) for b in await read_topic(s.bootstrap_servers(), s.topic_breaks)
    }
    return summary, found, stored


def _demo_end_of_day(s: Settings, day: Any, out_dir: Path) -> Any:
    from recon.demo import end_of_day
    from sinks.backend import ClickHouseError, connect

    db = connect(s)
    try:
        return end_of_day(db, s, day, out_dir)
    except ClickHouseError as exc:
        raise click.ClickException(f"{db.describe()}: {exc}") from None
    finally:
        db.close()


def _tally_command() -> str:
    """How this process was started: `python3 -m tally` or the `tally` script."""
    return "python3 -m tally" if Path(sys.argv[0]).name == "__main__.py" else "tally"


def _next_commands(database: str, eod: Any) -> list[str]:
    """Commands to look further, exactly as they work from the same directory."""
    t = f"{_tally_command()} --database {database}"
    day = max(eod.reports) if eod.reports else ""
    short = next((x for x in sorted(eod.found) if x[3] == "short" and x[1] == day), None)
    out = [f"{t} breaks --kind duplicate_success"]
    dup = next((w for w in eod.written_off if w["kind"] == "duplicate_success"), None)
    if dup:
        out.append(f"{t} orders show {dup['txn_id']}")
        out.append(f"{t} breaks history {dup['entry_id']}")
    if short:
        out.append(f"{t} recon results --date {day} --channel {short[0]} --class short")
    out.append(f"{t} breaks suspense --channel wechat")
    if day:
        out.append(f"{t} settle --date {day}")
    return out[:6]


def _demo_story(summary: Any, r: dict[str, Any], eod: Any, out_dir: Path) -> str:
    from dataclasses import replace

    from tally.core.money import format_minor

    inj, e, tm = r["injected"], r["end_of_day"], r["timing"]
    lines = [
        f"tally demo: one simulated business day, {r['events']:,} events, end to end",
        "",
        "injected: "
        f"{inj['expected_breaks']:,} real-time anomalies (every break kind of the brief), "
        f"{inj['malformed']:,} malformed messages, {inj['redeliveries']:,} re-deliveries; "
        "in the statements: "
        + ", ".join(f"{n:,} {k.replace('_', ' ')}" for k, n in inj["statement_anomalies"].items()),
        "",
        "the stream (real time):",
        replace(summary, latency_ms={}).render(),
    ]
    lat = summary.latency_ms
    if lat:
        lines.append(
            f"event-to-break times p50 {lat['p50'] / 1000:,.1f} s, p99 {lat['p99'] / 1000:,.1f} s: "
            "every event was fed at once, so this is how long events waited in the backlog "
            "(backlog drain), not live latency; `tally demo --live` measures that"
        )
    lines.append(
        f"found {inj['found']:,} of {inj['expected_breaks']:,} injected breaks "
        f"(precision {inj['precision']:.3f}, recall {inj['recall']:.3f}; "
        f"{inj['missed']:,} missed, {inj['unexpected']:,} unexpected)"
    )
    lines += ["", "the next morning (end of day):"]
    for st in e["statements"]:
        note = (
            f"  (not {st['fallback'].split(':')[0]}: {st['fallback'].split(': ', 1)[1]})"
            if st["fallback"]
            else ""
        )
        lines.append(
            f"  statement {st['channel']:<9}{st['business_date']}  {st['format']:<8}"
            f"{st['lines']:>7,} lines{note}"
        )
    lines.append(
        "  reconciled: "
        + ", ".join(f"{n:,} {c}" for c, n in sorted(e["classes"].items(), key=lambda x: -x[1]))
    )
    lines.append(
        f"  against the injected statement anomalies and real-time ones: "
        f"precision {e['precision']:.3f}, recall {e['recall']:.3f} "
        f"({e['found_not_matched']:,} items not matched, {e['expected_not_matched']:,} expected)"
    )
    lines.append(
        f"  suspense: {e['suspense_open']:,} open entries; written off: "
        + (
            ", ".join(f"{w['kind']} {w['txn_id']} ({w['action']})" for w in e["written_off"])
            or "none"
        )
    )
    for d, st in eod.settlements.items():
        tot = "; ".join(
            f"{t.currency} net {format_minor(t.net, t.currency)}, "
            f"payable {format_minor(t.payable, t.currency)} ({t.held_items:,} payments held back)"
            for t in st.totals
        )
        agree = (
            "agrees with the stream's postings"
            if not st.disagreements
            else f"DISAGREES with the stream's postings ({len(st.disagreements)})"
        )
        lines.append(f"  settlement {d}: {len(st.merchants):,} merchant lines, {tot}; {agree}")
    lines.append(
        "  morning report: "
        + ", ".join(str(p) for p in eod.reports.values())
        + "  (open in a browser)"
    )
    lines += [
        "",
        f"data: {r['data']['clickhouse']}; files under {out_dir}",
        f"time: {tm['wall_seconds']:.1f} s wall for {r['events']:,} events (simulate "
        f"{tm['simulate_seconds']:.1f} s, stream {tm['stream_seconds']:.1f} s, end of day "
        f"{tm['end_of_day_seconds']:.1f} s); target <= 60 s for 100,000 events",
        "",
        "next, from this directory:",
    ]
    lines += [f"  $ {c}" for c in r["next_commands"]]
    return "\n".join(lines)


def _demo_live(s: Settings, rate: float, seconds: float, seed: int, as_json: bool) -> None:
    from streams.bench import bench_tally_latency
    from tally.sim.traffic import SimConfig, generate

    if rate <= 0 or seconds <= 0:
        raise click.BadParameter("--rate and --seconds must be positive")
    n = max(1, int(rate * seconds))
    sim = generate(SimConfig(events=n, seed=seed), s.policies())
    if not as_json:
        click.echo(
            f"feeding {len(sim.envelopes):,} events at {rate:,.0f}/s for ~{seconds:.0f} s to a "
            "running worker (fresh topics, nothing stored) ...",
            err=True,
        )
    with broker_for(s, quiet=as_json):
        r = asyncio.run(bench_tally_latency(s, sim.envelopes, rate))
    r["measures"] = (
        "live event-to-break latency: from the broker timestamp of the message that "
        "revealed a break to the break's batch committed (outputs and state acknowledged)"
    )
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    click.echo(
        f"fed {r['events']:,} events at {r['achieved_feed_rate']:,.0f}/s (asked {rate:,.0f}/s); "
        f"drained {r['drained_after_feed_seconds']:.2f} s after the last one"
    )
    if r["samples"]:
        click.echo(
            f"live event-to-break latency over {r['samples']:,} breaks: p50 {r['p50_ms']:,.0f} ms, "
            f"p99 {r['p99_ms']:,.0f} ms (broker timestamp of the revealing message to the "
            "break committed; people notice >= 500 ms)"
        )
    else:
        click.echo("no break was detected: feed longer (--seconds) to measure latency")


# ------------------------------------------------------------------------ bench


@main.group()
def bench() -> None:
    """Benchmarks (figures, never pass/fail): see docs/benchmarks.md."""


@bench.command("core")
@click.option("--events", type=int, default=200_000, show_default=True)
@click.option("--seed", type=int, default=11, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def bench_core_cmd(events: int, seed: int, as_json: bool) -> None:
    """The pure domain core in memory: parse, merge, detect, post (no broker)."""
    from streams.bench import bench_core, machine
    from tally.sim.traffic import SimConfig, generate

    s = _settings()
    sim = generate(SimConfig(events=events, seed=seed), s.policies())
    r = bench_core(sim.envelopes, s.partitions)
    _print_bench([r], as_json)
    if not as_json:
        click.echo(f"({machine()})")


@bench.command("stream")
@click.option(
    "--events",
    type=int,
    default=100_000,
    show_default=True,
    help="events for the throughput runs (bare Faust agent, tally)",
)
@click.option(
    "--rate",
    type=float,
    default=1000.0,
    show_default=True,
    help="offered events/s for the latency runs (tally, plain aiokafka consumer)",
)
@click.option(
    "--latency-events",
    type=int,
    default=20_000,
    show_default=True,
    help="events fed at --rate for each latency run",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 16),
    default=1,
    show_default=True,
    help="N > 1: also one vs N `tally run --no-sink` processes in one consumer group",
)
@click.option(
    "--quick",
    is_flag=True,
    help="a smoke run: 5,000 events, 2,000 for latency (overrides --events/--latency-events)",
)
@click.option("--seed", type=int, default=11, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print every figure as one JSON object")
def bench_stream_cmd(
    events: int,
    rate: float,
    latency_events: int,
    workers: int,
    quick: bool,
    seed: int,
    as_json: bool,
) -> None:
    """tally's stream workers next to their ceilings, on one broker, back to back:
    a bare Faust agent vs tally with every check on (events/s, CPU and output per
    event), then event-to-break latency at a fixed rate vs a plain aiokafka consumer's
    receive latency. Throughput is timed from the first consumed input message to the
    last (start-up excluded). The broker is TALLY_BROKER, or the embedded one on
    TALLY_EMBEDDED_BROKER_PORT."""
    from streams.bench import render, run_stream_bench
    from tally.sim.traffic import SimConfig, generate

    if quick:
        events, latency_events = 5_000, 2_000
    s = _settings()
    _logging(s.log_level)
    sim = generate(SimConfig(events=max(events, latency_events), seed=seed), s.policies())
    envelopes = sim.envelopes
    with broker_for(s, quiet=as_json):
        figures = run_stream_bench(
            s,
            envelopes[:events],
            rate=rate,
            latency_events=latency_events,
            workers=workers,
            quiet=as_json,
            latency_envelopes=envelopes[:latency_events],
        )
    figures["broker_kind"] = "embedded Tansu (memory)" if s.embedded else "TALLY_BROKER"
    if as_json:
        click.echo(json.dumps(figures, indent=2))
    else:
        click.echo(render(figures))


def _print_bench(results: list[Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps([r.to_json() for r in results], indent=2))
        return
    for r in results:
        d = r.to_json()
        click.echo(
            f"{d.pop('name')}: {d.pop('events'):,} events in {d.pop('seconds')}s = "
            f"{d.pop('events_per_second'):,.0f} events/s"
        )
        for k, v in d.items():
            click.echo(f"  {k}: {v}")


# ------------------------------------------------------------- other commands

# Commands that live with their part of tally (ClickHouse, end-of-day reconciliation,
# dashboards, ...): each module has `register(main)`, which adds its commands.
for _commands in (storage, recon, statements, dashboards, settle):
    _commands.register(main)
add_examples(main)  # every command's --help ends with examples (tally/cli/examples.py)


if __name__ == "__main__":  # pragma: no cover
    main()
