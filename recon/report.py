"""`tally recon report`: the morning view of a business day as one HTML file.

For people who will not open Grafana: one self-contained file (no scripts, no
external stylesheets, fonts or images; charts are inline SVG drawn here), every text
from the database escaped. Sections:

1. reconciliation results of the latest run of each channel for the date: items and
   amounts by class and channel (amounts per currency, never added across currencies);
2. suspense: the open entries (all days) by age as of the report time, in buckets
   <1d, 1–3d, 3–7d, >7d, counts and amounts per currency;
3. settlement totals of the date per currency (recon.settle), with the payments held
   back by open suspense entries;
4. statement arrival: per channel, the deliveries loaded for the date and when;
5. tolerance and proposed matches (after the results): money matched within the
   channels' tolerances (items, amount and fee differences summed per channel and
   currency, the largest items), and the `proposed` lines with their best candidates,
   scores, and our amount and time next to the statement's, for a person to accept
   or reject (`tally recon accept|reject`);
6. funds and merchant payouts (after the settlement totals): the latest settlement
   run on or after the date, money expected vs arrived per channel and currency and
   its breaks; the latest merchant payout run of the date, payable vs paid per
   currency, and per merchant the breaks and the hold-backs explained.

It prints on A4 portrait (`@page`), no chart split across pages (`break-inside:
avoid`; a chart is at most 640 px wide, within the page's 186 mm); the tests open
it in headless Chromium (tests/recon/test_report_browser.py).

`build(db, day, now_ms)` reads everything (SQL), `render(data)` is pure.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from html import escape
from typing import Any

from recon.settle import MerchantSettlement, Settlement, settle
from sinks.backend import Backend
from sinks.queries import money
from tally.core.events import iso_ms
from tally.core.money import format_minor

__all__ = [
    "AGING_BUCKETS",
    "Candidate",
    "ProposedLine",
    "ReportData",
    "aging_bucket",
    "bar_chart",
    "build",
    "render",
]

CLASSES = (
    "matched",
    "carried",
    "short",
    "long",
    "amount_mismatch",
    "fee_mismatch",
    "status_mismatch",
)
BREAKS = ("short", "long", "amount_mismatch", "fee_mismatch", "status_mismatch")
AGING_BUCKETS = ("<1d", "1–3d", "3–7d", ">7d")
_DAY_MS = 86_400_000
SHOWN = 10  # tolerated items and proposed lines shown in full; the rest counted


def aging_bucket(age_ms: int) -> str:
    """<1d: under 24 h; 1–3d: 24 h up to 72 h; 3–7d: up to 168 h; >7d: beyond."""
    if age_ms < _DAY_MS:
        return AGING_BUCKETS[0]
    if age_ms < 3 * _DAY_MS:
        return AGING_BUCKETS[1]
    if age_ms < 7 * _DAY_MS:
        return AGING_BUCKETS[2]
    return AGING_BUCKETS[3]


# class -> currency -> (items, amount)
Summary = dict[str, dict[str, tuple[int, Decimal]]]
# currency -> (items matched with a difference, amount differences, fee differences)
Tolerated = dict[str, tuple[int, Decimal, Decimal]]


@dataclass(frozen=True)
class Candidate:
    txn_id: str
    score: int
    amount: Decimal | None  # what the channel should show for it (payment: less coupon)
    created_at_ms: int | None


@dataclass(frozen=True)
class ProposedLine:
    channel_id: str
    item_key: str
    line_no: int | None
    reference: str  # the id the line quotes, as it quotes it
    occurred_at_ms: int | None
    currency: str
    amount: Decimal | None
    candidates: tuple[Candidate, ...]  # best first


@dataclass
class ReportData:
    day: date
    as_of_ms: int
    channels: list[str]
    runs: dict[str, dict[str, Any]]  # channel -> run_id, delivery, when
    by_class: dict[str, Summary]  # channel -> summary
    aging: dict[str, dict[str, tuple[int, Decimal]]]  # bucket -> currency -> (n, amount)
    open_entries: int
    settlement: Settlement
    arrivals: list[dict[str, Any]]
    missing_statements: list[str] = field(default_factory=list)
    not_reconciled: list[str] = field(default_factory=list)
    tolerated: dict[str, Tolerated] = field(default_factory=dict)  # channel -> ...
    tolerated_items: list[dict[str, Any]] = field(default_factory=list)  # largest first
    proposed: list[ProposedLine] = field(default_factory=list)  # at most SHOWN
    proposed_count: int = 0
    funds_run: dict[str, Any] = field(default_factory=dict)  # run_id, run_date
    funds: list[dict[str, Any]] = field(default_factory=list)  # settlement results
    payouts_run: str = ""
    payouts: list[dict[str, Any]] = field(default_factory=list)  # merchant payout results

    @property
    def result_count(self) -> int:
        return sum(n for s in self.by_class.values() for by in s.values() for n, _ in by.values())


# ------------------------------------------------------------------ reading


def build(db: Backend, day: date, now_ms: int) -> ReportData:
    from recon.run import channels_of, latest_run, run_summary, tolerated_of
    from recon.suspense import open_entries

    channels = channels_of(db, day)
    runs: dict[str, dict[str, Any]] = {}
    by_class: dict[str, Summary] = {}
    tolerated: dict[str, Tolerated] = {}
    not_reconciled = []
    for ch in channels:
        run_id = latest_run(db, ch, day)
        if run_id is None:
            not_reconciled.append(ch)
            continue
        meta = db.query(
            "SELECT statement_delivery, finished_at_ms FROM {db}.recon_runs FINAL "
            "WHERE channel_id = %(c)s AND business_date = toDate(%(d)s) AND run_id = %(r)s",
            {"c": ch, "d": day.isoformat(), "r": run_id},
        )
        runs[ch] = {
            "run_id": run_id,
            "delivery": int(meta[0]["statement_delivery"]) if meta else 0,
            "finished_at": iso_ms(int(meta[0]["finished_at_ms"])) if meta else "",
        }
        by_class[ch] = run_summary(db, ch, day, run_id)
        tolerated[ch] = tolerated_of(db, ch, day, run_id)

    aging: dict[str, dict[str, tuple[int, Decimal]]] = {b: {} for b in AGING_BUCKETS}
    n_open = 0
    for e in open_entries(db, now_ms=now_ms):
        n_open += 1
        b = aging_bucket(max(0, now_ms - int(e.opened_at_ms)))
        n, a = aging[b].get(e.currency, (0, Decimal(0)))
        aging[b][e.currency] = (n + 1, a + Decimal(e.amount))

    arrivals = db.query(
        "SELECT channel_id, delivery, format, file_name, line_count, total_amount, "
        "checksum, loaded_at_ms, loaded_by FROM {db}.statement_versions FINAL "
        "WHERE business_date = toDate(%(d)s) ORDER BY channel_id, delivery",
        {"d": day.isoformat()},
    )
    have = {r["channel_id"] for r in arrivals}
    proposed, n_proposed = _proposed(db, day, runs)
    funds_run, funds, payouts_run, payouts = _funds(db, day)
    return ReportData(
        day=day,
        as_of_ms=now_ms,
        channels=channels,
        runs=runs,
        by_class=by_class,
        aging=aging,
        open_entries=n_open,
        settlement=settle(db, day),
        arrivals=arrivals,
        missing_statements=[c for c in channels if c not in have],
        not_reconciled=not_reconciled,
        tolerated={ch: t for ch, t in tolerated.items() if t},
        tolerated_items=_tolerated_items(db, day, runs),
        proposed=proposed,
        proposed_count=n_proposed,
        funds_run=funds_run,
        funds=funds,
        payouts_run=payouts_run,
        payouts=payouts,
    )


def _funds(
    db: Backend, day: date
) -> tuple[dict[str, Any], list[dict[str, Any]], str, list[dict[str, Any]]]:
    """The latest settlement run on or after `day` (its credits come after the
    business day) and its results; the latest merchant payout run of `day` and its."""
    from recon.funds import merchants, store

    runs = db.query(
        "SELECT run_id, run_date FROM {db}.settlement_runs FINAL "
        "WHERE run_date >= toDate(%(d)s) ORDER BY run_date DESC, started_at_ms DESC LIMIT 1",
        {"d": day.isoformat()},
    )
    funds_run, funds = {}, []
    if runs:
        funds_run = {"run_id": runs[0]["run_id"], "run_date": runs[0]["run_date"]}
        funds = store.stored_results(db, runs[0]["run_date"], runs[0]["run_id"])
    payouts_run = merchants.previous_run(db, day) or ""
    payouts = merchants.stored_results(db, day, payouts_run) if payouts_run else []
    return funds_run, funds, payouts_run, payouts


def _runs_where(runs: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    return "run_id IN %(runs)s", {"runs": tuple(r["run_id"] for r in runs.values()) or ("",)}


def _tolerated_items(db: Backend, day: date, runs: dict[str, dict[str, Any]]) -> list[Any]:
    """The SHOWN items matched with the largest differences (amount + fee)."""
    where, params = _runs_where(runs)

    def absolute(x: str) -> str:
        return f"if({x} < 0, -{x}, {x})"  # abs() of a Decimal: not on 18.16

    return db.query(
        "SELECT channel_id, item_key, currency, ledger_amount, statement_amount, "
        "amount_difference, ledger_fee, statement_fee, fee_difference, match_method "
        "FROM {db}.recon_results FINAL WHERE business_date = toDate(%(d)s) AND "
        f"{where} AND (amount_difference != 0 OR fee_difference != 0) ORDER BY "
        f"{absolute('amount_difference')} + {absolute('fee_difference')} DESC, channel_id, "
        f"item_key LIMIT {SHOWN}",
        {"d": day.isoformat(), **params},
    )


def _proposed(
    db: Backend, day: date, runs: dict[str, dict[str, Any]]
) -> tuple[list[ProposedLine], int]:
    """The first SHOWN proposed lines of the latest runs with their candidates (our
    amount and time read from the orders), and how many there are."""
    from recon.run import candidates_in

    where, params = _runs_where(runs)
    params["d"] = day.isoformat()
    n = db.query(
        "SELECT count() AS n FROM {db}.recon_results FINAL WHERE business_date = "
        f"toDate(%(d)s) AND {where} AND class = 'proposed'",
        params,
    )
    rows = db.query(
        "SELECT channel_id, item_key, statement_line, currency, statement_amount, detail "
        "FROM {db}.recon_results FINAL WHERE business_date = toDate(%(d)s) AND "
        f"{where} AND class = 'proposed' ORDER BY channel_id, statement_line, item_key "
        f"LIMIT {SHOWN}",
        params,
    )
    if not rows:
        return [], int(n[0]["n"]) if n else 0
    txns = sorted({t for r in rows for t, _ in candidates_in(r["detail"])})
    orders = {
        o["txn_id"]: o
        for o in db.query(
            "SELECT txn_id, type, amount, coupon_amount, created_at_ms FROM (SELECT txn_id, "
            "type, amount, coupon_amount, created_at_ms FROM {db}.order_states FINAL) "
            "WHERE txn_id IN %(t)s",
            {"t": tuple(txns) or ("",)},
        )
    }
    lines = {
        (r["channel_id"], int(r["line_no"])): r
        for ch, run in runs.items()
        for r in db.query(
            "SELECT channel_id, line_no, txn_id, channel_txn_id, occurred_at_ms FROM "
            "{db}.statement_lines FINAL WHERE channel_id = %(c)s AND business_date = "
            "toDate(%(d)s) AND delivery = %(v)s AND line_no IN %(n)s",
            {
                "c": ch,
                "d": day.isoformat(),
                "v": int(run["delivery"]),
                "n": tuple(
                    int(x["statement_line"])
                    for x in rows
                    if x["channel_id"] == ch and x["statement_line"] is not None
                )
                or (0,),
            },
        )
    }

    def candidate(txn: str, score: int) -> Candidate:
        o = orders.get(txn)
        if o is None:
            return Candidate(txn, score, None, None)
        amount = None if o["amount"] is None else Decimal(o["amount"])
        if amount is not None and o["type"] == "payment" and o["coupon_amount"] is not None:
            amount -= Decimal(o["coupon_amount"])
        created = None if o["created_at_ms"] is None else int(o["created_at_ms"])
        return Candidate(txn, score, amount, created)

    out = []
    for r in rows:
        no = None if r["statement_line"] is None else int(r["statement_line"])
        ln = lines.get((r["channel_id"], no)) if no is not None else None
        out.append(
            ProposedLine(
                channel_id=r["channel_id"],
                item_key=r["item_key"],
                line_no=no,
                reference=(ln["txn_id"] or ln["channel_txn_id"]) if ln else "",
                occurred_at_ms=int(ln["occurred_at_ms"]) if ln else None,
                currency=r["currency"],
                amount=None if r["statement_amount"] is None else Decimal(r["statement_amount"]),
                candidates=tuple(candidate(t, sc) for t, sc in candidates_in(r["detail"])),
            )
        )
    return out, int(n[0]["n"]) if n else len(out)


# ------------------------------------------------------------------ drawing


def bar_chart(title: str, bars: list[tuple[str, int]], *, width: int = 640, unit: str = "") -> str:
    """A horizontal bar chart as inline SVG: one bar per (label, non-negative integer
    value), lengths exact in integer arithmetic. Labels are escaped."""
    label_w, pad, bar_h, gap = 150, 8, 18, 6
    top = 28
    height = top + len(bars) * (bar_h + gap) + pad
    biggest = max((v for _, v in bars), default=0)
    span = width - label_w - 90
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}">',
        f"<title>{escape(title)}</title>",
        f'<text x="{pad}" y="18" class="ct">{escape(title)}</text>',
    ]
    for i, (label, v) in enumerate(bars):
        y = top + i * (bar_h + gap)
        w = (v * span) // biggest if biggest else 0
        if v and w < 2:
            w = 2
        parts.append(
            f'<text x="{label_w - pad}" y="{y + bar_h - 5}" text-anchor="end">'
            f"{escape(label)}</text>"
            f'<rect x="{label_w}" y="{y}" width="{w}" height="{bar_h}" class="b"/>'
            f'<text x="{label_w + w + 6}" y="{y + bar_h - 5}">{v:,}{escape(unit)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _amount(a: Decimal, cur: str) -> str:
    return money(a, cur) or "0"


def _amounts(by: dict[str, tuple[int, Decimal]]) -> str:
    return ", ".join(f"{_amount(a, c)} {c}" for c, (_, a) in sorted(by.items())) or "–"


def _table(
    table_id: str, head: list[str], rows: list[list[str]], numeric: set[int] | None = None
) -> str:
    numeric = numeric or set()
    h = "".join(f"<th>{escape(x)}</th>" for x in head)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{escape(c)}</td>' if i in numeric else f"<td>{escape(c)}</td>"
            for i, c in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    return (
        f'<table id="{escape(table_id)}"><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>'
    )


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",sans-serif;
margin:2em auto;max-width:1100px;color:#1d2330;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:2em;
border-bottom:1px solid #d5d9e0;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #d5d9e0;padding:.25em .6em;text-align:left}
th{background:#f1f3f6}td.n{text-align:right;font-variant-numeric:tabular-nums}
.muted{color:#66707f}.warn{color:#a33}svg{display:block;margin:.6em 0}
svg text{font-size:12px;fill:#1d2330}svg .ct{font-weight:600;font-size:13px}
svg .b{fill:#3b6fb6}
@page{size:A4 portrait;margin:12mm}
@media print{body{max-width:none;margin:0;padding:0;font-size:10pt}
svg{break-inside:avoid;page-break-inside:avoid;max-width:100%;height:auto}
h2,h3{break-after:avoid;page-break-after:avoid}
table{font-size:7.5pt}th,td{padding:.1em .3em}
tr{break-inside:avoid;page-break-inside:avoid}thead{display:table-header-group}}
"""


def _settle_rows(rows: list[MerchantSettlement]) -> list[list[str]]:
    out = []
    for t in rows:
        c = t.currency
        out.append(
            [
                t.merchant_id,
                c,
                f"{t.payments:,}",
                f"{t.refund_count:,}",
                format_minor(t.gross, c),
                format_minor(t.coupon_funding, c),
                format_minor(t.refunds, c),
                format_minor(t.fees, c),
                format_minor(t.net, c),
                f"{t.held_items:,}",
                format_minor(t.held_amount, c),
                format_minor(t.payable, c),
            ]
        )
    return out


def _money_or_dash(a: Decimal | None, cur: str) -> str:
    return "–" if a is None else _amount(a, cur)


def _tolerance_and_proposed(data: ReportData) -> list[str]:
    """Money matched within tolerance (still money), then the proposed lines with
    their candidates for a person to accept or reject."""
    out = ["<h2>Matched within tolerance</h2>"]
    rows = []
    total: dict[str, tuple[int, Decimal, Decimal]] = {}
    for ch in sorted(data.tolerated):
        for cur, (n, a, f) in sorted(data.tolerated[ch].items()):
            rows.append([ch, cur, f"{n:,}", _amount(a, cur), _amount(f, cur)])
            tn, ta, tf = total.get(cur, (0, Decimal(0), Decimal(0)))
            total[cur] = (tn + n, ta + a, tf + f)
    if len(data.tolerated) > 1:
        for cur, (n, a, f) in sorted(total.items()):
            rows.append(["all", cur, f"{n:,}", _amount(a, cur), _amount(f, cur)])
    if rows:
        out.append(
            _table(
                "tolerated",
                ["channel", "currency", "items", "amount differences", "fee differences"],
                rows,
                {2, 3, 4},
            )
        )
        out.append(
            '<p class="muted">matched although the statement differs from our ledger by '
            "no more than the channel's tolerance; a difference is the statement's figure "
            "less ours. Largest items:</p>"
        )
        items = [
            [
                r["channel_id"],
                r["item_key"],
                r["currency"],
                _money_or_dash(r["ledger_amount"], r["currency"]),
                _money_or_dash(r["statement_amount"], r["currency"]),
                _amount(Decimal(r["amount_difference"]), r["currency"]),
                _money_or_dash(r["ledger_fee"], r["currency"]),
                _money_or_dash(r["statement_fee"], r["currency"]),
                _amount(Decimal(r["fee_difference"]), r["currency"]),
                r["match_method"],
            ]
            for r in data.tolerated_items
        ]
        out.append(
            _table(
                "tolerated-items",
                [
                    "channel",
                    "item",
                    "currency",
                    "ours",
                    "statement",
                    "amount difference",
                    "our fee",
                    "statement fee",
                    "fee difference",
                    "matched by",
                ],
                items,
                {3, 4, 5, 6, 7, 8},
            )
        )
    else:
        out.append('<p class="muted" id="tolerated-none">nothing matched with a difference</p>')

    out.append("<h2>Proposed matches to accept or reject</h2>")
    if not data.proposed:
        out.append('<p class="muted" id="proposed-none">no proposed lines</p>')
        return out
    prow = []
    for p in data.proposed:
        for i, c in enumerate(p.candidates or (Candidate("", 0, None, None),)):
            first = i == 0
            prow.append(
                [
                    p.channel_id if first else "",
                    p.item_key if first else "",
                    (str(p.line_no) if p.line_no is not None else "") if first else "",
                    p.reference if first else "",
                    (iso_ms(p.occurred_at_ms) if p.occurred_at_ms is not None else "")
                    if first
                    else "",
                    _money_or_dash(p.amount, p.currency) if first else "",
                    p.currency if first else "",
                    c.txn_id or "(none)",
                    str(c.score) if c.txn_id else "",
                    _money_or_dash(c.amount, p.currency) if c.txn_id else "",
                    iso_ms(c.created_at_ms) if c.created_at_ms is not None else "",
                ]
            )
    out.append(
        _table(
            "proposed",
            [
                "channel",
                "item",
                "line",
                "line quotes",
                "line time",
                "line amount",
                "currency",
                "candidate",
                "score",
                "our amount",
                "our time",
            ],
            prow,
            {2, 5, 8, 9},
        )
    )
    more = data.proposed_count - len(data.proposed)
    out.append(
        '<p class="muted">'
        + (
            escape(
                f"{data.proposed_count:,} proposed lines, the first {len(data.proposed)} shown; "
            )
            if more > 0
            else ""
        )
        + "candidates best first, scored 0–100 (docs/reconciliation.md). Accept one with "
        "<code>tally recon accept ITEM --candidate TXN --by NAME --reason TEXT</code>, "
        "reject with <code>tally recon reject ITEM [--candidate TXN] --by NAME --reason "
        "TEXT</code>; the next <code>tally recon run</code> applies the decisions.</p>"
    )
    return out


def _dec(v: Any) -> Decimal | None:
    """A stored amount (Decimal, or a string from toString; NULL as None or \\N)."""
    return None if v is None or v in ("\\N", "") else Decimal(str(v))


def _funds_and_payouts(data: ReportData) -> list[str]:
    """Money expected vs arrived per channel (settlement), then payouts vs clearing
    per merchant (S14)."""
    from recon.funds.payouts import BREAK_CLASSES as PAYOUT_BREAKS
    from recon.funds.settlement import BREAK_CLASSES as FUNDS_BREAKS

    out = ["<h2>Funds: channel settlements in our bank account</h2>"]
    if not data.funds_run:
        out.append(
            '<p class="muted" id="funds-none">no settlement run on or after this date '
            "(<code>tally recon settlements --date D</code>)</p>"
        )
    else:
        out.append(
            f'<p class="muted">run {escape(str(data.funds_run["run_id"]))} as of bank date '
            f"{escape(str(data.funds_run['run_date']))}</p>"
        )
        per: dict[tuple[str, str], list[Any]] = {}
        for r in data.funds:
            k = (r["channel_id"] or "(unclaimed)", r["currency"])
            t = per.setdefault(k, [Decimal(0), Decimal(0), 0, 0])
            t[0] += _dec(r["expected_amount"]) or 0
            t[1] += _dec(r["credited_amount"]) or 0
            t[2 if r["class"] not in FUNDS_BREAKS else 3] += 1
        rows = [
            [ch, cur, _amount(e, cur), _amount(a, cur), _amount(a - e, cur), f"{ok:,}", f"{b:,}"]
            for (ch, cur), (e, a, ok, b) in sorted(per.items())
        ]
        out.append(
            _table(
                "funds-by-channel",
                ["channel", "currency", "expected", "arrived", "difference", "in order", "breaks"],
                rows,
                {2, 3, 4, 5, 6},
            )
        )
        brk = [r for r in data.funds if r["class"] in FUNDS_BREAKS]
        if brk:
            out.append("<h3>Settlement breaks</h3>")
            out.append(
                _table(
                    "funds-breaks",
                    ["item", "class", "currency", "expected", "credited", "detail"],
                    [
                        [
                            r["item_key"],
                            r["class"],
                            r["currency"],
                            _money_or_dash(_dec(r["expected_amount"]), r["currency"]),
                            _money_or_dash(_dec(r["credited_amount"]), r["currency"]),
                            r["detail"],
                        ]
                        for r in brk
                    ],
                    {3, 4},
                )
            )

    out.append("<h2>Merchant payouts vs clearing</h2>")
    if not data.payouts_run:
        out.append(
            '<p class="muted" id="payouts-none">no merchant payout run for this date '
            "(<code>tally recon merchants --date D</code>)</p>"
        )
        return out
    out.append(f'<p class="muted">run {escape(data.payouts_run)}</p>')
    tot: dict[str, list[Any]] = {}
    for r in data.payouts:
        t = tot.setdefault(r["currency"], [0, Decimal(0), Decimal(0), Decimal(0), 0])
        t[0] += 1
        t[1] += _dec(r["expected"]) or 0
        t[2] += _dec(r["paid"]) or 0
        t[3] += _dec(r["held_amount"]) or 0
        t[4] += r["class"] in PAYOUT_BREAKS
    out.append(
        _table(
            "payouts-by-currency",
            ["currency", "merchants", "payable", "paid", "held back", "breaks"],
            [
                [c, f"{n:,}", _amount(e, c), _amount(p, c), _amount(h, c), f"{b:,}"]
                for c, (n, e, p, h, b) in sorted(tot.items())
            ],
            {1, 2, 3, 4, 5},
        )
    )
    shown = [
        r for r in data.payouts if r["class"] in PAYOUT_BREAKS or (_dec(r["held_amount"]) or 0) != 0
    ]
    if shown:
        out.append("<h3>Payout breaks and hold-backs</h3>")
        out.append(
            _table(
                "payout-items",
                ["merchant", "currency", "class", "net", "held back", "payable", "paid", "detail"],
                [
                    [
                        r["merchant_id"],
                        r["currency"],
                        r["class"],
                        _money_or_dash(_dec(r["net"]), r["currency"]),
                        _money_or_dash(_dec(r["held_amount"]), r["currency"]),
                        _money_or_dash(_dec(r["expected"]), r["currency"]),
                        _money_or_dash(_dec(r["paid"]), r["currency"]),
                        r["detail"],
                    ]
                    for r in sorted(
                        shown, key=lambda r: (r["class"] == "payout_matched", r["merchant_id"])
                    )
                ],
                {3, 4, 5, 6},
            )
        )
    return out


def render(data: ReportData) -> str:
    """The whole HTML document (pure)."""
    day = data.day.isoformat()
    out: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>tally reconciliation report {escape(day)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Reconciliation report — business date {escape(day)}</h1>",
        f'<p class="muted">as of {escape(iso_ms(data.as_of_ms))}; '
        f"{len(data.channels)} channels, {data.result_count:,} items reconciled, "
        f"{data.open_entries:,} open suspense entries</p>",
    ]
    if data.not_reconciled:
        out.append(
            '<p class="warn" id="not-reconciled">not reconciled yet: '
            + escape(", ".join(data.not_reconciled))
            + "</p>"
        )

    # 1. results by class and channel
    out.append("<h2>Reconciliation results</h2>")
    counts: dict[str, int] = defaultdict(int)
    rows = []
    for ch in sorted(data.by_class):
        s = data.by_class[ch]
        per = {c: sum(n for n, _ in s.get(c, {}).values()) for c in CLASSES}
        for c, n in per.items():
            counts[c] += n
        r = data.runs.get(ch, {})
        rows.append(
            [ch, str(r.get("delivery", ""))]
            + [f"{per[c]:,}" for c in CLASSES]
            + [f"{sum(per[c] for c in BREAKS):,}"]
        )
    rows.append(
        ["all", ""] + [f"{counts[c]:,}" for c in CLASSES] + [f"{sum(counts[c] for c in BREAKS):,}"]
    )
    out.append(
        _table(
            "results-by-class",
            ["channel", "delivery", *CLASSES, "breaks"],
            rows,
            set(range(2, len(CLASSES) + 3)),
        )
    )
    out.append(bar_chart("Items by class, all channels", [(c, counts[c]) for c in CLASSES]))
    out.append(
        bar_chart(
            "Breaks by channel",
            [
                (ch, sum(sum(n for n, _ in data.by_class[ch].get(c, {}).values()) for c in BREAKS))
                for ch in sorted(data.by_class)
            ],
        )
    )
    amount_rows = []
    for ch in sorted(data.by_class):
        for c in CLASSES:
            by = data.by_class[ch].get(c)
            if by:
                for cur, (n, a) in sorted(by.items()):
                    amount_rows.append([ch, c, cur, f"{n:,}", _amount(a, cur)])
    out.append("<h3>Amounts by class and channel</h3>")
    out.append(
        _table(
            "amounts-by-class",
            ["channel", "class", "currency", "items", "amount"],
            amount_rows,
            {3, 4},
        )
    )

    out.extend(_tolerance_and_proposed(data))

    # 2. suspense aging
    out.append("<h2>Suspense aging (open entries, all days)</h2>")
    aging_rows = []
    for b in AGING_BUCKETS:
        by = data.aging.get(b, {})
        if not by:
            aging_rows.append([b, "", "0", "0"])
        for cur, (n, a) in sorted(by.items()):
            aging_rows.append([b, cur, f"{n:,}", _amount(a, cur)])
    out.append(
        _table("suspense-aging", ["age", "currency", "entries", "amount"], aging_rows, {2, 3})
    )
    out.append(
        bar_chart(
            "Open suspense entries by age",
            [(b, sum(n for n, _ in data.aging.get(b, {}).values())) for b in AGING_BUCKETS],
        )
    )

    # 3. settlement
    st = data.settlement
    out.append("<h2>Settlement totals</h2>")
    head = [
        "merchants",
        "currency",
        "payments",
        "refunds (n)",
        "gross",
        "coupon funding",
        "refunds",
        "fees",
        "net payable",
        "held items",
        "held amount",
        "payable after hold-back",
    ]
    trows = _settle_rows(st.totals)
    for tr, t in zip(trows, st.totals, strict=True):
        tr[0] = f"{sum(1 for m in st.merchants if m.currency == t.currency):,}"
    out.append(_table("settlement-totals", head, trows, set(range(2, 12))))
    out.append(
        '<p class="muted">net payable = gross − refunds − fees (coupon funding is part of '
        "gross, paid by the platform's marketing account); payments with an open suspense "
        "entry are held back. "
        + (
            "Agrees with the stream's confirmed merchant postings."
            if not st.disagreements
            else '<span class="warn">Disagrees with the postings: '
            + escape("; ".join(st.disagreements[:5]))
            + "</span>"
        )
        + "</p>"
    )
    if st.totals:
        out.append(
            bar_chart(
                "Payments held back by open suspense entries",
                [(f"{t.currency}", t.held_items) for t in st.totals],
                unit=" items",
            )
        )

    out.extend(_funds_and_payouts(data))

    # 4. statement arrival
    out.append("<h2>Statement arrival</h2>")
    arr_rows = [
        [
            r["channel_id"],
            str(r["delivery"]),
            iso_ms(int(r["loaded_at_ms"])),
            r["format"],
            r["file_name"],
            f"{int(r['line_count']):,}",
            str(r["checksum"])[:12],
            r["loaded_by"],
        ]
        for r in data.arrivals
    ]
    for ch in data.missing_statements:
        arr_rows.append([ch, "–", "not received", "", "", "", "", ""])
    out.append(
        _table(
            "statement-arrival",
            ["channel", "delivery", "loaded at", "format", "file", "lines", "checksum", "by"],
            arr_rows,
            {5},
        )
    )
    out.append("</body></html>")
    return "\n".join(out) + "\n"
