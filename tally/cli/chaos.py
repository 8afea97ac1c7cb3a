"""`tally bench chaos`: a crash storm (tally.chaos.storm). A simulated day processed
once uninterrupted and once while workers are killed with kill -9, compared through
ClickHouse; one line of figures, exit 1 on any difference. See docs/reliability.md.

`register(bench)` adds it to the `tally bench` group.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import click

from tally.cli.common import CliState, pass_state


@click.command("chaos")
@click.option(
    "--events",
    type=click.IntRange(1_000),
    default=100_000,
    show_default=True,
    help="simulated input messages (every anomaly, malformed input, re-deliveries)",
)
@click.option(
    "--kills",
    type=click.IntRange(1, 200),
    default=20,
    show_default=True,
    help="kill -9s, during recovery and during a two-worker takeover included",
)
@click.option(
    "--seed",
    type=int,
    default=None,
    help="seed of the traffic and the kill schedule (default: random, printed)",
)
@click.option(
    "--keep",
    is_flag=True,
    help="keep the working directory (logs, chDB) and the two databases",
)
@click.option("--json", "as_json", is_flag=True, help="every figure as one JSON object")
@pass_state
def chaos_cmd(
    state: CliState, events: int, kills: int, seed: int | None, keep: bool, as_json: bool
) -> None:
    """Process a simulated day twice on fresh embedded brokers: once with one worker,
    uninterrupted, and once while killing workers with kill -9 at random moments
    (--kills times); store both runs' outputs into ClickHouse through the sink and
    compare them by id. Progress goes to stderr; stdout gets one line of figures.
    Exit 1 on any difference, printing it; --seed replays a run. ClickHouse is the
    server of TALLY_CLICKHOUSE_URL (two fresh databases, dropped after), else chDB
    in the working directory."""
    from tally.chaos.storm import StormError, run_storm

    s = state.settings
    seed = random.randrange(2**31) if seed is None else seed
    workdir = Path(tempfile.mkdtemp(prefix=f"tally-chaos-{seed}-"))
    storage: dict[str, Any] = {"data_dir": str(workdir / "data")}
    if s.clickhouse_url is not None:
        storage["clickhouse_url"] = s.clickhouse_url
    click.echo(f"chaos seed={seed} (replay: tally bench chaos --seed {seed})", err=True)

    def log(line: str) -> None:
        click.echo(line, err=True)

    try:
        report = asyncio.run(run_storm(events, kills, seed, workdir, storage, log, keep=keep))
    except (StormError, TimeoutError, RuntimeError) as exc:
        raise click.ClickException(
            f"seed {seed}: the storm did not run to the end: {exc}\n(logs in {workdir})"
        ) from None
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2, default=str))
    else:
        click.echo(report.line())
    if not report.ok:
        for p in report.problems():
            click.echo(f"DIFFERENCE: {p}", err=True)
        click.echo(f"seed {seed}; worker and broker logs in {workdir}", err=True)
        raise SystemExit(1)
    if keep:
        click.echo(f"kept {workdir}", err=True)
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def register(bench: click.Group) -> None:
    bench.add_command(chaos_cmd)
