"""Event time and timers of the real-time reconciler, per partition.

In: the event time of every message read (per input topic), idle wall-clock advances
(`on_tick`), and the timers an order arms (a status query due, an orphan deadline).
Out: the partition's watermark (persisted every `WATERMARK_PERSIST_STEP_MS`) and the
timers that fell due, handed to `_fire_query` / `_fire_orphan` (`tally.core.realtime`
says what they do), in event-time order.

A partition's watermark is the smaller of the latest event time seen on its two input
topics, less the allowed lateness; an input the `caught_up` hook reports as read to
its end does not hold the other back. Timers live in a heap per partition and are
rebuilt from the stored orders after a restart or a rebalance.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, MutableMapping

from tally.core.orders import OrderState
from tally.core.outputs import Outputs

# Timer kinds kept in the per-partition heap.
_QUERY = 0
_ORPHAN = 1
WATERMARK_PERSIST_STEP_MS = 1000
_SOURCES = ("transactions", "callbacks")
_partition_keys: dict[int, str] = {}


def _partition_key(partition: int) -> str:
    """The watermarks store's key of a partition."""
    key = _partition_keys.get(partition)
    if key is None:
        key = _partition_keys[partition] = str(partition)
    return key


def _always_caught_up(_partition: int, _source: str) -> bool:
    """No `caught_up` hook: one ordered log, every input counts as caught up."""
    return True


class Timers:
    """The per-partition watermarks and timer heaps; `Reconciler` is one."""

    def __init__(
        self,
        orders: MutableMapping[str, OrderState],
        watermarks: MutableMapping[str, int] | None,
        allowed_lateness_ms: int,
        partition_of: Callable[[str], int] | None,
        caught_up: Callable[[int, str], bool] | None,
    ) -> None:
        self.orders = orders
        self.watermarks: MutableMapping[str, int] = watermarks if watermarks is not None else {}
        self.lateness = allowed_lateness_ms
        self.caught_up = caught_up or _always_caught_up
        self._hw: dict[int, dict[str, int]] = {}  # latest event time per input topic
        self.partition_of = partition_of or (lambda _k: 0)
        self._wm: dict[int, int] = {}
        self._timers: dict[int, list[tuple[int, int, str]]] = {}

    def on_tick(self, partition: int, advance_ms: int) -> Outputs:
        """Wall clock kept the partition idle for `advance_ms`: move its watermark on."""
        self._ensure_partition(partition)
        hw = self._hw.setdefault(partition, {})
        if not hw or advance_ms <= 0:
            return Outputs()
        # idle: both inputs are caught up; event time moves on with the wall clock
        top = max(hw.values()) + advance_ms
        for source in _SOURCES:
            hw[source] = top
        return self._advance(partition, top - self.lateness)

    def watermark(self, partition: int = 0) -> int | None:
        return self._wm.get(partition)

    # ---------------------------------------------- what a due timer does

    def _fire_orphan(self, state: OrderState, due: int, out: Outputs) -> None:
        raise NotImplementedError

    def _fire_query(self, state: OrderState, due: int, partition: int, out: Outputs) -> None:
        raise NotImplementedError

    # ----------------------------------------------------------------- timers

    def _push(self, partition: int, due: int, kind: int, txn_id: str) -> None:
        heapq.heappush(self._timers.setdefault(partition, []), (due, kind, txn_id))

    def _observe(self, partition: int, source: str, event_ms: int, out: Outputs) -> None:
        hw = self._hw.get(partition)
        if hw is None:
            hw = self._hw[partition] = {}
        if event_ms > hw.get(source, -1):
            hw[source] = event_ms
        top = max(hw.values())
        low = top
        caught_up = self.caught_up
        if caught_up is not _always_caught_up:
            for src in _SOURCES:
                v = hw.get(src)
                if (v is None or v < top) and not caught_up(partition, src):
                    if v is None:
                        self._advance_into(partition, None, out)  # wait for the other input
                        return
                    low = min(low, v)
        to_ms = low - self.lateness
        wm = self._wm.get(partition)
        if wm is not None and to_ms <= wm:
            heap = self._timers.get(partition)
            if not heap or heap[0][0] > wm:
                return  # the watermark stays, no timer is due
        self._advance_into(partition, to_ms, out)

    def _advance(self, partition: int, to_ms: int | None) -> Outputs:
        out = Outputs()
        self._advance_into(partition, to_ms, out)
        return out

    def _advance_into(self, partition: int, to_ms: int | None, out: Outputs) -> None:
        wm = self._wm.get(partition)
        if to_ms is not None and (wm is None or to_ms > wm):
            self._wm[partition] = wm = to_ms
            key = _partition_keys.get(partition) or _partition_key(partition)
            if to_ms - self.watermarks.get(key, 0) >= WATERMARK_PERSIST_STEP_MS:
                self.watermarks[key] = to_ms
        if wm is None:
            return
        # timers armed behind the watermark (their order arrived late) fire now: the
        # outcome depends on event time, not arrival order
        heap = self._timers.get(partition)
        while heap and heap[0][0] <= wm:
            due, kind, txn_id = heapq.heappop(heap)
            state = self.orders.get(txn_id)
            if state is None:
                continue
            if kind == _ORPHAN and state.orphan_due_ms == due:
                self._fire_orphan(state, due, out)
            elif kind == _QUERY and state.query_due_ms == due:
                self._fire_query(state, due, partition, out)

    # ----------------------------------------------------- recovery / rebalance

    def _ensure_partition(self, partition: int) -> None:
        if partition in self._timers:
            return
        self._timers[partition] = []
        persisted = self.watermarks.get(str(partition))
        if persisted is not None:
            self._wm[partition] = persisted
            self._hw[partition] = {src: persisted + self.lateness for src in _SOURCES}
        self.rebuild(partition, self._states_of(partition))

    def _states_of(self, partition: int) -> Iterable[OrderState]:
        for k, s in list(self.orders.items()):
            if self.partition_of(k) == partition:
                yield s

    def rebuild(self, partition: int, states: Iterable[OrderState]) -> None:
        """Re-arm the timers of a partition from its stored orders (after a restart
        or when the partition is assigned to this worker)."""
        heap: list[tuple[int, int, str]] = []
        for s in states:
            if s.query_due_ms is not None:
                heap.append((s.query_due_ms, _QUERY, s.txn_id))
            if s.orphan_due_ms is not None:
                heap.append((s.orphan_due_ms, _ORPHAN, s.txn_id))
        heapq.heapify(heap)
        self._timers[partition] = heap

    def forget_partitions(self) -> None:
        """Called on rebalance: timers are rebuilt lazily for whatever is assigned."""
        self._timers.clear()
        self._wm.clear()
        self._hw.clear()
