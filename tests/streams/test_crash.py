"""kill -9 at random moments while the worker is busy: nothing may be lost.

The same simulated traffic (SimConfig(events=50_000)) goes through two fresh
embedded Tansu brokers, each fed the whole input before its first worker starts
(so a worker always has a backlog); the two runs go side by side:

- the reference: one `python -m tally run --no-sink` worker, never interrupted;
- the crashed run: one worker at a time, SIGKILLed (its whole process group) six
  times at random moments and restarted each time with the same settings and
  consumer group, until the input is drained. A kill is only sent to a busy worker:
  its committed position in the input moved since it was started (and within the
  last 15 s), and input is left at the moment of the kill (asserted, and printed per
  kill). The delays come from `random.Random(seed)`; the seed is printed and
  `TALLY_CRASH_SEED=<seed>` replays the schedule (as far as timing allows).

Both runs' output topics are stored into ClickHouse (chDB, a database per run) by
the sink (`sinks.runner.SinkRunner`) and compared after its de-duplication (FINAL),
as sets or maps by id, which must be identical:

- breaks: (break_id, kind, txn_id);
- order states, the latest per txn_id: our status, the channel's status, standing,
  resolved, breaks;
- each order's final position: the sum of its postings' legs per account, bucket,
  component and currency; and the legs' sums over all postings;
- balances per account (the sum of its shards): every figure but the count of
  postings;
- dead letters (dead_letter_id).

Also, in both runs: no two rows of one identity after FINAL, every posting whole
(legs summing to zero per bucket and currency); and the reference's breaks are the
simulator's known answer.

Not compared as sets, because they differ between two *uninterrupted* runs of this
same pre-fed input (measured: 31,740 vs 11,413 posting ids, 351 vs 63 status
queries, and 5 orders' `reversed` flag): the posting ids (an order's postings are
the steps of its position, and how many steps depends on whether its transaction or
its callback was read first, which the two input topics do not fix), the status
queries (whether a pending order's query timer fires before its evidence is read
depends on how far the partition's event time got: the same interleaving), the
`reversed` flag of closed/failed orders, an order's version and a balance's count of
postings (both count steps). docs/realtime.md: the final positions, the balances
and the set of breaks must not depend on it. Their counts are printed.

Workers run the code of the tree this file is in (cwd and PYTHONPATH = that tree),
not the pip-installed one; the test checks it.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tally.config import Settings
from tally.sim.traffic import SimConfig, generate
from tests.clickhouse import drop_database, get_chdb_dir, unique_db
from tests.streams.crashrun import (
    ROOT,
    CrashCluster,
    differences,
    prefeed,
    run_uninterrupted,
    run_with_kills,
    start_cluster,
    stored_results_of,
)

pytestmark = [pytest.mark.broker, pytest.mark.clickhouse]

EVENTS = 50_000
KILLS = 6
SIM_SEED = 29
# read at import: the suite's autouse fixture removes TALLY_* from the environment
_SEED = os.environ.get("TALLY_CRASH_SEED")
SEED = int(_SEED) if _SEED else random.randrange(2**31)

COMPARED = ("breaks", "orders", "positions", "legs", "balances", "dead_letters")


@pytest.fixture()
def clusters(tmp_path: Path) -> Iterator[Any]:
    """Fresh brokers; every worker still alive is SIGKILLed and every broker stopped
    at teardown, whatever happened."""
    made: list[CrashCluster] = []

    async def make(name: str) -> CrashCluster:
        c = await start_cluster(tmp_path / name)
        made.append(c)
        return c

    yield make
    for c in made:
        c.kill_all()


@pytest.fixture()
def databases(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Settings for a fresh chDB database per call, dropped at teardown."""
    made: list[dict[str, Any]] = []

    def make() -> dict[str, Any]:
        values = {"data_dir": str(get_chdb_dir(request)), "clickhouse_database": unique_db("crash")}
        made.append(values)
        return values

    yield make
    for values in made:
        drop_database(values)


async def test_kill9_at_random_moments_loses_nothing(clusters: Any, databases: Any) -> None:
    print(f"\ncrash seed {SEED} (replay: TALLY_CRASH_SEED={SEED})", flush=True)
    rng = random.Random(SEED)
    t0 = time.monotonic()
    sim = generate(
        SimConfig(events=EVENTS, seed=SIM_SEED, id_prefix=f"k{uuid.uuid4().hex[:4]}-"),
        Settings(_env_file=None).policies(),
    )
    traffic = sim.envelopes
    assert len(traffic) >= EVENTS

    ref: CrashCluster = await clusters("reference")
    crashed: CrashCluster = await clusters("crashed")
    here = Path(await asyncio.to_thread(ref.code_of_workers)).resolve()
    assert here.is_relative_to(ROOT), f"the workers would run {here}, not {ROOT}"
    await asyncio.gather(prefeed(ref, traffic), prefeed(crashed, traffic))
    ref_s, run = await asyncio.gather(
        run_uninterrupted(ref), run_with_kills(crashed, KILLS, rng, timeout=900)
    )
    ref.kill_workers()  # done: only the brokers stay needed
    crashed.kill_workers()
    ref_stored = await stored_results_of(ref, databases())
    got = await stored_results_of(crashed, databases())

    diffs = {k: differences(ref_stored[k], got[k]) for k in COMPARED}
    counts = {k: len(ref_stored[k]) for k in COMPARED}
    n_diff = {k: n for k, (n, _) in diffs.items()}
    print(
        f"crash: seed {SEED}, {len(traffic):,} messages ({EVENTS:,} events), "
        f"{len(run.kills)} kills after {[k.up_s for k in run.kills]} s of life with "
        f"{[k.left for k in run.kills]} input messages left, crashed run {run.seconds:.0f} s, "
        f"reference {ref_s:.0f} s, test {time.monotonic() - t0:.0f} s; compared {counts}; "
        f"differences {n_diff}; postings {len(ref_stored['postings']):,} vs "
        f"{len(got['postings']):,} ids, status queries {len(ref_stored['queries'])} vs "
        f"{len(got['queries'])}; unbalanced postings {len(got['unbalanced_postings'])}; "
        f"duplicates after FINAL {sum(got['duplicates'].values())}; rows before FINAL "
        f"{got['raw_rows']} (reference {ref_stored['raw_rows']})",
        flush=True,
    )

    assert len(run.kills) >= KILLS
    for r in (ref_stored, got):
        assert not any(r["duplicates"].values()), r["duplicates"]
        assert not r["unbalanced_postings"], sorted(r["unbalanced_postings"])[:5]
    bad = {k: d for k, (n, d) in diffs.items() if n}
    for txn in list(diffs["positions"][1])[:3]:  # the stored legs of a differing order
        for name, r in (("reference", ref_stored), ("crashed", got)):
            print(f"{txn} {name}: {r['posting_rows'].get(txn)}")
    assert not bad, f"the crashed run differs from the reference (seed {SEED}): {bad}"
    expected = {(kind, txn) for _, kind, txn in ref_stored["breaks"]}
    assert expected == sim.expected, differences(sim.expected, expected)
