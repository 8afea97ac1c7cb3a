"""The `tally` command line. Every command has --help."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from tally.breaks import BreakKind
from tally.config import Settings


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
@click.version_option(package_name="tally")
def main() -> None:
    """tally: streaming real-time clearing and reconciliation for payment platforms.

    Settings come from TALLY_* environment variables and ./.env; `tally config`
    prints them. With TALLY_BROKER unset, commands that need a broker start the
    embedded Tansu broker (memory only).
    """


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
        from tally.simulate import live_stream

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
    from tally.pipeline import Envelope

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
    "currency mismatches, since Alipay, MT940 and camt.053 statements hold one currency",
)
def simulate(
    events: int, seed: int, out: Path | None, rates: str | None, statements: Path | None
) -> None:
    """Generate realistic traffic with every anomaly of domain.md injected."""
    from tally.simulate import SimConfig, generate, write_jsonl

    s = _settings()
    try:
        r = json.loads(rates) if rates else {}
        if statements is not None:
            cfg = SimConfig(
                events=events,
                seed=seed,
                rates={"currency_mismatch": 0, **r},
                currencies={"CNY": 1},
            )
        else:
            cfg = SimConfig(events=events, seed=seed, rates=r)
    except (ValueError, TypeError) as exc:
        raise click.ClickException(f"--rates: {exc}") from None
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


@main.command()
@click.option(
    "--events", type=int, default=100_000, show_default=True, help="simulated input messages"
)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option(
    "--database",
    default="tally_demo",
    show_default=True,
    help="ClickHouse database the demo stores its results in (emptied first, so that "
    "every demo starts afresh; your TALLY_CLICKHOUSE_DATABASE is left alone)",
)
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def demo(events: int, seed: int, database: str, as_json: bool) -> None:
    """A first run: embedded broker, workers, simulated traffic, results in
    ClickHouse (embedded chDB by default), a summary."""
    s = _settings(clickhouse_database=database)
    _logging(s.log_level)
    if logging.getLogger().level > logging.INFO:
        # the demo feeds its whole backlog at once: Faust's back-pressure warnings
        # ("producer buffer full", "Timer commit is overlapping") are expected here
        for name in ("faust.transport.producer", "mode.timers"):
            logging.getLogger(name).setLevel(logging.ERROR)
    from tally.simulate import SimConfig, generate

    if not as_json:
        click.echo(f"simulating {events:,} events (seed {seed}) ...", err=True)
    sim = generate(SimConfig(events=events, seed=seed), s.policies())
    with broker_for(s, quiet=as_json):
        summary, found, stored = asyncio.run(_demo(s, sim, progress=not as_json))
    missed = sim.expected - found
    extra = found - sim.expected
    result = summary.to_json()
    result["clickhouse"] = stored
    result["injected"] = {
        "expected_breaks": len(sim.expected),
        "found": len(found & sim.expected),
        "missed": len(missed),
        "unexpected": len(extra),
        "malformed": sim.malformed,
        "redeliveries": sim.duplicates,
    }
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(summary.render())
        click.echo(
            f"injected anomalies: {len(sim.expected):,} expected breaks, "
            f"{len(found & sim.expected):,} found, {len(missed):,} missed, "
            f"{len(extra):,} unexpected; {sim.malformed:,} malformed messages injected"
        )
        click.echo(_stored_line(stored))
        click.echo(
            f"look at them: TALLY_CLICKHOUSE_DATABASE={database} tally breaks --kind "
            "amount_mismatch   (also: tally balances, tally orders show TXN_ID)"
        )
    missing_kinds = [k for k in _KINDS if not summary.breaks_by_kind.get(k)]
    if missing_kinds or not summary.invariant_holds:
        raise click.ClickException(
            f"demo incomplete: no {', '.join(missing_kinds)} breaks"
            if missing_kinds
            else "double-entry invariant broken"
        )


_KINDS = tuple(kind.value for kind in BreakKind)


async def _demo(
    s: Settings, sim: Any, progress: bool
) -> tuple[Any, set[tuple[str, str]], dict[str, Any]]:
    from sinks.backend import ClickHouseError, connect
    from streams.app import create_app
    from streams.produce import produce as send
    from streams.worker import WorkerRunner, read_topic

    db = connect(s)
    try:
        if db.database != s.clickhouse_database:
            # a database in TALLY_CLICKHOUSE_URL wins over --database: never empty it
            raise click.ClickException(
                f"TALLY_CLICKHOUSE_URL names the database {db.database!r}; the demo empties "
                "its database, so give it a URL without one (it uses --database)"
            )
        db.execute("DROP DATABASE IF EXISTS {db}")
    except ClickHouseError as exc:
        raise click.ClickException(f"{db.describe()}: {exc}") from None
    finally:
        db.close()
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
    from tally.simulate import SimConfig, generate

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
    from tally.simulate import SimConfig, generate

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
COMMAND_MODULES: tuple[str, ...] = (
    "sinks.cli",
    "recon.cli",
    "recon.statements.cli",
    "dashboards.cli",
    "recon.settle_cli",
)


def _register_commands() -> None:
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(main)


_register_commands()


if __name__ == "__main__":  # pragma: no cover
    main()
