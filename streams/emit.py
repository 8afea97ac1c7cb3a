"""What the agents send: facts, dead letters and the balance postings of a batch.

Breaks, postings, status queries, links, claims and dead letters are facts and stay
one message each, sent to the partition their key belongs to, whichever partition
the batch's other messages came from. A fact of an order is also kept in the order's
outbox until its batch is committed (`streams.checkpoint`; `streams.recovery` sends
it again after a crash). A posting is applied to the `balances` table shard of the
message's partition as it is sent.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from streams.checkpoint import Checkpoint, dumps
from tally.core.events import DeadLetter, InvalidEvent
from tally.core.ledger import Balance, balance_key
from tally.core.pipeline import partition_for
from tally.core.realtime import Outputs

if TYPE_CHECKING:
    from streams.handles import Tally
    from streams.metrics import WorkerMetrics


class Emitter:
    """The outputs of the batch being made (into its checkpoint's outbox)."""

    def __init__(self, t: Tally, metrics: WorkerMetrics) -> None:
        self.n = t.settings.partitions
        self.names = {
            k: topic.get_topic_name() for k, topic in t.topics.items() if k != "reconcile"
        }
        self.stats = t.stats
        self.metrics = metrics
        self.ck = t.checkpoint
        self.balances = t.writers["balances"]
        self.facts: dict[str, list[list[Any]]] = {}  # the batch's facts by their order
        self.pending_latency: list[int] = []  # ingest times of the batch's breaks

    def output(
        self,
        kind: str,
        partition: int,
        key: str | None,
        value: dict[str, Any],
        into: Checkpoint | None = None,
    ) -> None:
        ck = self.ck if into is None else into
        ck.outbox.add(
            self.names[kind], partition, None if key is None else key.encode(), dumps(value)
        )

    def dead_letter(self, msg: Any, exc: InvalidEvent, into: Checkpoint | None = None) -> None:
        dl = DeadLetter.of(
            topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
            key=msg.key,
            value=msg.value if isinstance(msg.value, bytes) else bytes(msg.value or b""),
            error=exc,
            dead_at_ms=int(time.time() * 1000),
        )
        key = dl.dead_letter_id
        self.output("dead-letter", partition_for(key, self.n), key, dl.to_json(), into)
        self.stats.dead_letters[exc.code] += 1
        self.metrics.dead_letter(exc.code)

    def fact(self, txn_id: str, kind: str, partition: int, key: str, value: dict[str, Any]) -> None:
        """An output that is a fact of order `txn_id`: sent, and kept in the order's
        outbox until the batch is committed (streams.checkpoint)."""
        self.output(kind, partition, key, value)
        found = self.facts.get(txn_id)
        if found is None:
            found = self.facts[txn_id] = []
        found.append([kind, partition, key, value])

    def emit(self, out: Outputs, partition: int, ingested_ms: int, now_ms: int) -> None:
        """A message's facts, each one message, to its key's partition."""
        fact, stats, metrics, n = self.fact, self.stats, self.metrics, self.n
        for b in out.breaks:
            b.detected_at_ms = now_ms
            b.trigger_ingested_at_ms = ingested_ms
            fact(b.txn_id, "breaks", partition, b.txn_id, b.to_json())
            stats.breaks[b.kind] += 1
            metrics.break_sent(b, now_ms, ingested_ms)
            if ingested_ms:
                self.pending_latency.append(ingested_ms)
        for posting in out.postings:
            fact(posting.txn_id, "postings", partition, posting.txn_id, posting.to_json())
            metrics.posting_sent(posting, now_ms, ingested_ms)
            balances = self.balances
            for account, legs in posting.legs_by_account():
                key = f"{balance_key(account, posting.currency)}|{partition}"
                bal = balances.get(key) or Balance(account, posting.currency)
                bal.apply(legs)
                balances[key] = bal
        for q in out.queries:
            fact(q.txn_id, "status-queries", partition, q.txn_id, q.to_json())
            metrics.status_query(q.channel_id)
        for link in out.links:
            original = link.original_txn_id
            fact(
                link.reversal_txn_id, "links", partition_for(original, n), original, link.to_json()
            )
        for c in out.claims:
            fact(c.txn_id, "success-claims", partition_for(c.key, n), c.key, c.to_json())
