"""`tally bench outage`, `tally bench replay`, `tally bench soak`: the reliability runs
of tally.chaos (outages, replay from offset 0, a long soak), one command each; they
print one line of figures and exit non-zero when the run found a difference (or, for
the soak, when memory, lag or latency did not stay flat). See docs/reliability.md.

`register(bench)` adds them to the `tally bench` group.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from tally.cli.common import CliState, broker_for, pass_state, setup_logging

if TYPE_CHECKING:
    from tally.chaos.soak import Sample


@click.command("soak")
@click.option("--minutes", type=float, default=30.0, show_default=True, help="how long to feed")
@click.option(
    "--rate",
    type=float,
    default=None,
    help="events/s (default: half of one worker's capacity, measured first with 20,000 events)",
)
@click.option("--interval", type=float, default=5.0, show_default=True, help="seconds per sample")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="where soak.csv and soak.svg go (default: TALLY_DATA_DIR/soak)",
)
@click.option("--json", "as_json", is_flag=True, help="every sample and the verdict as JSON")
@pass_state
def soak_cmd(
    state: CliState,
    minutes: float,
    rate: float | None,
    interval: float,
    out: Path | None,
    as_json: bool,
) -> None:
    """Feed a worker and the sink at a steady rate for --minutes; sample RSS (worker,
    sink), lags and event-to-break latency every --interval s; exit 1 unless flat."""
    from tally.chaos.soak import measure_capacity, soak, table

    s = state.settings
    setup_logging(s.log_level)
    out = out or Path(s.data_dir) / "soak"
    with broker_for(s, quiet=as_json) as s:
        capacity = None
        if rate is None:
            capacity = asyncio.run(measure_capacity(s))
            rate = round(capacity / 2, 1)
            click.echo(
                f"one worker's capacity: {capacity:,.0f} events/s; soak at {rate:,.0f}/s", err=True
            )
        click.echo(
            f"soaking {minutes:g} min at {rate:,.0f} events/s; samples every {interval:g} s",
            err=True,
        )
        samples, verdict = asyncio.run(soak(s, minutes * 60, rate, out, interval))
    (out / "soak.svg").write_text(chart(samples, rate), encoding="utf-8")
    figures: dict[str, Any] = {
        "rate": rate,
        "capacity": capacity,
        "minutes": minutes,
        "flat": verdict.flat,
        "problems": verdict.problems,
        **verdict.figures,
        "csv": str(out / "soak.csv"),
        "svg": str(out / "soak.svg"),
    }
    if as_json:
        click.echo(json.dumps({**figures, "samples": [vars(x) for x in samples]}, indent=2))
    else:
        click.echo(table(samples))
        click.echo(
            f"soak: {minutes:g} min at {rate:,.0f} events/s, "
            f"{samples[-1].events if samples else 0:,} events; RSS worker "
            f"{figures.get('rss_worker_mb_per_min')} MB/min, sink "
            f"{figures.get('rss_sink_mb_per_min')} MB/min; lag max worker "
            f"{figures.get('worker_lag_max')}, sink {figures.get('sink_lag_max')}; p99 "
            f"{figures.get('p99_ms_middle_last')} ms; {'flat' if verdict.flat else 'NOT FLAT'}"
        )
        for p in verdict.problems:
            click.echo(f"  {p}")
    if not verdict.flat:
        sys.exit(1)


@click.command("outage")
@click.option(
    "--seconds",
    type=float,
    default=60.0,
    show_default=True,
    help="how long ClickHouse is down (0: skip that part, only the broker restart)",
)
@click.option("--events", type=int, default=100_000, show_default=True, help="events fed")
@click.option(
    "--rate", type=float, default=None, help="events/s (default: spread over 3x --seconds)"
)
@click.option(
    "--how",
    type=click.Choice(["kill", "freeze"]),
    default="kill",
    show_default=True,
    help="kill: SIGKILL, restarted on the same data directory; freeze: SIGSTOP, then SIGCONT",
)
@click.option(
    "--restart-events",
    type=int,
    default=None,
    help="events for the broker restart (default: --events; 0: skip it)",
)
@click.option("--seed", type=int, default=11, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="the figures as JSON")
@pass_state
def outage_cmd(
    state: CliState,
    seconds: float,
    events: int,
    rate: float | None,
    how: str,
    restart_events: int | None,
    seed: int,
    as_json: bool,
) -> None:
    """A clickhouse-server (Debian's binary, its own temp directory) stopped for
    --seconds while workers and the sink run with traffic flowing; then the embedded
    broker restarted mid-run, restored from ClickHouse, every input fed again. Exit 1
    on anything missing, doubled or different."""
    import tempfile

    from tally.chaos.outage import Server, broker_restart, clickhouse_outage

    s = state.settings
    setup_logging(s.log_level)
    restart_events = events if restart_events is None else restart_events
    with tempfile.TemporaryDirectory(prefix="tally-outage-") as tmp, broker_for(s, quiet=True) as s:
        try:
            server = Server(Path(tmp) / "clickhouse").start()
        except RuntimeError as exc:
            raise click.ClickException(str(exc)) from None
        try:
            ch = None
            if seconds > 0:
                ch = asyncio.run(clickhouse_outage(s, server, seconds, events, rate, how, seed))
                click.echo(ch.line())
            rs = None
            if restart_events:
                r = rate or max(restart_events / (3 * max(seconds, 60.0)), 100.0)
                rs = asyncio.run(broker_restart(s, server, restart_events, r, Path(tmp)))
                click.echo(rs.line())
                click.echo(f"  {rs.restored}")
        finally:
            server.stop()
    if as_json:
        click.echo(json.dumps(_figures(ch, rs), indent=2, default=str))
    if (ch is not None and not ch.ok) or (rs is not None and not rs.ok):
        sys.exit(1)


def _figures(ch: Any, rs: Any) -> dict[str, Any]:
    import dataclasses

    out = {"clickhouse_outage": None if ch is None else dataclasses.asdict(ch)}
    if rs is not None:
        out["broker_restart"] = dataclasses.asdict(rs)
    return out


@click.command("replay")
@click.option("--events", type=int, default=100_000, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="every difference as JSON")
@pass_state
def replay_cmd(state: CliState, events: int, seed: int, as_json: bool) -> None:
    """A simulated day through a worker, then its whole input log from offset 0
    through a fresh worker (new group, empty tables); outputs compared byte for byte
    (less wall-clock fields) and as outcomes. Exit 1 if an order's position, the set
    of breaks or the dead letters differ (the rest may depend on the interleaving)."""
    import dataclasses

    from tally.chaos.replay import VARIES, replay

    s = state.settings
    setup_logging(s.log_level)
    with broker_for(s, quiet=as_json) as s:
        r = asyncio.run(replay(s, events, seed))
    if as_json:
        click.echo(json.dumps({**dataclasses.asdict(r), "varies": VARIES}, indent=2))
    else:
        click.echo(r.line())
        for title, diffs in (("outputs", r.differences), ("outcomes", r.outcome_differences)):
            for k, d in diffs.items():
                if d.count:
                    click.echo(
                        f"  {title} {k}: {d.only_first} only in the first run, {d.only_second} "
                        f"only in the replay, {d.changed} changed (fields: {d.fields}); "
                        f"e.g. {', '.join(d.examples[:3])}"
                    )
    o = r.outcome_differences
    if o["positions"].count or o["breaks"].only_first or o["breaks"].only_second:
        sys.exit(1)  # what must not depend on the interleaving: positions, break ids
    if o["dead_letters"].count:
        sys.exit(1)


# ------------------------------------------------------- the soak's chart (SVG)


def chart(samples: list[Sample], rate: float) -> str:
    """Three panels over minutes: RSS (MB), lag (messages), break latency (ms)."""
    t = [smp.t_s / 60 for smp in samples]

    def col(name: str) -> list[float | None]:
        return [getattr(smp, name) for smp in samples]

    panels = [
        ("RSS, MB", [Series("worker", col("rss_worker_mb")), Series("sink", col("rss_sink_mb"))]),
        ("lag, messages", [Series("worker", col("worker_lag")), Series("sink", col("sink_lag"))]),
        (
            "event-to-break latency, ms",
            [Series("p50", col("p50_ms")), Series("p99", col("p99_ms"))],
        ),
    ]
    return svg_chart(f"soak at {rate:,.0f} events/s", "minutes", t, panels)


COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
W, PANEL_H, LEFT, TOP = 720, 170, 70, 40


@dataclass
class Series:
    name: str
    ys: list[float | None]


def svg_chart(
    title: str, xlabel: str, xs: list[float], panels: list[tuple[str, list[Series]]]
) -> str:
    """Panels stacked vertically sharing the x axis: a hand-written SVG line chart."""
    height = TOP + len(panels) * (PANEL_H + 30) + 30
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" '
        'font-family="sans-serif" font-size="11">',
        f'<rect width="{W}" height="{height}" fill="white"/>',
        f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>',
    ]
    x_max = max(xs) if xs and max(xs) > 0 else 1.0
    for i, (label, series) in enumerate(panels):
        top = TOP + i * (PANEL_H + 30)
        parts += _panel(top, label, xs, x_max, series)
    parts.append(
        f'<text x="{(W + LEFT) / 2}" y="{height - 8}" text-anchor="middle">{xlabel}</text>'
    )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _panel(
    top: float, label: str, xs: list[float], x_max: float, series: list[Series]
) -> list[str]:
    right, bottom = W - 20, top + PANEL_H
    values = [y for s in series for y in s.ys if y is not None]
    y_max = max(values) * 1.1 if values and max(values) > 0 else 1.0
    out = [
        f'<rect x="{LEFT}" y="{top}" width="{right - LEFT}" height="{PANEL_H}" '
        'fill="none" stroke="#999"/>',
        f'<text x="{LEFT + 4}" y="{top + 13}">{label}</text>',
    ]
    for frac in (0.0, 0.5, 1.0):
        y = bottom - frac * PANEL_H
        out.append(
            f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">{frac * y_max:,.0f}</text>'
        )
        x = LEFT + frac * (right - LEFT)
        out.append(
            f'<text x="{x:.1f}" y="{bottom + 14}" text-anchor="middle">{frac * x_max:.1f}</text>'
        )
    for j, s in enumerate(series):
        colour = COLOURS[j % len(COLOURS)]
        pts = " ".join(
            f"{LEFT + x / x_max * (right - LEFT):.1f},{bottom - y / y_max * PANEL_H:.1f}"
            for x, y in zip(xs, s.ys, strict=True)
            if y is not None
        )
        out.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        out.append(
            f'<text x="{right - 8}" y="{top + 14 + 13 * j}" text-anchor="end" '
            f'fill="{colour}">{s.name}</text>'
        )
    return out


def register(bench: click.Group) -> None:
    """Add `outage`, `replay` and `soak` to the `tally bench` group."""
    for cmd in (outage_cmd, replay_cmd, soak_cmd):
        bench.add_command(cmd)
