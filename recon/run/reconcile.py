"""`recon.run.run`: reconcile one channel and business date, store the run, report
what changed, update suspense."""

from __future__ import annotations

import json
import time
from datetime import date
from typing import Any

from recon import suspense
from recon.run.decisions import decisions_of
from recon.run.model import CLASSES, RUN_COLUMNS, Change, ReconError, RunOutcome, day_of
from recon.run.residue import link_params, residue
from recon.run.sql import classify_sql, ledger_sql, lines_sql
from recon.run.stored import (
    Delivery,
    deliveries,
    diff,
    new_run_id,
    previous_run,
    run_summary,
    tolerated_of,
)
from sinks.backend import Backend
from tally.core.eod import Day, carried_ledger_detail, carried_statement_detail
from tally.core.matching import Link, Rules, find_links
from tally.core.policy import ChannelPolicy


def run(
    db: Backend,
    channel: str,
    day: date,
    policy: ChannelPolicy,
    *,
    now_ms: int | None = None,
    sync_suspense: bool = True,
    dry_run: bool = False,
) -> RunOutcome:
    """Reconcile (channel, day) against the statement in force; store the run and its
    results; report what changed since the previous run; update suspense.

    dry_run: classify and report the same way, then take the results back out: no
    run is recorded and suspense is not touched (the results are written under a
    `dry:` run id and removed; ClickHouse has no transaction to roll back)."""
    t0 = time.monotonic()
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    d = day_of(policy, day)
    rules = Rules.of(policy)
    vers = deliveries(db, channel, [d.prev, day, d.next])
    if day not in vers:
        raise ReconError(
            f"no statement loaded for channel {channel!r} on {day.isoformat()}: "
            "load it first (`tally statements load FILE --channel ...`)"
        )
    prev_run = previous_run(db, channel, day)
    run_id = ("dry:" if dry_run else "") + new_run_id(channel, day, now_ms)
    params = _params(run_id, channel, d, vers, rules)
    links: dict[int, Link] = {}
    if rules.searching:
        links = find_links(*residue(db, params, rules), rules, decisions_of(db, channel, day))
        params.update(link_params(links))
    db.execute(classify_sql(d.prev in vers, d.next in vers, bool(links)), params)
    summary = run_summary(db, channel, day, run_id)
    tolerated = tolerated_of(db, channel, day, run_id)
    n_ledger = db.query(f"SELECT count() AS n FROM ({ledger_sql('d')})", params)[0]["n"]
    n_lines = db.query(f"SELECT count() AS n FROM ({lines_sql('d', 'n_d')})", params)[0]["n"]
    out = RunOutcome(
        run_id=run_id,
        channel_id=channel,
        business_date=day,
        delivery=vers[day].delivery,
        checksum=vers[day].checksum,
        ledger_items=int(n_ledger),
        statement_items=int(n_lines),
        summary=summary,
        previous_run=prev_run,
        changes=[],
        seconds=0.0,
        neighbours={
            d.prev.isoformat(): vers[d.prev].delivery if d.prev in vers else None,
            d.next.isoformat(): vers[d.next].delivery if d.next in vers else None,
        },
        tolerated=tolerated,
        dry_run=dry_run,
    )
    out.changes = _store(db, out, params, now_ms)
    if sync_suspense and not dry_run:
        _sync_suspense(db, out, policy, now_ms)
    out.seconds = time.monotonic() - t0
    return out


def _params(
    run_id: str, channel: str, d: Day, vers: dict[date, Delivery], rules: Rules
) -> dict[str, Any]:
    """The query parameters of a run of (channel, d.day)."""
    return {
        "run": run_id,
        "c": channel,
        "d": d.day.isoformat(),
        "dprev": d.prev.isoformat(),
        "dnext": d.next.isoformat(),
        "n_d": vers[d.day].delivery,
        "n_dprev": vers[d.prev].delivery if d.prev in vers else 0,
        "n_dnext": vers[d.next].delivery if d.next in vers else 0,
        "start_ms": d.start_cutoff_ms,
        "end_ms": d.end_cutoff_ms,
        "carry": d.carry_ms,
        "lc_next": carried_ledger_detail(d.next, d.next in vers),
        "lc_prev": carried_ledger_detail(d.prev, d.prev in vers),
        "sc_next": carried_statement_detail(d.next),
        "sc_prev": carried_statement_detail(d.prev),
        "atol": str(rules.amount_tol),
        "abps": rules.amount_bps,
        "ftol": str(rules.fee_tol),
    }


def _store(db: Backend, out: RunOutcome, params: dict[str, Any], now_ms: int) -> list[Change]:
    """Record the run (a dry run: take its results back out); the changes since the
    previous run."""
    channel, day, run_id, prev_run = out.channel_id, out.business_date, out.run_id, out.previous_run
    counts = {c: sum(n for n, _ in out.summary.get(c, {}).values()) for c in CLASSES}
    finished = int(time.time() * 1000)
    if out.dry_run:
        changes = diff(db, channel, day, prev_run, run_id) if prev_run else []
        db.execute(
            "ALTER TABLE {db}.recon_results DELETE WHERE channel_id = %(c)s "
            "AND business_date = toDate(%(d)s) AND run_id = %(run)s",
            params,
        )
        return changes
    db.insert(
        "recon_runs",
        RUN_COLUMNS,
        [
            (
                run_id,
                channel,
                day,
                out.delivery,
                out.checksum,
                out.ledger_items,
                out.statement_items,
                json.dumps(counts, separators=(",", ":")),
                now_ms,
                max(finished, now_ms),
            )
        ],
    )
    return diff(db, channel, day, prev_run, run_id) if prev_run else []


def _sync_suspense(db: Backend, out: RunOutcome, policy: ChannelPolicy, now_ms: int) -> None:
    day = out.business_date
    today = policy.business_date(now_ms)
    # S7: a day reconciled before and already past is settled; what a later run
    # finds is posted as a break of the current day.
    post_to = today if (out.previous_run is not None and day < today) else day
    # real-time breaks first, so that this run clears those it finds matched
    parked = suspense.sync_breaks(db, day=day, channel=out.channel_id, now_ms=now_ms)
    out.suspense = suspense.sync_run(db, out.run_id, post_to=post_to, now_ms=now_ms)
    out.suspense.update({f"breaks_{k}": v for k, v in parked.items()})
    out.posted_to = post_to
