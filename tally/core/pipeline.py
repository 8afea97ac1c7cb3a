"""The stream topology, run in memory: the same routing the Faust agents do, with
dicts for tables. Used by unit and property tests, by the simulator's oracle and
by `tally bench core`.

    payments.transactions ┐                         ┌─> payments.breaks
    payments.callbacks    ┼─> Reconciler (per txn) ─┼─> payments.postings ─> balances
    tally links (internal)┘        │                ├─> payments.status-queries
                                   └─ claims ─> ChannelTxnIndex ─> payments.breaks

Malformed messages become `DeadLetter`s with the reason; they never raise.

In: (topic, key, value) messages or `Envelope` lines, idle ticks, and the caller's wall
clock (`clock`: only dead letters read it). Out: the breaks, postings, status queries,
dead letters, order states and balances, kept on the `LocalPipeline`; `partition_for`
is Kafka's partitioner.
"""

from __future__ import annotations

import base64
import json
import struct
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tally.core.breaks import Break, ChannelTxnClaim
from tally.core.events import (
    DEFAULT_MAX_BYTES,
    DeadLetter,
    InvalidEvent,
    parse_callback,
    parse_transaction,
)
from tally.core.ledger import BalanceBook, Posting
from tally.core.orders import OrderState
from tally.core.policy import Policies
from tally.core.realtime import ChannelTxnIndex, Outputs, Reconciler, ReversalLink, StatusQuery

TRANSACTIONS = "payments.transactions"
CALLBACKS = "payments.callbacks"


_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
_iter_words = struct.Struct("<I").iter_unpack


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2), as aiokafka's
    `aiokafka.partitioner.murmur2` computes it, reading the input a word at a time."""
    length = len(data)
    h = 0x9747B28C ^ length
    n4 = length & ~3
    for (k,) in _iter_words(data[:n4]):
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    extra = length & 3
    if extra >= 3:
        h ^= data[n4 + 2] << 16
    if extra >= 2:
        h ^= data[n4 + 1] << 8
    if extra >= 1:
        h ^= data[n4]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def partition_for(key: str | bytes, partitions: int) -> int:
    """Kafka's default (Java-compatible murmur2) partitioner, as aiokafka and Faust use."""
    kb = key.encode() if isinstance(key, str) else key
    return (murmur2(kb) & 0x7FFFFFFF) % partitions


class _Partitioner:
    """`partition_for` with a fixed partition count, remembered per key: every order's
    messages share its key, and murmur2 in Python costs more than the lookup."""

    def __init__(self, partitions: int, size: int = 1 << 18) -> None:
        self.partitions = partitions
        self.size = size
        self.known: dict[str | bytes, int] = {}

    def __call__(self, key: str | bytes) -> int:
        p = self.known.get(key)
        if p is None:
            if len(self.known) >= self.size:
                self.known.clear()
            p = self.known[key] = partition_for(key, self.partitions)
        return p


@dataclass
class Envelope:
    """One message as `tally produce` and the simulator write it: topic, key, value.

    On a line: {"topic", "key", "value": {...}} for a JSON value; "value_raw" (a string
    sent as is) or "value_b64" (exact bytes) for anything else."""

    topic: str
    key: str | None
    value: Any  # a dict for well-formed JSON, raw bytes/str for deliberately bad input

    def value_bytes(self) -> bytes:
        if isinstance(self.value, bytes):
            return self.value
        if isinstance(self.value, str):
            return self.value.encode()
        return json.dumps(self.value, separators=(",", ":")).encode()

    def to_line(self) -> str:
        v: Any = self.value
        if isinstance(v, bytes):
            # raw bytes survive the round trip exactly
            return json.dumps(
                {"topic": self.topic, "key": self.key, "value_b64": base64.b64encode(v).decode()}
            )
        if isinstance(v, str):
            return json.dumps({"topic": self.topic, "key": self.key, "value_raw": v})
        return json.dumps({"topic": self.topic, "key": self.key, "value": v}, separators=(",", ":"))

    @classmethod
    def from_line(cls, line: str, lineno: int = 0) -> Envelope:
        try:
            d = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"line {lineno}: not JSON: {exc}") from None
        if not isinstance(d, dict) or "topic" not in d:
            raise ValueError(f'line {lineno}: an envelope needs a "topic" field')
        if "value_b64" in d:
            try:
                raw = base64.b64decode(d["value_b64"], validate=True)
            except ValueError:
                raise ValueError(f"line {lineno}: value_b64 is not base64") from None
            return cls(d["topic"], d.get("key"), raw)
        if "value_raw" in d:
            return cls(d["topic"], d.get("key"), str(d["value_raw"]))
        if "value" not in d:
            raise ValueError(f'line {lineno}: an envelope needs a "value" field')
        return cls(d["topic"], d.get("key"), d["value"])


@dataclass
class LocalPipeline:
    """The topology over dicts. `clock` is the caller's wall clock (epoch ms), read only
    to stamp a dead letter's `dead_at`: the core reads no clock itself."""

    policies: Policies = field(default_factory=Policies)
    partitions: int = 1
    allowed_lateness_ms: int = 5000
    max_message_bytes: int = DEFAULT_MAX_BYTES
    clock: Callable[[], int] = field(kw_only=True)

    def __post_init__(self) -> None:
        self.orders: dict[str, OrderState] = {}
        self._partition = _Partitioner(self.partitions)
        self.reconciler = Reconciler(
            self.policies,
            self.orders,
            allowed_lateness_ms=self.allowed_lateness_ms,
            partition_of=self._partition,
        )
        self.index = ChannelTxnIndex({})
        self.index_claims: dict[str, ChannelTxnClaim] = self.index.claims  # type: ignore[assignment]
        self.book = BalanceBook()
        self.breaks: dict[str, Break] = {}
        self.postings: list[Posting] = []
        self.queries: list[StatusQuery] = []
        self.dead_letters: list[DeadLetter] = []
        self.processed = 0
        self.duplicates = 0
        self._offsets: dict[tuple[str, int], int] = {}

    # -------------------------------------------------------------- feeding

    def feed(self, topic: str, key: str | bytes | None, value: bytes) -> Outputs:
        kb = key.encode() if isinstance(key, str) else key
        if kb is None:
            partition = 0
        else:
            known = self._partition.known.get(kb)
            partition = self._partition(kb) if known is None else known
        tp = (topic, partition)
        offset = self._offsets.get(tp, 0)
        self._offsets[tp] = offset + 1
        try:
            if topic == TRANSACTIONS:
                txn = parse_transaction(value, kb, check_key=True, max_bytes=self.max_message_bytes)
                out = self.reconciler.on_transaction(txn, partition)
            elif topic == CALLBACKS:
                cb = parse_callback(value, kb, check_key=True, max_bytes=self.max_message_bytes)
                out = self.reconciler.on_callback(cb, partition)
            else:
                raise InvalidEvent("unknown_topic", f"tally does not read topic {topic!r}")
        except InvalidEvent as exc:
            self.dead_letters.append(
                DeadLetter.of(
                    topic=topic,
                    partition=partition,
                    offset=offset,
                    key=kb,
                    value=value,
                    error=exc,
                    dead_at_ms=self.clock(),
                )
            )
            return Outputs()
        self.processed += 1
        if out.duplicate:
            self.duplicates += 1
        self._route(out)
        return out

    def feed_envelope(self, env: Envelope) -> Outputs:
        return self.feed(env.topic, env.key, env.value_bytes())

    def feed_all(self, envelopes: Iterable[Envelope]) -> None:
        for env in envelopes:
            self.feed_envelope(env)

    def tick(self, advance_ms: int) -> None:
        """Idle wall-clock advance on every partition (end of a replay)."""
        for p in range(self.partitions):
            self._route(self.reconciler.on_tick(p, advance_ms))

    def _route(self, out: Outputs) -> None:
        if out.breaks or out.postings or out.queries:
            self._collect(out)
        if not out.links and not out.claims:
            return
        pending: deque[ReversalLink] = deque(out.links)
        while pending:
            link = pending.popleft()
            p = self._partition(link.original_txn_id)
            o = self.reconciler.on_link(link, p)
            pending.extend(o.links)
            self._collect(o)
        for claim in out.claims:
            b = self.index.on_claim(claim)
            if b is not None:
                self.breaks.setdefault(b.break_id, b)

    def _collect(self, out: Outputs) -> None:
        for b in out.breaks:
            self.breaks.setdefault(b.break_id, b)
        for p in out.postings:
            self.postings.append(p)
            self.book.apply(p)
        if out.queries:
            self.queries.extend(out.queries)

    # -------------------------------------------------------------- results

    def breaks_by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for b in self.breaks.values():
            counts[b.kind] = counts.get(b.kind, 0) + 1
        return dict(sorted(counts.items()))

    def break_set(self) -> set[tuple[str, str]]:
        return {(b.kind, b.txn_id) for b in self.breaks.values()}
