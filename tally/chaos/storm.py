"""Crash storms: a simulated day processed once uninterrupted and once while its
workers are killed with kill -9, compared after the fact through ClickHouse.

The same simulated traffic goes to two fresh embedded brokers, all of it before the
first worker starts (a worker always has a backlog), and the two runs go side by side:

- the reference: one `python -m tally run --no-sink` worker, never interrupted;
- the storm: workers of one consumer group killed (SIGKILL to the process group)
  `kills` times and restarted, with the same settings, until the input is drained.
  The kinds of kill (`plan`), in an order drawn from `random.Random(seed)`:

  busy      the only worker, at a random moment while it processes: its committed
            position moved since it started and within the last 15 s, input is left;
  recovery  a worker just started, after the group assigned it partitions and before
            its recovery ended ("Worker ready": tables restored from their changelogs,
            inputs sought to the committed offsets), so before it made progress;
  takeover  one of two workers sharing the partitions, both processing; the survivor
            must be assigned every partition, recover the victim's tables and move on.

  The delays come from the same `random.Random(seed)`: the seed replays the schedule
  (as far as timing allows).

Then each run's output topics are stored into ClickHouse by the sink and compared
(`tally.chaos.compare`: what is compared, and why the rest is not), the group's
committed offsets are checked against the true end of every input partition, and
every fed message is accounted for (applied or dead-lettered).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sinks.backend import connect
from tally.chaos.cluster import (
    PARTITIONS,
    ROOT,
    Cluster,
    Position,
    Progress,
    Worker,
    WorkerFailed,
    drained,
    offsets_at_end,
    prefeed,
    start_cluster,
)
from tally.chaos.compare import Figures, Report, account, differences, stored_results_of
from tally.config import Settings
from tally.core.pipeline import Envelope
from tally.sim.traffic import SimConfig, generate

MAX_DELAY_S = 12.0  # longest wait from a worker's first progress to its kill
DRAIN_S = 1200.0  # the time kept for draining the input after the kills
BUSY_WITHIN_S = 15.0  # a busy worker's position moved this recently (a commit took 7 s)
Log = Callable[[str], None]


class StormError(RuntimeError):
    """The storm could not be run as planned (not a difference in the results)."""


class InputRanOut(StormError):
    """No input left to kill a busy worker on."""


def plan(kills: int, rng: random.Random) -> list[str]:
    """The kinds of the `kills` kills, in order: the first always `busy` (so that a
    recovery has something to restore), about 15 % `recovery` (at least one from 2
    kills on) and 10 % `takeover` (at least one from 3 on), the rest `busy`."""
    if kills < 1:
        return []
    recovery = max(1, round(kills * 0.15)) if kills >= 2 else 0
    takeover = max(1, kills // 10) if kills >= 3 else 0
    rest = ["recovery"] * recovery + ["takeover"] * takeover
    rest += ["busy"] * (kills - 1 - len(rest))
    rng.shuffle(rest)
    return ["busy", *rest]


@dataclass
class Kill:
    n: int
    kind: str  # busy | recovery | takeover (as done: see Storm.recovery)
    worker: str
    phase: str  # what the victim's log said at the kill (tally.chaos.cluster.Worker.phase)
    up_s: float  # the victim's life, start to kill
    start_pos: int  # committed input position when the step began
    kill_pos: int  # committed input position just before the kill
    end: int  # input end offset (sum over the fed partitions)
    took_over_s: float | None = None  # takeover: kill to the survivor's progress

    def render(self) -> str:
        extra = f", the survivor moved on {self.took_over_s} s after" if self.took_over_s else ""
        return (
            f"kill {self.n} ({self.kind}): {self.worker} {self.phase} after {self.up_s} s, "
            f"{self.end - self.kill_pos:,} input messages left{extra}"
        )


@dataclass
class Storm:
    """Runs a plan of kills against a cluster (the input fed, no worker yet)."""

    c: Cluster
    prog: Progress
    rng: random.Random
    end: int
    deadline: float
    log: Log
    rate: float = 0.0  # committed input messages per second of a worker, as seen last
    restore_s: float = 1.0  # a recovery's duration, as seen last
    kills: list[Kill] = field(default_factory=list)
    incidents: list[str] = field(default_factory=list)  # workers that failed by themselves
    misses: int = 0  # recovery kills that came too late
    ran_out: int = 0  # busy kills not done: the input ran out first

    async def run(self, kinds: list[str]) -> None:
        """The kills planned, as long as DRAIN_S are left for draining."""
        todo = list(kinds)
        while todo:
            if time.monotonic() > self.deadline - DRAIN_S:
                self.log(f"  out of time for killing: {len(todo)} kills not done")
                return
            kind = todo.pop(0)
            done = len(self.kills)
            try:
                await self.step(kind, todo)
            except InputRanOut:
                # a live worker drained the input during the last step (e.g. while
                # another one recovered): the busy kills left cannot be done
                todo.insert(0, kind)
                if any(k != "busy" for k in todo):
                    raise StormError(f"the input ran out before the kills {todo}") from None
                self.ran_out = len(todo)
                self.log(f"  the input ran out: {self.ran_out} busy kills not done")
                return
            except WorkerFailed as exc:
                self.failed(exc)
                if len(self.kills) == done:
                    todo.insert(0, kind)  # the step again, with a fresh worker

    async def drain(self) -> None:
        """Until the input is drained, restarting a worker that fails by itself."""
        while True:
            if not self.c.live():
                self.c.start_worker()
            try:
                await drained(self.c, timeout=self.remaining(), check=self.check_live)
                return
            except WorkerFailed as exc:
                self.failed(exc)

    def check_live(self) -> None:
        for w in self.c.live():
            w.check_alive()

    def failed(self, exc: WorkerFailed) -> None:
        """A worker that stopped working by itself: a finding; SIGKILLed, not a kill."""
        w = exc.worker
        self.incidents.append(f"{exc.reason} after {time.monotonic() - w.started:.0f} s")
        self.log(f"  INCIDENT: {self.incidents[-1]}; log {w.log}")
        if w.alive():
            self.c.kill9(w)
        if len(self.incidents) > 5:
            raise StormError(f"workers failed by themselves {len(self.incidents)} times")

    async def step(self, kind: str, todo: list[str]) -> None:
        if kind == "takeover":
            await self.takeover(len(todo) + 1)
        elif kind != "recovery":
            await self.busy(len(todo) + 1)
        elif not await self.recovery():
            self.misses += 1
            # it recovered before its kill: killed busy instead (one of the busy kills
            # planned, if one is left), and the recovery kill is tried again
            if "busy" in todo:
                todo.remove("busy")
            await self.busy(len(todo) + 2, self.c.live()[-1])
            if self.misses <= 3:
                todo.insert(0, "recovery")

    # ---------------------------------------------------------------- the kinds

    async def busy(self, left: int, w: Worker | None = None) -> None:
        live = self.c.live()
        w = w or (live[0] if live else self.c.start_worker())
        start_pos = await self.prog.position()
        pos, t = await self.moved(w, start_pos, or_end=True)
        if not self.rate:  # the first worker: its rate from a second move
            pos2, t2 = await self.moved(w, pos)
            self.rate = (pos2 - pos) / max(t2 - t, 1e-3)
            pos, t = pos2, t2
        kill_pos = await self.wait_busy(pos, t, left, [w])
        self._record("busy", w, start_pos, kill_pos)

    async def recovery(self) -> bool:
        """Start a worker and kill it once assigned, before "Worker ready", after a
        random part of the last recovery's duration. False (not killed) if it
        recovered first. Another live worker (after a takeover) keeps working."""
        start_pos = await self.prog.position()
        w = self.c.start_worker()
        while w.phase() not in ("restoring", "ready"):
            await self.pause(w, 0.05)
        until = time.monotonic() + self.rng.uniform(0.0, 0.8) * self.restore_s
        while time.monotonic() < until and w.phase() == "restoring":
            await self.pause(w, min(0.05, max(0.0, until - time.monotonic())))
        if w.phase() != "restoring":
            self.restore_s = max(0.2, min(self.restore_s, w.restore_seconds() or 1.0) / 2)
            self.log(f"  ({w.name} recovered before its kill: killed busy instead)")
            return False
        kill_pos = await self.prog.position()
        self._record("recovery", w, start_pos, kill_pos)
        if w.phase() != "restoring":  # ready between the look and the kill
            self.kills[-1].kind = "recovery-missed"
        return True

    async def takeover(self, left: int) -> None:
        live = self.c.live()
        a = live[0] if live else self.c.start_worker()
        b = self.c.start_worker()
        start_pos = await self.prog.position()
        shares = await self.c.balanced(timeout=self.remaining())
        if sorted(shares) != sorted([a.name, b.name]) or not all(shares.values()):
            raise StormError(f"takeover: the two workers do not share the input: {shares}")
        pos, t = await self.moved(b, await self.prog.position(), or_end=True)
        kill_pos = await self.wait_busy(pos, t, left, [a, b])
        victim, survivor = (a, b) if self.rng.random() < 0.5 else (b, a)
        self._record("takeover", victim, start_pos, kill_pos)
        killed_at = time.monotonic()
        after = await self.c.balanced(timeout=min(180.0, self.remaining()))
        if after != {survivor.name: set(range(PARTITIONS))}:
            raise StormError(f"takeover: {survivor.name} did not take every partition: {after}")
        await self.moved(survivor, await self.prog.position(), or_end=True)
        self.kills[-1].took_over_s = round(time.monotonic() - killed_at, 1)
        took = self.kills[-1].took_over_s
        self.log(f"    {survivor.name} took over every partition, moved on {took} s after the kill")

    # ------------------------------------------------------------------ helpers

    async def wait_busy(self, pos: int, t: float, left: int, ws: list[Worker]) -> int:
        """A random delay, then the committed position while the workers are busy: it
        moved within BUSY_WITHIN_S (else at its next move), and input is left. The
        delay is uniform(0.05, 0.9) x min(MAX_DELAY_S, estimated seconds of input left /
        kills left), so that every kill lands before the input runs out; if the workers
        turn out faster, the kill comes as soon as the input left would last the
        remaining kills a second each."""
        budget = (self.end - pos) / max(self.rate, 1.0) / left
        until = t + self.rng.uniform(0.05, 0.9) * min(budget, MAX_DELAY_S)
        start, start_t = pos, t
        last_pos, last_move = pos, t
        while (now := time.monotonic()) < until:
            await asyncio.sleep(min(0.2, until - now))
            p = await self.prog.position()
            if p != last_pos:
                last_pos, last_move = p, time.monotonic()
            for w in ws:
                w.check_alive()
            now_rate = (p - start) / max(time.monotonic() - start_t, 1e-3)
            if self.end - p <= now_rate * left:
                break
        kill_pos = await self.prog.position()
        if kill_pos != last_pos:
            last_pos, last_move = kill_pos, time.monotonic()
        if time.monotonic() > start_t + 1:
            self.rate = max(self.rate, (kill_pos - start) / (time.monotonic() - start_t))
        if kill_pos < self.end and time.monotonic() - last_move >= BUSY_WITHIN_S:
            # stalled (a worker reading partitions again after a restart): kill it as
            # soon as it moves again
            kill_pos, _ = await self.moved(ws[0], kill_pos, or_end=True)
        if kill_pos >= self.end:
            raise InputRanOut(
                f"kill {len(self.kills) + 1}: the input ran out (position {kill_pos:,} of "
                f"{self.end:,}): feed more events or plan fewer kills"
            )
        return kill_pos

    async def moved(self, w: Worker, since: int, or_end: bool = False) -> tuple[int, float]:
        """Until the committed position differs from `since`: (position, when)."""
        while True:
            pos = await self.prog.position()
            if pos != since or (or_end and pos >= self.end):
                return pos, time.monotonic()
            await self.pause(w, 0.1)

    async def pause(self, w: Worker, seconds: float) -> None:
        w.check_alive()
        if time.monotonic() > self.deadline:
            raise TimeoutError(f"storm: out of time; {w.name} {w.phase()}: {w.tail()}")
        await asyncio.sleep(seconds)

    def remaining(self) -> float:
        return max(10.0, self.deadline - time.monotonic())

    def _record(self, kind: str, w: Worker, start_pos: int, kill_pos: int) -> None:
        phase = w.phase()
        self.c.kill9(w)
        k = Kill(
            n=len(self.kills) + 1,
            kind=kind,
            worker=w.name,
            phase=phase,
            up_s=round(time.monotonic() - w.started, 2),
            start_pos=start_pos,
            kill_pos=kill_pos,
            end=self.end,
        )
        self.kills.append(k)
        seen = w.restore_seconds()
        if seen:
            self.restore_s = seen
        self.log(f"  {k.render()}")


# ------------------------------------------------------------------- the run


async def run_storm(
    events: int,
    kills: int,
    seed: int,
    workdir: Path,
    storage: dict[str, Any],
    log: Log,
    keep: bool = False,
) -> Report:
    """The whole storm: simulate `events` input messages (`seed`), run them through a
    reference and a storm of `kills` kills (`seed`), store both into ClickHouse
    (`storage`: Settings values naming it, a database per run is added) and compare.
    Worker and broker logs stay in `workdir`; the databases are dropped unless `keep`."""
    t0 = time.monotonic()
    rng = random.Random(seed)
    kinds = plan(kills, rng)
    sim = generate(SimConfig(events=events, seed=seed), Settings(_env_file=None).policies())
    traffic = sim.envelopes
    log(f"chaos seed={seed}: {len(traffic):,} input messages, kills planned {kinds}; in {workdir}")
    ref = await start_cluster(workdir / "reference")
    crashed = await start_cluster(workdir / "crashed")
    try:
        code = Path(await asyncio.to_thread(ref.code_of_workers)).resolve()
        if not code.is_relative_to(ROOT):
            raise StormError(f"the workers would run {code}, not the code under {ROOT}")
        places = await asyncio.gather(prefeed(ref, traffic), prefeed(crashed, traffic))
        if places[0] != places[1]:
            raise StormError("the two brokers placed the input at different offsets")
        deadline = time.monotonic() + DRAIN_S + 600 + 90 * kills
        ref_s, (done, storm_s) = await asyncio.gather(
            _reference(ref, deadline), _storm(crashed, kinds, rng, deadline, log)
        )
        log(f"  drained: storm {storm_s:.0f} s, reference {ref_s:.0f} s; storing into ClickHouse")
        figures = [await _figures(c, traffic, places[0], storage, keep) for c in (ref, crashed)]
    finally:
        for c in (ref, crashed):
            await asyncio.to_thread(c.kill_all)
    found = {(kind, txn) for _, kind, txn in figures[0].stored["breaks"]}
    return Report(
        seed=seed,
        events=len(traffic),
        kills=done.kills,
        incidents=done.incidents,
        planned=kinds,
        ran_out=done.ran_out,
        reference=figures[0],
        crashed=figures[1],
        known_breaks=differences(sim.expected, found),
        seconds={"storm": storm_s, "reference": ref_s, "total": time.monotonic() - t0},
        workdir=workdir,
    )


async def _reference(c: Cluster, deadline: float) -> float:
    t0 = time.monotonic()
    w = c.start_worker()
    await drained(c, timeout=max(60.0, deadline - time.monotonic()), check=w.check_alive)
    return time.monotonic() - t0


async def _storm(
    c: Cluster, kinds: list[str], rng: random.Random, deadline: float, log: Log
) -> tuple[Storm, float]:
    t0 = time.monotonic()
    async with Progress(c.broker.bootstrap) as prog:
        end = await prog.end()
        storm = Storm(c, prog, rng, end, deadline, log)
        await storm.run(kinds)
        await storm.drain()
        if await prog.position() != end:
            raise StormError(f"drained, but the committed position is not the end {end:,}")
    return storm, time.monotonic() - t0


async def _figures(
    c: Cluster,
    traffic: list[Envelope],
    places: list[Position],
    storage: dict[str, Any],
    keep: bool,
) -> Figures:
    offsets = await offsets_at_end(c.broker.bootstrap)
    c.kill_workers()  # done: only the broker stays needed
    name = f"chaos_{c.tmp.name}_{uuid.uuid4().hex[:8]}"
    s = c.settings.model_copy(update={**storage, "clickhouse_database": name})
    try:
        stored = await stored_results_of(s)
    finally:
        if not keep:
            db = connect(s)
            db.execute("DROP DATABASE IF EXISTS {db}")
            db.close()
    return Figures(stored, account(traffic, places, stored), offsets)
