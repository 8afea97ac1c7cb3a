"""After a crash: what a partition's recovered state may hold unsent, and balance
shards that do not add up to their orders.

Each order keeps the facts of the last batch that changed it (its outbox) until the
batch's outputs are acknowledged; then a marker `sent|<p>` in the watermarks table
says so for every partition the batch wrote (`markers`), and the outbox is kept only
in the changelog (`sent`). Before a partition's first message after it is assigned
(its tables just recovered) `Recovery.recover` sends again the outbox of every order
changed by a batch later than the marker, and corrects the partition's balance shards
from its orders' positions (`heal_balances`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from streams.checkpoint import dumps
from streams.emit import Emitter
from tally.core.ledger import Balance, balances_from_positions
from tally.core.pipeline import partition_for

if TYPE_CHECKING:
    from streams.handles import Tally

log = logging.getLogger("streams.agents")


def sent(states: list[Any], seq: int) -> Callable[[], None]:
    """After the batch's outputs are acknowledged its orders' outboxes are kept
    only in the changelog (a recovering worker reads the markers to skip them)."""

    def done() -> None:
        for state in states:
            if state.outbox_seq == seq:
                state.outbox = []

    return done


class Recovery:
    """Per partition, once after each assignment: resend unsent outboxes, heal shards."""

    def __init__(self, t: Tally, emitter: Emitter) -> None:
        self.orders = t.writers["orders"]
        self.balances = t.writers["balances"]
        self.watermarks = t.writers["watermarks"]
        self.ck = t.checkpoint
        self.stats = t.stats
        self.n = t.settings.partitions
        self.emitter = emitter
        self.checked: set[int] = set()  # partitions recovered since the assignment

    def markers(self, partitions: set[int]) -> Callable[[int, Any], None]:
        watermarks = self.watermarks

        def write(completed_seq: int, state: Any) -> None:
            """Every batch up to `completed_seq` is acknowledged, outputs included:
            say so in the state of each partition this batch writes (`sent|<p>`)."""
            if not len(state):
                return  # the batch writes no state (duplicates only): nothing to mark
            for partition in sorted(partitions):
                key = f"sent|{partition}"
                if watermarks.data.get(key) == completed_seq:
                    continue
                watermarks.data[key] = completed_seq
                state.add(watermarks.changelog_topic, partition, dumps(key), dumps(completed_seq))

        return write

    def heal_balances(self, partition: int, states: list[Any]) -> None:
        """Make the partition's balance shards agree with its orders' positions.

        A batch changes orders and the balance shards of their postings; the
        changelog records of one batch are separate writes, so a worker killed
        between them comes back with an order that says "posted" and a shard that
        missed it (the replayed message is a duplicate for the order and posts
        nothing), or the reverse. The orders are the truth
        (`balances_from_positions`): a shard that differs is corrected, counted as
        one more posting (its version moves on), logged and published."""
        balances = self.balances
        want = balances_from_positions(states)
        suffix = f"|{partition}"
        have = {k[: -len(suffix)]: bal for k, bal in balances.data.items() if k.endswith(suffix)}
        balances.partition = partition
        for key in sorted(want.keys() | have.keys()):
            old = have.get(key)
            figures = want.get(key, {})
            if (old.figures() if old is not None else {}) == figures:
                continue
            account, currency = key.rsplit("|", 1)
            bal = Balance(account, currency, dict(figures), (old.postings if old else 0) + 1)
            balances[f"{key}{suffix}"] = bal
            self.stats.balances_healed += 1
            log.warning(
                "balance %s of partition %d did not add up to its orders' positions "
                "(a crash between changelog writes): corrected from %s to %s",
                key,
                partition,
                old.figures() if old is not None else {},
                figures,
            )

    def recover(self, partition: int) -> None:
        """Before a partition's first message after it is assigned (its tables just
        recovered): send again what its recovered state may hold unsent — the outbox
        of every order changed by a batch later than the partition's `sent|<p>`
        marker — and correct the balance shards from the orders' positions."""
        ck = self.ck
        sent_seq = self.watermarks.data.get(f"sent|{partition}", 0)
        ck.seen(sent_seq)
        resent = 0
        n = self.n
        states = [st for k, st in self.orders.data.items() if partition_for(k, n) == partition]
        for state in states:
            if state.outbox_seq <= sent_seq:
                if state.outbox:
                    state.outbox = []  # sent: kept in the changelog only
                continue
            ck.seen(state.outbox_seq)
            for kind, p, key, value in state.outbox:
                self.emitter.output(kind, p, key, value)
            resent += 1
        self.heal_balances(partition, states)
        self.stats.outboxes_resent += resent
        if resent:
            log.info("partition %d: sent again the outputs of %d orders", partition, resent)
