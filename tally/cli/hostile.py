"""`tally bench hostile`: hostile input messages and mutated statement files at full size
(docs/reliability.md, "Hostile inputs"). `register(bench)` adds it to `tally bench`."""

from __future__ import annotations

import json
import logging
import socket
import tempfile
from pathlib import Path
from typing import Any

import click

ROOT = Path(__file__).resolve().parents[2]  # the tree: its tests/data holds the samples


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _say(as_json: bool, text: str) -> None:
    if not as_json:
        click.echo(text, err=True)


def _inputs(n: int, seed: int, as_json: bool) -> tuple[str, dict[str, Any], bool]:
    from tally.chaos.hostile_check import check_inputs

    f = check_inputs(n, seed, progress=lambda i: _say(as_json, f"  inputs: {i} messages fed"))
    return f.line(), f.to_json(), f.ok


def _stream(n: int, seed: int, as_json: bool) -> tuple[str, dict[str, Any], bool]:
    from tally.chaos.hostile_check import run_stream_sample

    _say(as_json, f"  worker: {n} hostile messages through a worker on an embedded broker")
    with tempfile.TemporaryDirectory(prefix="tally-hostile-") as d:
        f = run_stream_sample(n, seed, d, _free_port())
    return f.line(), f.to_json(), f.ok


def _mutations(
    n: int, seed: int, store_every: int, as_json: bool
) -> tuple[str, dict[str, Any], bool]:
    from sinks.backend import close_chdb, connect
    from sinks.schema import migrate
    from tally.chaos.mutate import Store, check_mutations, samples
    from tally.config import Settings

    logging.getLogger("mt940").setLevel(logging.CRITICAL)  # it logs whole lines it refuses
    with tempfile.TemporaryDirectory(prefix="tally-mutations-") as d:
        s = Settings(_env_file=None, data_dir=d, clickhouse_database="hostile")
        db = connect(s)
        migrate(db)
        try:
            f = check_mutations(
                samples(ROOT),
                n,
                seed,
                store=Store(db, s),
                store_every=store_every,
                progress=lambda i: _say(as_json, f"  mutations: {i} checked"),
            )
        finally:
            db.close()
            close_chdb()
    per = "; ".join(
        f"{k} {v.accepted}/{v.mutants} accepted, {v.exceptions} exceptions"
        for k, v in f.formats.items()
    )
    return f"{f.line()}\n  per file: {per}", f.to_json(), f.ok


def _memory(big_mb: int, cap_mb: int, as_json: bool) -> tuple[str, dict[str, Any], bool]:
    from tally.chaos.bigfile import measure, write_csv

    runs = []
    with tempfile.TemporaryDirectory(prefix="tally-bigfile-") as d:
        for mb in sorted({32, 128, big_mb}):
            path = Path(d) / "psp-2026-11-24.csv"
            _say(as_json, f"  memory: writing a {mb} MB generic CSV and checking it")
            lines = write_csv(path, mb << 20)
            r = measure(path, cap_mb << 20)
            r["lines_written"] = lines
            runs.append(r)
            path.unlink()
    parts = []
    for r in runs:
        mb = r["file_bytes"] / (1 << 20)
        if "error" in r:
            parts.append(f"{mb:.0f} MB: refused by the {cap_mb} MB cap ({r['error']})")
        else:
            rss = r["peak_rss_bytes"] / (1 << 20)
            parts.append(
                f"{mb:.0f} MB: peak RSS {rss:.0f} MB ({rss / mb:.1f}x) in {r['seconds']} s"
            )
    ok = all("error" not in r and r["peak_rss_bytes"] < (512 << 20) for r in runs)
    line = "memory (streamed check: read in chunks, lines spooled to disk): " + "; ".join(parts)
    return line, {"runs": runs, "cap_mb": cap_mb, "bounded": ok}, ok


# what a failing part's figures hold as examples (reproducers), printed under its line
_SAMPLES = (
    "exception_samples",
    "invariant_violations",
    "unexpected",
    "undocumented",
    "problems",
    "crashed",
    "store_failures",
    "dtd_accepted_samples",
)


def register(bench: click.Group) -> None:
    bench.add_command(hostile_cmd)


@click.command("hostile")
@click.option("--inputs", type=int, default=10_000, show_default=True, help="hostile messages")
@click.option(
    "--mutations", type=int, default=10_000, show_default=True, help="mutants per sample file"
)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option(
    "--stream", type=int, default=1000, show_default=True, help="hostile messages for the worker"
)
@click.option(
    "--store-every",
    type=int,
    default=10,
    show_default=True,
    help="load every Nth channel-statement mutant through load_file into chDB",
)
@click.option("--big-file-mb", type=int, default=2048, show_default=True, help="0: skip")
@click.option("--memory-cap-mb", type=int, default=1024, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def hostile_cmd(
    inputs: int,
    mutations: int,
    seed: int,
    stream: int,
    store_every: int,
    big_file_mb: int,
    memory_cap_mb: int,
    as_json: bool,
) -> None:
    """Hostile inputs: generated input messages through the in-memory topology and a real
    worker, mutated statement files through the parsers and load_file, and the memory of
    checking a big statement; one line of figures per part, exit 1 on any failure.

    \b
    Examples:
      tally bench hostile
      tally bench hostile --inputs 1000 --mutations 500 --stream 0 --big-file-mb 0
      tally bench hostile --seed 7 --json
    """
    from streams.bench.common import machine

    parts: dict[str, tuple[str, dict[str, Any], bool]] = {}
    if inputs:
        parts["inputs"] = _inputs(inputs, seed, as_json)
    if stream:
        parts["worker"] = _stream(stream, seed, as_json)
    if mutations:
        parts["mutations"] = _mutations(mutations, seed, store_every, as_json)
    if big_file_mb:
        parts["memory"] = _memory(big_file_mb, memory_cap_mb, as_json)
    ok = all(p[2] for p in parts.values())
    if as_json:
        out = {k: v[1] for k, v in parts.items()} | {"ok": ok, "seed": seed, "machine": machine()}
        click.echo(json.dumps(out, indent=2, default=str))
    else:
        for line, figures, good in parts.values():
            click.echo(f"{'ok  ' if good else 'FAIL'} {line}")
            for key in _SAMPLES:
                for sample in figures.get(key, [])[:3] if not good else []:
                    click.echo(f"     {key}: {str(sample)[:300]}")
        click.echo(f"({machine()}, seed {seed})")
    if not ok:
        raise SystemExit(1)
