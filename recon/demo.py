"""The end-of-day half of `tally demo`: the next morning of a simulated business day.

Given the day the stream just processed (`recon.simday.SimDay`, built from the same
traffic) and the database the stream stored it in, `end_of_day`:

1. writes each channel's statement for each business day in that channel's real
   format (`CHANNEL_FORMATS`: WeChat Pay bill CSV, Alipay bill CSV in GBK, MT940,
   camt.053; a format that cannot hold a day, e.g. Alipay's CNY-only bill with a
   line in another currency, falls back to the generic CSV and says why), with the
   statement anomalies `simulate_day` injected;
2. loads them (`recon.statements.load.load_file`), all of them first, so that each
   day is reconciled with its neighbours in place (S8);
3. reconciles every (channel, day) (`recon.run.run`), which also parks the breaks
   in suspense, real-time ones included;
4. writes a few entries off by business actions (`recon.suspense.resolve`);
5. computes the merchant settlement (`recon.settle.settle`) of each day;
6. writes the morning report of each day (`recon.report`).

What it found is scored against `SimDay.expected` (the oracle written from the
rules, independently of the SQL): precision and recall over every item not matched.
Nothing here re-implements a step; it calls the same functions as the commands.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from recon import suspense
from recon.report import build, render
from recon.run import results, run
from recon.settle import settle
from recon.simday import SimDay, file_name
from recon.statements import write
from recon.statements.load import load_file
from sinks.backend import Backend
from tally.config import Settings

__all__ = ["CHANNEL_FORMATS", "WRITE_OFFS", "EndOfDay", "end_of_day", "scores"]

# the format each channel of the demo delivers its statement in (docs/statements.md):
# the simulator's four channels and a second bank, so that every format is shown
CHANNEL_FORMATS = {
    "wechat": "wechat",
    "alipay": "alipay",
    "unionpay": "csv",
    "icbc": "camt053",
    "ccb": "mt940",
}
FALLBACK_FORMAT = "csv"

# the business action the demo takes on the first open entry of a kind (S9, 19:02-19:12)
WRITE_OFFS = (
    ("duplicate_success", "refunded", "merchant refunded the second charge (S1)"),
    ("short", "loss_accepted", "channel confirmed it never collected; loss accepted (S3)"),
    ("long", "channel_confirmed", "channel confirmed the payment; order corrected (S5)"),
)


@dataclass
class EndOfDay:
    statements: list[dict[str, Any]] = field(default_factory=list)
    runs: list[Any] = field(default_factory=list)  # recon.run.RunOutcome
    found: set[tuple[str, str, str, str]] = field(default_factory=set)
    expected: set[tuple[str, str, str, str]] = field(default_factory=set)
    written_off: list[dict[str, str]] = field(default_factory=list)
    open_entries: int = 0
    settlements: dict[str, Any] = field(default_factory=dict)  # date -> Settlement
    reports: dict[str, Path] = field(default_factory=dict)  # date -> file
    seconds: float = 0.0

    @property
    def classes(self) -> dict[str, int]:
        return dict(Counter(x[3] for x in self.found))

    def scores(self) -> tuple[float, float]:
        return scores(self.expected, self.found)

    def to_json(self) -> dict[str, Any]:
        precision, recall = self.scores()
        return {
            "statements": self.statements,
            "classes": self.classes,
            "expected_not_matched": sum(1 for x in self.expected if x[3] != "matched"),
            "found_not_matched": sum(1 for x in self.found if x[3] != "matched"),
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "suspense_open": self.open_entries,
            "written_off": self.written_off,
            "settlement": {d: s.to_json()["totals"] for d, s in self.settlements.items()},
            "settlement_agrees_with_postings": all(
                not s.disagreements for s in self.settlements.values()
            ),
            "reports": {d: str(p) for d, p in self.reports.items()},
            "seconds": round(self.seconds, 2),
        }


def scores(
    expected: set[tuple[str, str, str, str]], found: set[tuple[str, str, str, str]]
) -> tuple[float, float]:
    """(precision, recall) over the items not matched: one found with its expected
    class (channel, day, item, class) is a true positive."""
    e = {x for x in expected if x[3] != "matched"}
    f = {x for x in found if x[3] != "matched"}
    tp = len(e & f)
    return (tp / len(f) if f else 1.0, tp / len(e) if e else 1.0)


def _statement_file(day: SimDay, channel: str, d: date) -> tuple[str, str, bytes]:
    """(format, why the channel's own format was not used or "", file bytes)."""
    fmt = CHANNEL_FORMATS.get(channel, FALLBACK_FORMAT)
    try:
        return fmt, "", write(day.statement(channel, d, fmt))
    except ValueError as exc:
        if fmt == FALLBACK_FORMAT:
            raise
        return FALLBACK_FORMAT, f"{fmt}: {exc}", write(day.statement(channel, d, FALLBACK_FORMAT))


def end_of_day(
    db: Backend, settings: Settings, day: SimDay, out_dir: Path, now_ms: int | None = None
) -> EndOfDay:
    """Steps 1-6 of the module doc; files go under `out_dir` (statements/, reports)."""
    t0 = time.monotonic()
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    out = EndOfDay(expected=day.expected_set())
    for ch, d in day.days:
        fmt, why, data = _statement_file(day, ch, d)
        path = out_dir / "statements" / fmt / file_name(ch, d, fmt)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        r = load_file(
            db, settings, data, channel=ch, file_name=path.name, fmt=fmt, day=d, loaded_by="demo"
        )
        out.statements.append(
            {
                "channel": ch,
                "business_date": d.isoformat(),
                "format": fmt,
                "file": str(path),
                "lines": r.line_count,
                "status": r.status,
                "fallback": why,
            }
        )
    for ch, d in day.days:
        o = run(db, ch, d, settings.policies()[ch], now_ms=now_ms)
        out.runs.append(o)
        out.found |= {
            (ch, d.isoformat(), x["item_key"], x["class"]) for x in results(db, ch, d, o.run_id)
        }
    entries = suspense.listing(db, now_ms=now_ms)
    for kind, action, reason in WRITE_OFFS:
        e = next((e for e in entries if kind in e["kinds"]), None)
        if e is None:
            continue
        suspense.resolve(db, e["entry_id"], action, reason, "tally demo", now_ms=now_ms)
        entries.remove(e)
        out.written_off.append(
            {
                "entry_id": e["entry_id"],
                "kind": kind,
                "action": action,
                "txn_id": e["txn_id"] or e["channel_txn_id"],
            }
        )
    out.open_entries = len(suspense.listing(db, now_ms=now_ms))
    for d in sorted({d for _, d in day.days}):
        out.settlements[d.isoformat()] = settle(db, d)
        path = out_dir / f"morning-report-{d.isoformat()}.html"
        path.write_text(render(build(db, d, now_ms=now_ms)), encoding="utf-8")
        out.reports[d.isoformat()] = path
    out.seconds = time.monotonic() - t0
    return out
