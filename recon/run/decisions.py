"""People's decisions on proposed lines: accept or reject a candidate (append-only);
the next run of the day applies them."""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from datetime import date
from typing import Any

from recon.run.model import ReconError
from sinks.backend import Backend
from tally.core.matching import Decision, Decisions


def decisions_of(db: Backend, channel: str, day: date) -> Decisions:
    """What people accepted or rejected of the day's proposed lines, in order."""
    rows = db.query(
        "SELECT item_key, action, txn_id FROM {db}.recon_decisions FINAL "
        "WHERE channel_id = %(c)s AND business_date = toDate(%(d)s) "
        "ORDER BY at_ms, decision_id",
        {"c": channel, "d": day.isoformat()},
    )
    return Decisions.of(Decision(r["item_key"], r["action"], r["txn_id"]) for r in rows)


# ------------------------------------------------------------------ decisions

DECISION_COLUMNS = (
    "decision_id",
    "channel_id",
    "business_date",
    "item_key",
    "run_id",
    "action",
    "txn_id",
    "reason",
    "actor",
    "at_ms",
)
_CANDIDATE = re.compile(r"(\S+) \((\d+)\)")


def candidates_in(detail: str) -> list[tuple[str, int]]:
    """(txn id, score) of a proposed result's candidates, best first, from its detail
    ("proposed: T1 (87), T2 (85)")."""
    return [
        (m.group(1), int(m.group(2)))
        for m in _CANDIDATE.finditer(detail.removeprefix("proposed: "))
    ]


@dataclass(frozen=True)
class Proposed:
    channel_id: str
    business_date: date
    item_key: str
    run_id: str
    candidates: tuple[str, ...]  # best first


def proposed_items(
    db: Backend, item: str, channel: str | None = None, day: date | None = None
) -> list[Proposed]:
    """The proposed results named `item` in the latest run of each (channel, day)."""
    where = "item_key = %(k)s"
    params: dict[str, Any] = {"k": item}
    if channel:
        where += " AND channel_id = %(c)s"
        params["c"] = channel
    if day:
        where += " AND business_date = toDate(%(d)s)"
        params["d"] = day.isoformat()
    rows = db.query(
        "SELECT channel_id, business_date, run_id, class, detail FROM {db}.recon_results FINAL "
        f"WHERE {where} AND run_id IN (SELECT argMax(run_id, started_at_ms) FROM "
        "{db}.recon_runs FINAL GROUP BY channel_id, business_date) ORDER BY channel_id, "
        "business_date",
        params,
    )
    return [
        Proposed(
            r["channel_id"],
            r["business_date"],
            item,
            r["run_id"],
            tuple(t for t, _ in candidates_in(r["detail"])),
        )
        for r in rows
        if r["class"] == "proposed"
    ]


def decide(
    db: Backend,
    p: Proposed,
    action: str,
    candidate: str | None,
    actor: str,
    reason: str,
    now_ms: int | None = None,
) -> list[str]:
    """Record a person's accept / reject of a proposed line (append-only); the next
    run of the day applies it. Returns the candidates decided on."""
    if action not in ("accept", "reject"):
        raise ReconError(f"unknown decision {action!r}: accept or reject")
    if not actor.strip() or not reason.strip():
        raise ReconError("a decision needs --by and --reason")
    if candidate is not None and candidate not in p.candidates:
        raise ReconError(
            f"{candidate} is not a candidate of {p.item_key} "
            f"(candidates: {', '.join(p.candidates) or 'none'})"
        )
    if action == "accept":
        if candidate is None and len(p.candidates) != 1:
            raise ReconError(
                f"{p.item_key} has {len(p.candidates)} candidates "
                f"({', '.join(p.candidates)}): name one with --candidate"
            )
        chosen = [candidate or p.candidates[0]]
    else:
        chosen = [candidate] if candidate else list(p.candidates)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    db.insert(
        "recon_decisions",
        DECISION_COLUMNS,
        [
            (
                secrets.token_hex(8),
                p.channel_id,
                p.business_date,
                p.item_key,
                p.run_id,
                action,
                txn,
                reason,
                actor,
                now_ms,
            )
            for txn in chosen
        ],
    )
    return chosen


def decision_history(db: Backend, channel: str, day: date) -> list[dict[str, Any]]:
    return db.query(
        "SELECT item_key, action, txn_id, reason, actor, at_ms, run_id "
        "FROM {db}.recon_decisions FINAL WHERE channel_id = %(c)s AND business_date = "
        "toDate(%(d)s) ORDER BY at_ms, decision_id",
        {"c": channel, "d": day.isoformat()},
    )
