"""`tally run`, `tally produce` and `tally simulate`: the stream workers, feeding the
broker, simulated traffic; `register(main)` adds them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from tally.cli.common import CliState, broker_for, pass_state, setup_logging
from tally.config import Settings

# ------------------------------------------------------------------------- run


@click.command()
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
@pass_state
def run(
    state: CliState, rate: float | None, until_idle: float | None, as_json: bool, sink: bool
) -> None:
    """Run the always-on stream workers (and the ClickHouse sink)."""
    s = state.settings
    setup_logging(s.log_level)
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


async def start_sink(s: Settings, restore: bool) -> Any:
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


async def stop_sink(sink: Any, drain: bool) -> dict[str, Any]:
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

    sink_runner = await start_sink(s, restore=True) if sink else None
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
            stored = await stop_sink(sink_runner, drain=True)
    summary = await summarize(tally, max(tally.stats.last_activity - t0, 1e-3))
    return summary, stored


# ---------------------------------------------------------------------- produce


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--topic",
    default=None,
    help="send every line (a JSON value) to this topic, keyed by its txn_id; without "
    'it every line is an envelope {"topic": ..., "key": ..., "value": {...}}',
)
@pass_state
def produce(state: CliState, file: Path, topic: str | None) -> None:
    """Feed a JSON-lines FILE to the broker."""
    from streams.produce import produce as send
    from tally.core.pipeline import Envelope

    s = state.settings
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


@click.command()
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
@pass_state
def simulate(
    state: CliState,
    events: int,
    seed: int,
    out: Path | None,
    rates: str | None,
    statements: Path | None,
    start: str | None,
) -> None:
    """Generate realistic traffic with every anomaly of domain.md injected."""
    from tally.sim.traffic import generate

    s = state.settings
    cfg = _sim_config(events, seed, rates, start, cny_only=statements is not None)
    if statements is not None:
        sim = _write_statements(s, cfg, statements, seed)
    else:
        sim = generate(cfg, s.policies())
    if out is not None:
        _write_events(sim, out)
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


def _sim_config(
    events: int, seed: int, rates: str | None, start: str | None, cny_only: bool
) -> Any:
    """The simulation's configuration from the options; with statements (cny_only) the
    traffic is in CNY only and without currency mismatches."""
    from tally.sim.traffic import SimConfig

    try:
        r = json.loads(rates) if rates else {}
        first = datetime.fromisoformat(start) if start else None
        if first is not None and first.tzinfo is None:
            raise ValueError("--start needs a UTC offset, e.g. +08:00")
        if cny_only:
            return SimConfig(
                events=events,
                seed=seed,
                rates={"currency_mismatch": 0, **r},
                currencies={"CNY": 1},
                start=first,
            )
        return SimConfig(events=events, seed=seed, rates=r, start=first)
    except (ValueError, TypeError) as exc:
        raise click.ClickException(f"--rates / --start: {exc}") from None


def _write_statements(s: Settings, cfg: Any, statements: Path, seed: int) -> Any:
    """Simulate the day with its statements, bank statements and payout files, write
    them under `statements`; the day's traffic."""
    from recon.funds.simfunds import simulate_funds
    from recon.simday import simulate_day
    from recon.statements import FORMATS

    day = simulate_day(cfg, s.policies())
    doc = day.write_files(statements, FORMATS)
    click.echo(
        f"wrote {len(day.statements)} statements in {len(doc['files'])} formats to "
        f"{statements} ({sum(day.counts.values()):,} injected statement anomalies, "
        f"expected classes in {statements / 'expected-recon.json'})"
        + "".join(f"; {f} skipped: {why}" for f, why in doc["skipped"].items())
    )
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
    return day.sim


def _write_events(sim: Any, out: Path) -> None:
    from tally.sim.traffic import write_jsonl

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


def register(main: click.Group) -> None:
    """Add `tally run`, `tally produce` and `tally simulate` to `tally`."""
    for cmd in (run, produce, simulate):
        main.add_command(cmd)
