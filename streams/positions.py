"""Where each input partition's processing stands: the next offset a worker must
process, so that no message is skipped and none is processed twice in a row.

A Kafka consumer reads a partition in offset order from the group's committed
offset. Faust's fetch pipeline can still hand a worker a partition's messages with a
hole in them around a rebalance: it resumes the input partitions before it seeks
them to the committed offsets, and messages fetched before the seek race the seek
(seen in the takeover test: a worker processed offsets up to 366, then 416 — the 49
between never reached the agent, and a later batch's offset commit would have
skipped them). Offsets are committed by the worker itself (`streams.checkpoint`), so
a hole would be a lost event.

`InputPositions` admits a message only if it is the next one: the first after an
assignment must be at the group's committed offset (or, with none, at the start of
the partition's log, where the worker seeks it: `streams.app`), then each the one
after the last. A message at an earlier offset was processed already (read again after a
seek): it is dropped. A message past the next offset is a *hole*: it is dropped and
the worker reads the partition again from the next offset (`streams.agents`). A
hole that is really in the log (Apache Kafka's transaction markers, compaction:
offsets that hold no message) is confirmed by reading the log and stepped over.
Pure: no I/O here.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

TopicPartition = tuple[str, int]


class Admit(Enum):
    NEXT = "next"  # process it
    SEEN = "seen"  # processed before (read again): drop
    HOLE = "hole"  # past the next offset: drop, read the partition again


class InputPositions:
    """The next offset to process per input topic-partition, since the assignment."""

    def __init__(self, committed: Callable[[TopicPartition], int | None]) -> None:
        # the group's committed offset as the consumer seeked to it on assignment
        # (None: nothing committed yet — the first message read starts the partition)
        self.committed = committed
        self.next: dict[TopicPartition, int] = {}
        self.refilling: set[TopicPartition] = set()  # holes being read again

    def reset(self) -> None:
        """A new assignment: every partition starts again at its committed offset."""
        self.next.clear()
        self.refilling.clear()

    def admit(self, tp: TopicPartition, offset: int) -> Admit:
        expected = self.next.get(tp)
        if expected is None:
            expected = self.committed(tp)
        if expected is None or offset == expected:
            self.next[tp] = offset + 1
            return Admit.NEXT
        return Admit.SEEN if offset < expected else Admit.HOLE

    def expected(self, tp: TopicPartition) -> int | None:
        """The offset the partition must deliver next (None: not known yet)."""
        found = self.next.get(tp)
        return self.committed(tp) if found is None else found

    def step_over(self, tp: TopicPartition, first: int) -> None:
        """The log holds nothing between the next offset and `first`."""
        expected = self.expected(tp)
        assert expected is not None and first > expected, (tp, expected, first)
        self.next[tp] = first
