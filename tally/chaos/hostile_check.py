"""Hostile input messages fed through tally, checked after each one.

`check_inputs(n, seed)`: `n` messages of `tally.chaos.hostile` mixed, at random
places, into as many valid ones (`tally.sim.traffic`), fed one by one through
`tally.core.pipeline.LocalPipeline` (the topology the Faust agents run). After each:
processed, or dead-lettered with a reason code of `REASON_CODES` (docs/events.md) and
a reason; never an exception; the outcome the generator expects; the balance
invariants hold: every new posting nets to zero per bucket, and the book's merchants +
fees == channels + coupon funding, checked after every message that moved a balance
(nothing else changes the book). At the end every timer fires and the book must equal
the orders' own positions. Out: `InputFigures`.

`check_stream(url, messages)`: the same messages through a real worker (`WorkerRunner`,
as `tally run --no-sink`) on fresh topics of the broker; its dead-letter topic must
hold exactly what the in-memory topology dead-letters (an exception there is the
agent's `internal_error`), each record with a documented code and a reason; every
message consumed; no agent crashed; a valid order produced after everything else (the
sentinel) processed. Out: `StreamFigures`.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.app import create_app
from streams.broker import EmbeddedBroker
from streams.produce import produce
from streams.worker import WorkerRunner, end_offsets, read_topic
from tally.chaos.hostile import (
    ANY,
    DEAD,
    OUTSIDE,
    PROCESSED,
    STREAM_KINDS,
    Generator,
    Hostile,
    dump,
)
from tally.config import Settings
from tally.core.deadletter import REASON_CODES
from tally.core.ledger import ImbalanceError, Posting, balances_from_positions
from tally.core.pipeline import CALLBACKS, TRANSACTIONS, Envelope, LocalPipeline
from tally.core.policy import Policies
from tally.sim.traffic import SimConfig, generate


@dataclass
class InputFigures:
    messages: int = 0
    hostile: int = 0
    valid: int = 0
    processed: int = 0
    dead_lettered: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    exceptions: list[str] = field(default_factory=list)  # reproducers
    exceptions_by_kind: Counter[str] = field(default_factory=Counter)
    invariant_violations: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)  # outcome other than expected
    undocumented: list[str] = field(default_factory=list)  # dead-lettered, unknown code
    outside_contract: Counter[str] = field(default_factory=Counter)  # processed anyway
    invariant_checks: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (
            self.exceptions or self.invariant_violations or self.unexpected or self.undocumented
        )

    def line(self) -> str:
        codes = ", ".join(f"{k} {v}" for k, v in self.codes.most_common())
        return (
            f"inputs {self.hostile} (+{self.valid} valid): processed {self.processed} "
            f"dead-lettered {self.dead_lettered} ({codes}) exceptions {len(self.exceptions)} "
            f"invariant violations {len(self.invariant_violations)} "
            f"unexpected outcomes {len(self.unexpected)} in {self.seconds:.1f} s"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "hostile": self.hostile,
            "valid": self.valid,
            "processed": self.processed,
            "dead_lettered": self.dead_lettered,
            "codes": dict(self.codes.most_common()),
            "kinds": dict(sorted(self.kinds.items())),
            "exceptions": len(self.exceptions),
            "exceptions_by_kind": dict(self.exceptions_by_kind),
            "exception_samples": self.exceptions[:10],
            "invariant_violations": self.invariant_violations[:10],
            "unexpected": self.unexpected[:10],
            "unexpected_count": len(self.unexpected),
            "undocumented": self.undocumented[:10],
            "outside_contract_processed": dict(self.outside_contract),
            "invariant_checks": self.invariant_checks,
            "seconds": round(self.seconds, 2),
            "ok": self.ok,
        }


def posting_balanced(p: Posting) -> bool:
    """Every bucket of one posting nets to zero."""
    sums: dict[str, int] = defaultdict(int)
    for k, v in p.legs.items():
        sums[k.split("|")[1]] += v
    return all(v == 0 for v in sums.values())


def traffic(valid: int, seed: int) -> list[Envelope]:
    """The simulator's valid traffic (re-deliveries included, nothing malformed)."""
    sim = generate(SimConfig(events=max(valid, 10), seed=seed, malformed_rate=0.0), Policies())
    return sim.envelopes


def mixed(hostile: list[Hostile], valid: list[Envelope], seed: int) -> list[Hostile | Envelope]:
    """The valid traffic in its order, hostile messages at random places in between."""
    rng = random.Random(seed ^ 0x5EED)
    slots = sorted(rng.randrange(len(valid) + 1) for _ in hostile)
    out: list[Hostile | Envelope] = []
    it = iter(hostile)
    j = 0
    for i, env in enumerate(valid):
        while j < len(slots) and slots[j] == i:
            out.append(next(it))
            j += 1
        out.append(env)
    out.extend(it)
    return out


class Checker:
    """Feeds messages one by one into a `LocalPipeline`, checking after each."""

    def __init__(self, figures: InputFigures | None = None, partitions: int = 4) -> None:
        self.pipe = LocalPipeline(partitions=partitions, clock=lambda: int(time.time() * 1000))
        self.f = figures or InputFigures()

    def feed(self, m: Hostile | Envelope) -> str:
        """The outcome: processed, a reason code, or `exception`."""
        pipe, f = self.pipe, self.f
        h = m if isinstance(m, Hostile) else None
        value = m.value if isinstance(m, Hostile) else m.value_bytes()
        f.messages += 1
        if h is not None:
            f.hostile += 1
            f.kinds[h.kind] += 1
        else:
            f.valid += 1
        n_dead, n_done, n_post = len(pipe.dead_letters), pipe.processed, len(pipe.postings)
        what = h.reproducer() if h is not None else f"valid {m.topic} {m.key}"
        try:
            pipe.feed(m.topic, m.key, value)
        except Exception as exc:  # the finding: recorded with its reproducer
            f.exceptions.append(f"{type(exc).__name__}: {str(exc)[:120]} <- {what}")
            f.exceptions_by_kind[h.kind if h else "valid"] += 1
            return "exception"
        if len(pipe.dead_letters) > n_dead:
            code = pipe.dead_letters[-1].code
            f.dead_lettered += 1
            f.codes[code] += 1
            if code not in REASON_CODES or not pipe.dead_letters[-1].reason:
                f.undocumented.append(f"{code} <- {what}")
            outcome = code
        else:
            assert pipe.processed == n_done + 1, "neither processed nor dead-lettered"
            f.processed += 1
            outcome = PROCESSED
        self._invariants(n_post, what)
        expect = h.expect if h is not None else PROCESSED
        if expect == OUTSIDE and outcome == PROCESSED and h is not None:
            f.outside_contract[h.kind] += 1
        if not _as_expected(expect, outcome):
            f.unexpected.append(f"expected {expect}, got {outcome} <- {what}")
        return outcome

    def _invariants(self, n_post: int, what: str) -> None:
        pipe = self.pipe
        if len(pipe.postings) == n_post:
            return  # the book changes only through postings: nothing moved
        self.f.invariant_checks += 1
        for p in pipe.postings[n_post:]:
            if not posting_balanced(p):
                self.f.invariant_violations.append(f"posting {p.posting_id} unbalanced <- {what}")
        try:
            pipe.book.check()
        except ImbalanceError as exc:
            self.f.invariant_violations.append(f"{exc} <- {what}")

    def finish(self) -> None:
        """Every timer fired (an hour of idle time), the book checked once more, and
        the book against the orders' own positions (a message that failed half-way
        would leave an order's position without its posting)."""
        pipe = self.pipe
        try:
            pipe.tick(3600 * 1000)
            pipe.book.check()
        except ImbalanceError as exc:
            self.f.invariant_violations.append(f"{exc} <- the final tick")
        except Exception as exc:
            self.f.exceptions.append(f"{type(exc).__name__}: {exc} <- the final tick")
        book = {k: nz for k, b in pipe.book.balances.items() if (nz := _nonzero(b.amounts))}
        positions = balances_from_positions(pipe.orders.values())
        for k in sorted(set(book) | set(positions)):
            if book.get(k) != positions.get(k):
                self.f.invariant_violations.append(
                    f"balance {k}: book {book.get(k)} != orders' positions {positions.get(k)}"
                )


def _nonzero(amounts: dict[str, int]) -> dict[str, int]:
    return {c: v for c, v in amounts.items() if v}


def _as_expected(expect: str, outcome: str) -> bool:
    if outcome == "exception":
        return True  # counted as an exception already
    if expect in (ANY, OUTSIDE):
        return True
    if expect == DEAD:
        return outcome != PROCESSED
    return expect == outcome


def check_inputs(
    n: int,
    seed: int = 1,
    *,
    valid: int | None = None,
    extreme_times: bool = True,
    progress: Callable[[int], None] | None = None,
) -> InputFigures:
    """`n` hostile messages mixed into `valid` (default n) valid ones, each checked;
    `extreme_times=False` leaves out the out-of-range timestamps (EXTREME_TIMES)."""
    t0 = time.monotonic()
    templates = traffic(n if valid is None else valid, seed)
    hostile = list(Generator(seed, templates, extreme_times=extreme_times).take(n))
    checker = Checker()
    for i, m in enumerate(mixed(hostile, templates, seed), start=1):
        checker.feed(m)
        if progress is not None and i % 1000 == 0:
            progress(i)
    checker.finish()
    checker.f.seconds = time.monotonic() - t0
    return checker.f


# ------------------------------------------------------- the real Faust worker


@dataclass
class StreamFigures:
    messages: int = 0
    hostile: int = 0
    consumed: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)  # from the topic
    expected: Counter[str] = field(default_factory=Counter)  # LocalPipeline's, same input
    sentinel_processed: bool = False  # a valid message after all the hostile ones
    crashed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems and not self.crashed and self.sentinel_processed

    def line(self) -> str:
        codes = ", ".join(f"{k} {v}" for k, v in self.dead_letters.most_common())
        return (
            f"worker {self.hostile} hostile (+{self.messages - self.hostile} valid): consumed "
            f"{self.consumed}, dead letters {sum(self.dead_letters.values())} ({codes}), "
            f"as the in-memory topology: {self.dead_letters == self.expected}, agents crashed "
            f"{len(self.crashed)}, valid message after them processed: "
            f"{self.sentinel_processed} in {self.seconds:.1f} s"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "hostile": self.hostile,
            "consumed": self.consumed,
            "dead_letters": dict(self.dead_letters.most_common()),
            "expected": dict(self.expected.most_common()),
            "sentinel_processed": self.sentinel_processed,
            "crashed": self.crashed,
            "problems": self.problems[:10],
            "seconds": round(self.seconds, 2),
            "ok": self.ok,
        }


def stream_messages(n: int, seed: int, *, extreme_times: bool = True) -> list[Hostile | Envelope]:
    """`n` hostile messages of the worker's two topics (at most 1 MiB each: the
    producer's limit) in n valid ones, and last a valid order of its own (the sentinel)."""
    templates = traffic(n, seed)
    gen = Generator(
        seed, templates, kinds=STREAM_KINDS, extreme_times=extreme_times, max_bytes=1 << 20
    )
    out = mixed(list(gen.take(n)), templates, seed)
    _topic, d = gen._fresh()
    d["txn_id"] = d["event_id"] = f"sentinel-{uuid.uuid4().hex[:12]}"
    d.pop("original_txn_id", None)
    out.append(Hostile("sentinel", TRANSACTIONS, d["txn_id"], dump(_as_payment(d)), PROCESSED))
    return out


def _as_payment(d: dict[str, Any]) -> dict[str, Any]:
    keep = ("event_id", "txn_id", "merchant_id", "channel_id", "currency", "occurred_at")
    out = {k: d.get(k) for k in keep}
    merchant = out["merchant_id"] or "M-SENTINEL"
    out.update(type="payment", merchant_id=merchant, amount="1", status="pending")
    return out


def run_settings(bootstrap_url: str, data_dir: str | None = None) -> Settings:
    """A worker of its own on `bootstrap_url`: fresh topics and consumer group (and its
    local data under `data_dir`, a fresh temporary directory by default)."""
    run = uuid.uuid4().hex[:8]
    data_dir = data_dir or tempfile.mkdtemp(prefix="tally-hostile-")
    Path(data_dir, "faust").mkdir(parents=True, exist_ok=True)  # Faust makes only its own
    names = ["transactions", "callbacks", "breaks", "postings", "status_queries"]
    names += ["dead_letter", "order_states", "balances"]
    values: dict[str, Any] = {f"topic_{k}": f"h{run}.{k.replace('_', '-')}" for k in names}
    values.update(
        broker=bootstrap_url,
        app_id=f"tally-hostile-{run}",
        web_port=0,
        metrics_port=0,
        idle_tick_seconds=3600,
        log_level="warning",
        data_dir=data_dir,
    )
    return Settings(_env_file=None, **values)


async def check_stream(
    bootstrap_url: str,
    messages: list[Hostile | Envelope],
    drain_timeout: float = 300.0,
    data_dir: str | None = None,
) -> StreamFigures:
    """The messages through a real worker (`WorkerRunner`, as `tally run --no-sink`) on
    the broker; its dead-letter topic compared with the in-memory topology's."""
    t0 = time.monotonic()
    f = StreamFigures(messages=len(messages))
    f.hostile = sum(1 for m in messages if isinstance(m, Hostile) and m.kind != "sentinel")
    local = Checker()
    for m in messages:
        outcome = local.feed(m)
        if outcome == "exception":
            outcome = "internal_error"  # what the agent makes of it
        if outcome != PROCESSED:
            f.expected[outcome] += 1
    s = run_settings(bootstrap_url, data_dir)
    retarget = {TRANSACTIONS: s.topic_transactions, CALLBACKS: s.topic_callbacks}
    envelopes = [Envelope(retarget[m.topic], m.key, m.value) for m in messages]
    sentinel = messages[-1].key
    tally = create_app(s)
    runner = WorkerRunner(tally)
    await runner.start()
    try:
        await produce(s.bootstrap_servers(), envelopes)
        try:
            await asyncio.wait_for(runner.wait_idle(2.0), drain_timeout)
        except TimeoutError:
            f.problems.append(f"the worker did not drain the input within {drain_timeout:.0f} s")
        f.problems += await _stalled(s, tally.stats.positions)
        f.sentinel_processed = sentinel in tally.orders
        f.consumed = sum(tally.stats.consumed[t] for t in retarget.values())
        if tally.app.crash_reason is not None:
            f.crashed.append(f"app: {tally.app.crash_reason!r}")
        for name, agent in tally.agents.items():
            if name != "idle_ticks" and agent.crash_reason is not None:
                f.crashed.append(f"{name}: {agent.crash_reason!r}")
    finally:
        await runner.stop()
    letters = await read_topic(s.bootstrap_servers(), s.topic_dead_letter)
    f.dead_letters = Counter(d["code"] for d in letters)
    for d in letters:
        if d["code"] not in REASON_CODES or not d["reason"]:
            f.problems.append(f"dead letter without a documented reason: {d['code']}")
    if f.dead_letters != f.expected:
        f.problems.append(f"dead letters {dict(f.dead_letters)} != in memory {dict(f.expected)}")
    if f.consumed != len(messages):
        f.problems.append(f"consumed {f.consumed} of {len(messages)}")
    f.seconds = time.monotonic() - t0
    return f


async def _stalled(s: Settings, positions: dict[tuple[str, int], int]) -> list[str]:
    """Each input partition the worker is behind on, and the message it stopped at."""
    out = []
    inputs = [s.topic_transactions, s.topic_callbacks]
    for (topic, p), end in sorted((await end_offsets(s.bootstrap_servers(), inputs)).items()):
        at = positions.get((topic, p), 0)
        if at >= end:
            continue
        consumer = AIOKafkaConsumer(bootstrap_servers=s.bootstrap_servers())
        await consumer.start()
        try:
            tp = TopicPartition(topic, p)
            consumer.assign([tp])
            consumer.seek(tp, at)
            m = await asyncio.wait_for(consumer.getone(), 10)
            what = f"key {m.key!r:.80}, value {len(m.value or b'')} B: {(m.value or b'')[:120]!r}"
            sizes = []
            for _ in range(min(5, end - at - 1)):
                nxt = await asyncio.wait_for(consumer.getone(), 10)
                sizes.append(len(nxt.value or b""))
            what += f"; the next values: {sizes} B"
        except Exception as exc:
            what = f"unreadable: {exc!r}"
        finally:
            await consumer.stop()
        out.append(f"stalled at {topic}[{p}]@{at} (end {end}): {what}")
    return out


def run_stream_sample(
    n: int, seed: int, log_dir: str, port: int, drain_timeout: float = 300.0
) -> StreamFigures:
    """`check_stream` on an embedded broker of its own (started and stopped here)."""
    broker = EmbeddedBroker("127.0.0.1", port, log_dir)
    broker.start()
    try:
        messages = stream_messages(n, seed)
        return asyncio.run(check_stream(broker.url, messages, drain_timeout, log_dir))
    finally:
        broker.stop()
