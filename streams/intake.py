"""Which of a batch's messages the agents process: the current generation's, each
partition's next offset only (`streams.positions`).

None during a rebalance, until Faust has sought the partitions to their committed
offsets in this generation (it reads them again from there; a partition whose
messages of this generation were left before the seek was noted is sought again
then: `streams.app.early_reads_to_seek`); none read in an earlier
group generation — their partition's owner reads them again from the committed
offsets (`streams.checkpoint`); per partition only the next offset each time: a
message read again is dropped, a hole before a message makes the worker read the
partition again from the next offset (`Intake.hole`, `Intake.refill`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from faust.types import TP

from streams.offsets import first_offset_from
from streams.positions import Admit, InputPositions

if TYPE_CHECKING:
    from streams.handles import Tally

log = logging.getLogger("streams.agents")
_REFILL_AGAIN_SECONDS = 2.0  # a hole at the same offset is read again after this long


def _spans(messages: Iterable[Any]) -> str:
    """Topic[partition]@first..last offsets (generation) of some messages, for a log."""
    spans: dict[tuple[str, int, Any], list[int]] = {}
    for m in messages:
        spans.setdefault((m.topic, m.partition, m.generation_id), []).append(m.offset)
    return ", ".join(
        f"{t}[{p}]@{min(o)}..{max(o)} (gen {g})" for (t, p, g), o in sorted(spans.items(), key=str)
    )


def sought_offset(app: Any, tp: TP) -> int | None:
    """The offset an input partition was sought to on assignment: the group's committed
    offset, or the start of its log if none (streams.app)."""
    offset = app.consumer._committed_offset.get(tp)
    if offset is None:
        offset = app.tally_start_offsets.get(tp)
    return None if offset is None else int(offset)


class Intake:
    """The input positions of one worker's agents, reset on every assignment."""

    def __init__(self, t: Tally) -> None:
        self.app = t.app
        self.stats = t.stats
        self.settings = t.settings
        self.positions = InputPositions(self.committed)
        self.refills: set[asyncio.Task[None]] = set()
        self.refilled: dict[tuple[str, int], tuple[int | None, float]] = {}  # tp -> from, when

    def committed(self, tp: tuple[str, int]) -> int | None:
        return sought_offset(self.app, TP(*tp))

    def current(self, events: Sequence[Any]) -> tuple[int | None, list[Any]]:
        """The batch's messages to process (see the module doc), and the generation."""
        app, positions, stats = self.app, self.positions, self.stats
        generation = app.consumer_generation_id
        sought = app.tally_sought_generation  # type: ignore[attr-defined]
        if sought != generation or not app.flow_control.is_active():
            stale = [e.message for e in events]
            messages: list[Any] = []
            if sought != generation:  # this generation's, maybe fetched after its seek
                early = app.tally_early_reads  # type: ignore[attr-defined]
                for m in stale:
                    if m.generation_id == generation:
                        early[TP(m.topic, m.partition)] = generation
        else:
            stale, messages = [], []
            for e in events:
                m = e.message
                if m.generation_id != generation:
                    stale.append(m)
                    continue
                tp = (m.topic, m.partition)
                first = tp not in positions.next
                verdict = positions.admit(tp, m.offset)
                if verdict is Admit.NEXT:
                    messages.append(m)
                    if first:
                        log.info(
                            "%s[%d]: reading from offset %d (group committed: %s)",
                            *tp,
                            m.offset,
                            self.committed(tp),
                        )
                elif verdict is Admit.SEEN:
                    stats.reread_dropped += 1
                else:
                    self.hole(m)
        if stale:
            stats.stale_dropped += len(stale)
            log.info(
                "left %d of %d messages for re-reading (read before a rebalance, "
                "generation now %s): %s",
                len(stale),
                len(events),
                generation,
                _spans(stale),
            )
        return generation, messages

    def hole(self, m: Any) -> None:
        """`m` is past its partition's next offset: the messages between never reached
        the agent. Read the partition again from the next offset (unless the log
        really holds nothing there)."""
        positions = self.positions
        tp = (m.topic, m.partition)
        self.stats.hole_dropped += 1
        expected = positions.expected(tp)
        last_from, last_at = self.refilled.get(tp, (None, 0.0))
        recently = last_from == expected and time.monotonic() - last_at < _REFILL_AGAIN_SECONDS
        if tp in positions.refilling or recently:
            return  # being read again (what arrives meanwhile was fetched before)
        self.refilled[tp] = (expected, time.monotonic())
        positions.refilling.add(tp)
        log.warning(
            "%s[%d]: offset %d arrived before %s..%d: reading the partition again from %s",
            *tp,
            m.offset,
            expected,
            m.offset - 1,
            expected,
        )
        task = asyncio.ensure_future(self.refill(tp, m.offset))
        self.refills.add(task)  # kept until done (the loop holds tasks weakly)
        task.add_done_callback(self.refills.discard)

    async def refill(self, tp: tuple[str, int], seen: int) -> None:
        positions = self.positions
        try:
            expected = positions.expected(tp)
            if expected is None:
                return
            first = await first_offset_from(self.settings.bootstrap_servers(), *tp, expected)
            if first is not None and expected < first <= seen:
                log.info("%s[%d]: offsets %d..%d hold no message", *tp, expected, first - 1)
                positions.step_over(tp, first)
            self.stats.refills += 1
            await self.app.consumer.seek_wait({TP(*tp): positions.expected(tp) or expected})
        except Exception:
            log.exception("reading %s[%d] again failed", *tp)
        finally:
            positions.refilling.discard(tp)
