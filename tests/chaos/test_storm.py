"""A small crash storm (`tally bench chaos` at test size): nothing may be lost.

The same simulated traffic (20,000 input messages, every anomaly, malformed input,
re-deliveries) through two fresh embedded brokers, pre-fed: a reference worker never
interrupted, and workers killed with kill -9 four times (`tally.chaos.storm.plan`):
busy ones at random moments, one during its recovery (assigned, before "Worker
ready") and one of two workers while both process, the other taking over. Both runs
stored into ClickHouse (chDB) by the sink and compared after FINAL as sets by id
(`tally.chaos.compare`: breaks, order states, positions, legs, balances, dead
letters; posting ids and status queries are not compared, and why); no duplicate
rows, every posting whole, every input partition committed to its log end, every fed
message applied or dead-lettered, the reference's breaks the simulator's answer.

The seed is printed; `TALLY_CHAOS_SEED=<seed>` replays it (as far as timing allows).
The full size is `tally bench chaos` (100,000 events, 20 kills: docs/reliability.md).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tally.chaos.cluster import ROOT, Cluster
from tally.chaos.storm import plan, run_storm
from tests.clickhouse import get_chdb_dir

pytestmark = [pytest.mark.broker, pytest.mark.clickhouse]

EVENTS = 20_000
KILLS = 4
# read at import: the suite's autouse fixture removes TALLY_* from the environment
_SEED = os.environ.get("TALLY_CHAOS_SEED")
SEED = int(_SEED) if _SEED else random.randrange(2**31)


def test_plan_has_every_kind_of_kill() -> None:
    for seed in range(20):
        kinds = plan(KILLS, random.Random(seed))
        assert kinds[0] == "busy" and len(kinds) == KILLS
        assert {"recovery", "takeover"} <= set(kinds)
    full = plan(20, random.Random(1))
    assert (full.count("recovery"), full.count("takeover"), len(full)) == (3, 2, 20)


def test_workers_run_this_tree(tmp_path: Path) -> None:
    here = Path(Cluster(tmp_path).code_of_workers()).resolve()
    assert here.is_relative_to(ROOT), f"the workers would run {here}, not {ROOT}"


async def test_kill9_storm_loses_nothing(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    print(f"\nchaos seed {SEED} (replay: TALLY_CHAOS_SEED={SEED})", flush=True)
    storage = {"data_dir": str(get_chdb_dir(request))}
    report = await run_storm(EVENTS, KILLS, SEED, tmp_path, storage, print)
    print(report.line(), flush=True)
    for p in report.problems():
        print(f"DIFFERENCE: {p}")
    kinds = report.kinds()
    assert kinds["recovery"] >= 1 and kinds["takeover"] >= 1, kinds
    assert report.ok, f"seed {SEED}: {report.problems()}"
    assert report.events >= EVENTS
    assert all(n for n in report.to_json()["compared"].values())  # something compared
