"""(d) worker processes: one vs several `python -m tally run --no-sink` in one
consumer group (`streams.bench`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.bench.common import _isolated, _retarget
from streams.produce import produce
from tally.config import Settings
from tally.core.pipeline import Envelope

# -------------------------------------------------------------- (d) workers


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_CONSUMED = re.compile(r'^tally_events_consumed_total\{[^}]*topic="([^"]+)"[^}]*\}\s+(\S+)', re.M)


def _metric_inputs(port: int, topics: tuple[str, ...]) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as r:
            text = r.read().decode()
    except OSError:
        return None
    return int(sum(float(v) for t, v in _CONSUMED.findall(text) if t in topics))


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class _Proc:
    proc: subprocess.Popen[bytes]
    metrics_port: int
    log: Path


async def bench_workers(s: Settings, envelopes: list[Envelope], n: int) -> dict[str, Any]:
    """`n` worker processes (`python -m tally run --no-sink`, one consumer group):
    started and balanced on empty topics, then every event produced at full speed.
    Throughput from the first consumed input message to the last, summed over the
    workers (their `tally_events_consumed_total` metrics, polled); CPU of the workers."""
    s = _isolated(s, f"w{n}")
    procs: list[_Proc] = []
    try:
        await _start(procs, s, n)
        first, last = await _measure(procs, s, envelopes, n)
        events = last[2] - first[2]
        seconds = last[0] - first[0]
        return {
            "workers": n,
            "events": last[2],
            "events_timed": events,
            "seconds": round(seconds, 3),
            "events_per_second": round(events / seconds, 1) if seconds else None,
            "cpu_us_per_event": round((last[1] - first[1]) / events * 1e6, 1) if events else None,
            "timing": "polled worker metrics (tally_events_consumed_total) every ~50 ms; "
            "workers balanced before the events are produced at full speed",
        }
    finally:
        _stop(procs)


def _worker_env(s: Settings) -> dict[str, str]:
    """The environment of a worker process: this one's, without its TALLY_ settings,
    plus those of `s`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
    env = {
        **base,
        "TALLY_BROKER": s.broker_url(),
        "TALLY_APP_ID": s.app_id,
        "TALLY_PARTITIONS": str(s.partitions),
        "TALLY_WEB_PORT": "0",
        "TALLY_LOG_LEVEL": "info",
        "TALLY_PROCESSING_GUARANTEE": s.processing_guarantee,
    }
    for name in (
        "transactions",
        "callbacks",
        "breaks",
        "postings",
        "status_queries",
        "dead_letter",
        "order_states",
        "balances",
    ):
        env[f"TALLY_TOPIC_{name.upper()}"] = getattr(s, f"topic_{name}")
    for name in ("batch_max_events", "batch_max_ms", "consumer_fetch_max_wait_ms"):
        if hasattr(s, name):
            env[f"TALLY_{name.upper()}"] = str(getattr(s, name))
    return env


async def _start(procs: list[_Proc], s: Settings, n: int) -> None:
    """Start `n` workers one after the other (into `procs`), each balanced in."""
    env = _worker_env(s)
    logs = Path(tempfile.mkdtemp(prefix="tally-bench-workers-"))
    root = Path(__file__).resolve().parents[2]
    for i in range(n):
        port = _free_port()
        path = logs / f"w{i}.log"
        with open(path, "ab") as out:
            child = subprocess.Popen(
                [sys.executable, "-m", "tally", "run", "--no-sink"],
                env={**env, "TALLY_METRICS_PORT": str(port)},
                cwd=root,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        procs.append(_Proc(child, port, path))
        await _balanced(procs, s)


_Mark = tuple[float, float, int]  # monotonic, CPU of the workers, inputs consumed


async def _measure(
    procs: list[_Proc], s: Settings, envelopes: list[Envelope], n: int
) -> tuple[_Mark, _Mark]:
    """Produce every event and poll the workers until they consumed them all: the
    first and the last poll that saw the count move."""
    inputs = (s.topic_transactions, s.topic_callbacks)

    def count() -> int:
        return sum(_metric_inputs(p.metrics_port, inputs) or 0 for p in procs)

    first: _Mark | None = None
    last: _Mark | None = None

    def cpu() -> float:
        return sum(_cpu_seconds(p.proc.pid) for p in procs)

    async def watch() -> None:
        nonlocal first, last
        seen = 0
        while True:
            c = await asyncio.to_thread(count)
            if c != seen:
                mark = (time.monotonic(), await asyncio.to_thread(cpu), c)
                first = first or mark
                last, seen = mark, c
            for p in procs:
                if p.proc.poll() is not None:
                    raise RuntimeError(f"a worker exited: {p.log.read_text()[-2000:]}")
            await asyncio.sleep(0.05)

    watcher = asyncio.ensure_future(watch())
    try:
        await produce(s.bootstrap_servers(), _retarget(envelopes, s))
        moved, seen = time.monotonic(), -1
        while last is None or last[2] < len(envelopes):
            if watcher.done():
                await watcher
            if (last[2] if last else 0) != seen:
                seen, moved = (last[2] if last else 0), time.monotonic()
            elif time.monotonic() - moved > 60:
                raise TimeoutError(f"{n} workers consumed {seen:,} of {len(envelopes):,}")
            await asyncio.sleep(0.1)
    finally:
        watcher.cancel()
        with contextlib.suppress(BaseException):
            await watcher
    assert first is not None and last is not None
    return first, last


def _stop(procs: list[_Proc]) -> None:
    for p in procs:
        if p.proc.poll() is None:
            os.killpg(p.proc.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(p.proc.pid, signal.SIGKILL)
            p.proc.wait(10)


_ASSIGNED = re.compile(r"Setting newly assigned partitions (\{.*\}) for group")
_TP = re.compile(r"TopicPartition\(topic='([^']+)', partition=(\d+)\)")


async def _balanced(procs: list[_Proc], s: Settings, timeout: float = 120.0) -> None:
    """Until the workers share every input partition, each recovered and running."""
    deadline = time.monotonic() + timeout
    want = list(range(s.partitions))
    while True:
        got: list[set[int] | None] = []
        for p in procs:
            if p.proc.poll() is not None:
                raise RuntimeError(f"a worker exited: {p.log.read_text()[-2000:]}")
            text = p.log.read_text(errors="replace")
            found = list(_ASSIGNED.finditer(text))
            if not found or "Worker ready" not in text[found[-1].end() :]:
                got.append(None)
                continue
            got.append(
                {int(n) for t, n in _TP.findall(found[-1].group(1)) if t == s.topic_transactions}
            )
        parts = [g for g in got if g is not None]
        if len(parts) == len(procs) and sorted(x for g in parts for x in g) == want:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"workers not balanced within {timeout:.0f}s: {got}")
        await asyncio.sleep(0.5)
