"""Every figure of `tally bench stream` together, and their rendering for a terminal."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from streams.bench.common import (
    TIMING,
    _ratio,
    batch_max_events,
    batch_max_ms,
    fetch_max_wait_ms,
    machine_info,
    now_iso,
)
from streams.bench.single import (
    bench_bare_faust,
    bench_plain_latency,
    bench_tally,
    bench_tally_latency,
)
from streams.bench.workers import bench_workers
from tally.config import Settings
from tally.core.pipeline import Envelope

# ------------------------------------------------------------------ together


def _step(what: str, quiet: bool) -> Callable[[Awaitable[Any]], Any]:
    def run(coro: Awaitable[Any]) -> Any:
        if not quiet:
            print(f"... {what}", file=sys.stderr, flush=True)
        return asyncio.run(coro)  # type: ignore[arg-type]

    return run


def run_stream_bench(
    s: Settings,
    envelopes: list[Envelope],
    rate: float = 1000.0,
    latency_events: int = 20_000,
    workers: int = 1,
    quiet: bool = True,
    latency_envelopes: list[Envelope] | None = None,
) -> dict[str, Any]:
    """Every figure of `tally bench stream` as one JSON-ready dict. The broker of `s`
    must be running; every run gets its own topics and consumer group on it. The
    latency runs are fed `latency_envelopes` (default: the first `latency_events`
    of `envelopes`)."""
    source = envelopes if latency_envelopes is None else latency_envelopes
    latency_input = source[:latency_events]
    fwm = fetch_max_wait_ms(s)
    out: dict[str, Any] = {
        "date": now_iso(),
        "machine": machine_info(),
        "broker": s.bootstrap_servers(),
        "settings": {
            "partitions": s.partitions,
            "processing_guarantee": s.processing_guarantee,
            "batch_max_events": batch_max_events(s),
            "batch_max_ms": batch_max_ms(s),
            "consumer_fetch_max_wait_ms": fwm,
            # what tally's Faust consumer waits: the setting, or Faust's hard-coded 1,500
            "worker_fetch_max_wait_ms": fwm if hasattr(s, "consumer_fetch_max_wait_ms") else 1500,
        },
    }
    bare = _step(f"bare Faust agent, {len(envelopes):,} events", quiet)(
        bench_bare_faust(s, envelopes)
    )
    tally = _step(f"tally, {len(envelopes):,} events", quiet)(bench_tally(s, envelopes))
    out["throughput"] = {
        "events_fed": len(envelopes),
        "timing": TIMING,
        "bare_faust": bare,
        "tally": tally,
        "tally_vs_bare": _ratio(tally["events_per_second"], bare["events_per_second"]),
        "cpu_tally_vs_bare": _ratio(tally["cpu_us_per_event"], bare["cpu_us_per_event"]),
    }
    plain = _step(f"plain consumer at {rate:,.0f}/s, {len(latency_input):,} events", quiet)(
        bench_plain_latency(s, latency_input, rate, fwm)
    )
    tlat = _step(f"tally at {rate:,.0f}/s, {len(latency_input):,} events", quiet)(
        bench_tally_latency(s, latency_input, rate)
    )
    out["latency"] = {
        "offered_rate": rate,
        "events_fed": len(latency_input),
        "measured": "receive time (plain consumer) or break detection time (tally) minus "
        "the message's broker timestamp",
        "fetch_max_wait_ms": fwm,
        "plain_consumer": plain,
        "tally": tlat,
        "p99_tally_vs_plain": _ratio(tlat["p99_ms"], plain["p99_ms"]),
    }
    if workers > 1:
        one = _step(f"1 worker process, {len(envelopes):,} events", quiet)(
            bench_workers(s, envelopes, 1)
        )
        many = _step(f"{workers} worker processes, {len(envelopes):,} events", quiet)(
            bench_workers(s, envelopes, workers)
        )
        out["workers"] = {
            "one": one,
            "many": many,
            "speedup": _ratio(many["events_per_second"], one["events_per_second"]),
        }
    return out


def render(r: dict[str, Any]) -> str:
    """The figures for a terminal."""

    def f(x: Any, unit: str = "") -> str:
        if x is None:
            return "n/a"
        if unit == "x":
            return f"{x:,.0f}x" if x >= 100 else f"{x:.3g}x"
        return f"{x:,.1f}{unit}" if isinstance(x, float) else f"{x:,}{unit}"

    m, st, th = r["machine"], r["settings"], r["throughput"]
    b, t = th["bare_faust"], th["tally"]
    lines = [
        f"tally bench stream, {r['date']}: {m['cores']} cores {m['arch']}, {m['python']}, "
        f"faust-streaming {m['faust_streaming']}, aiokafka {m['aiokafka']}, "
        f"tally {m['tally_commit']}{' (modified tree)' if m['tally_tree_modified'] else ''}",
        f"broker {r['broker']} {r.get('broker_kind', '')}; {st['partitions']} partitions, "
        "batches of "
        f"{st['batch_max_events']} events / {st['batch_max_ms']:g} ms, "
        f"fetch_max_wait_ms {st['consumer_fetch_max_wait_ms']} (plain consumer), "
        f"{st['worker_fetch_max_wait_ms']} (workers)",
        "",
        f"throughput, {th['events_fed']:,} events, timed {th['timing']}:",
        f"  bare Faust agent  {f(b['events_per_second'], ' events/s'):>18}  "
        f"CPU {f(b['cpu_us_per_event'], ' µs/event')}",
        f"  tally             {f(t['events_per_second'], ' events/s'):>18}  "
        f"CPU {f(t['cpu_us_per_event'], ' µs/event')}",
        f"  tally / bare      {f(th['tally_vs_bare'], 'x')} events/s, "
        f"{f(th['cpu_tally_vs_bare'], 'x')} CPU per event",
        f"  tally produced per input event: {f(t['produced_messages_per_event'])} messages, "
        f"{f(t['produced_bytes_per_event'])} bytes: outputs and internal topics "
        f"{f(t['output_messages_per_event'])} messages, {f(t['output_bytes_per_event'])} "
        f"bytes; table changelogs {f(t['changelog_messages_per_event'])} messages, "
        f"{f(t['changelog_bytes_per_event'])} bytes ({t['produced_bytes_source']})",
        f"  tally: {t['events']:,} events consumed, start-up {t['startup_seconds']} s "
        f"(excluded), {t['breaks']:,} breaks, {t['dead_letters']:,} dead letters",
    ]
    lat = r["latency"]
    p, tl = lat["plain_consumer"], lat["tally"]
    lines += [
        "",
        f"latency at {lat['offered_rate']:,.0f} events/s offered, {lat['events_fed']:,} events "
        f"({lat['measured']}):",
        f"  plain aiokafka consumer  p50 {f(p['p50_ms'], ' ms')}  p99 {f(p['p99_ms'], ' ms')}"
        f"  ({p['samples']:,} messages, fed at {p['achieved_feed_rate']:,.0f}/s, "
        f"{'/'.join(p['timestamp_type'])})",
        f"  tally event->break       p50 {f(tl['p50_ms'], ' ms')}  p99 {f(tl['p99_ms'], ' ms')}"
        f"  ({tl['samples']:,} breaks, fed at {tl['achieved_feed_rate']:,.0f}/s, drained "
        f"{tl['drained_after_feed_seconds']} s after the feed)",
        f"  p99 tally / plain: {f(lat['p99_tally_vs_plain'], 'x')}",
    ]
    if "workers" in r:
        w = r["workers"]
        lines += [
            "",
            "worker processes (python -m tally run --no-sink, one consumer group):",
            f"  1 worker   {f(w['one']['events_per_second'], ' events/s')}  "
            f"CPU {f(w['one']['cpu_us_per_event'], ' µs/event')}",
            f"  {w['many']['workers']} workers  {f(w['many']['events_per_second'], ' events/s')}"
            f"  CPU {f(w['many']['cpu_us_per_event'], ' µs/event')}",
            f"  speed-up {f(w['speedup'], 'x')}",
        ]
    return "\n".join(lines)
