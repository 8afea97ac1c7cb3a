"""`tally bench`: benchmarks (figures, never pass/fail); the group and its `core`,
`stream` and `recon` commands. Other modules add theirs with `bench.add_command`.
"""

from __future__ import annotations

import json
from typing import Any

import click

from tally.cli.common import CliState, broker_for, pass_state, setup_logging


@click.group()
def bench() -> None:
    """Benchmarks (figures, never pass/fail: docs/benchmarks.md) and the reliability runs
    (chaos, outage, replay, soak, hostile: exit 1 on any difference; docs/reliability.md)."""


@bench.command("core")
@click.option("--events", type=int, default=200_000, show_default=True)
@click.option("--seed", type=int, default=11, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_state
def bench_core_cmd(state: CliState, events: int, seed: int, as_json: bool) -> None:
    """The pure domain core in memory: parse, merge, detect, post (no broker)."""
    from streams.bench import bench_core, machine
    from tally.sim.traffic import SimConfig, generate

    s = state.settings
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
@pass_state
def bench_stream_cmd(
    state: CliState,
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
    s = state.settings
    setup_logging(s.log_level)
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


@bench.command("recon")
@click.option(
    "--rows",
    type=click.IntRange(min=100),
    default=1_000_000,
    show_default=True,
    help="ledger items, and as many statement lines",
)
@click.option(
    "--database",
    default="tally_bench_recon",
    show_default=True,
    help="ClickHouse database to build the data in (dropped and re-created)",
)
@click.option("--no-pandas", is_flag=True, help="time tally's SQL only")
@click.option("--keep", is_flag=True, help="keep the database afterwards (default: drop it)")
@click.option("--json", "as_json", is_flag=True)
@pass_state
def bench_recon_cmd(
    state: CliState, rows: int, database: str, no_pandas: bool, keep: bool, as_json: bool
) -> None:
    """End-of-day reconciliation: N ledger items vs N statement lines generated in
    ClickHouse (chDB by default), tally's SQL next to a pandas merge of the same data."""
    from recon.bench import bench as run_bench
    from sinks.backend import ClickHouseError, connect

    if not no_pandas:
        try:
            import pandas  # noqa: F401
        except ImportError:
            raise click.ClickException(
                "pandas is not installed: pip install -e '.[bench]' (or use --no-pandas)"
            ) from None
    s = state.settings_for(database)
    db = connect(s)
    if db.database != database:
        raise click.ClickException(
            f"TALLY_CLICKHOUSE_URL names the database {db.database!r}; the benchmark drops "
            "its database, so give it a URL without one (it uses --database)"
        )
    if not as_json:
        click.echo(f"building {rows:,} + {rows:,} rows in {db.describe()} ...", err=True)
    try:
        r = run_bench(db, rows, s.policies()["bench"], pandas=not no_pandas)
        if not keep:
            db.execute("DROP DATABASE IF EXISTS {db}")
    except ClickHouseError as exc:
        raise click.ClickException(f"{db.describe()}: {exc}") from None
    finally:
        db.close()
    if as_json:
        click.echo(json.dumps(r.to_json(), indent=2))
    else:
        click.echo(
            f"built {rows:,} ledger items and {rows:,} statement lines in {r.build_seconds:.2f}s"
        )
        click.echo(
            f"with 1-cent amount and fee tolerances: {r.tolerance_seconds:.2f}s "
            f"({r.tolerance_seconds / r.sql_seconds:.2f}x exact-only), "
            f"matched {r.tolerance_counts.get('matched', 0):,}"
        )
        click.echo(f"tally recon run (ClickHouse SQL): {r.sql_seconds:.2f}s")
        if r.pandas_counts:
            click.echo(
                f"pandas: export {r.pandas_export_seconds:.2f}s + merge and classify "
                f"{r.pandas_merge_seconds:.2f}s = "
                f"{r.pandas_export_seconds + r.pandas_merge_seconds:.2f}s"
            )
        click.echo("classes: " + ", ".join(f"{k} {v:,}" for k, v in r.sql_counts.items()))
        click.echo("both agree with the generated mix" if r.agree else "DISAGREEMENT: see --json")
        click.echo(f"({r.machine})")
    if not r.agree:
        raise click.ClickException("the class counts differ from the generated mix")
