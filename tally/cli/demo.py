"""`tally demo`: a newcomer's first run, one simulated business day end to end (or,
with --live, the real event-to-break latency); `register(main)` adds it."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from tally.cli.common import CliState, broker_for, pass_state, setup_logging
from tally.cli.stream import start_sink, stop_sink
from tally.config import Settings
from tally.core.breaks import BreakKind
from tally.core.money import format_minor

DEMO_MARKER = "tally_demo_marker"  # a table in the demo's database: the demo created it


@click.command()
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
@pass_state
def demo(
    state: CliState,
    events: int,
    seed: int,
    database: str,
    live: bool,
    rate: float,
    seconds: float,
    as_json: bool,
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
    s = state.settings_for(database)
    setup_logging(s.log_level)
    if logging.getLogger().level > logging.INFO:
        # the demo feeds its whole backlog at once: Faust's back-pressure warnings
        # ("producer buffer full", "Timer commit is overlapping") are expected here
        for name in ("faust.transport.producer", "mode.timers"):
            logging.getLogger(name).setLevel(logging.ERROR)
    if live:
        _demo_live(s, rate, seconds, seed, as_json)
        return
    out_dir = Path(s.data_dir) / "demo"
    summary, result, eod = _demo_day(s, events, seed, database, out_dir, as_json)
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


def _demo_day(
    s: Settings, events: int, seed: int, database: str, out_dir: Path, as_json: bool
) -> tuple[Any, dict[str, Any], Any]:
    """The day: simulate, stream, the next morning; the stream's summary, the demo's
    result (as --json prints it, also in out_dir/demo.json) and the end of day."""
    from recon.demo import CHANNEL_FORMATS
    from recon.simday import simulate_day
    from tally.sim.traffic import SimConfig, generate

    t0 = time.monotonic()
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
    result = _demo_result(summary, sim, found, day, stored, eod)
    result["data"] = {"clickhouse": stored["where"], "files": str(out_dir)}
    result["timing"] = {
        "wall_seconds": round(time.monotonic() - t0, 1),
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
    return summary, result, eod


def _demo_result(
    summary: Any, sim: Any, found: set[tuple[str, str]], day: Any, stored: Any, eod: Any
) -> dict[str, Any]:
    """The stream's summary with what was injected and found, and the end of day."""
    missed = sim.expected - found
    extra = found - sim.expected
    hit = len(found & sim.expected)
    result: dict[str, Any] = summary.to_json()
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
    return result


_KINDS = tuple(kind.value for kind in BreakKind)


def _claim_demo_dir(out_dir: Path) -> None:
    """Empty the demo's directory for a fresh run; refuse one the demo did not make."""
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

    sink = await start_sink(s, restore=False)
    tally = create_app(s)
    runner = WorkerRunner(tally)

    async def feed() -> None:
        await send(
            s.bootstrap_servers(), sim.envelopes, progress=progress, total=len(sim.envelopes)
        )

    try:
        summary = await runner.run_until_idle(3.0, during=feed)
    finally:
        stored = await stop_sink(sink, drain=True)
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
    """What the demo did, as a newcomer reads it: the stream, the next morning, where
    the data is and the commands to look further."""
    tm = r["timing"]
    lines = [
        *_story_stream(summary, r),
        "",
        "the next morning (end of day):",
        *_story_end_of_day(r["end_of_day"], eod),
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


def _story_stream(summary: Any, r: dict[str, Any]) -> list[str]:
    inj = r["injected"]
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
    return lines


def _story_end_of_day(e: dict[str, Any], eod: Any) -> list[str]:
    lines = []
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
    return lines


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


def register(main: click.Group) -> None:
    """Add `tally demo` to `tally`."""
    main.add_command(demo)
