"""`tally recon run`: one channel and business date, ledger vs statement, in ClickHouse.

- `recon.run.sql`: the comparison as one `INSERT ... SELECT` (the SQL twin of
  `tally.core.eod.classify`);
- `recon.run.residue`: what no id resolves, for the matching search;
- `recon.run.reconcile`: `run`, one run of (channel, day) stored, with suspense;
- `recon.run.stored`: the stored runs, their summaries, differences and results;
- `recon.run.decisions`: people's accept / reject of proposed lines;
- `recon.run.model`: the columns, `RunOutcome`, `Change`, `ReconError`.
"""

from recon.run.decisions import (
    DECISION_COLUMNS,
    Proposed,
    candidates_in,
    decide,
    decision_history,
    decisions_of,
    proposed_items,
)
from recon.run.model import RESULT_COLUMNS, RUN_COLUMNS, Change, ReconError, RunOutcome, day_of
from recon.run.reconcile import run
from recon.run.sql import classify_sql
from recon.run.stored import (
    Delivery,
    channels_of,
    deliveries,
    diff,
    latest_run,
    new_run_id,
    previous_run,
    results,
    run_summary,
    tolerated_of,
)

__all__ = [
    "DECISION_COLUMNS",
    "RESULT_COLUMNS",
    "RUN_COLUMNS",
    "Change",
    "Delivery",
    "Proposed",
    "ReconError",
    "RunOutcome",
    "candidates_in",
    "channels_of",
    "classify_sql",
    "day_of",
    "decide",
    "decision_history",
    "decisions_of",
    "deliveries",
    "diff",
    "latest_run",
    "new_run_id",
    "previous_run",
    "proposed_items",
    "results",
    "run",
    "run_summary",
    "tolerated_of",
]
