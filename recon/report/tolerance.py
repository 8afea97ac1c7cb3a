"""Sections: money matched within tolerance, and the proposed lines to accept or
reject."""

from __future__ import annotations

from decimal import Decimal
from html import escape

from recon.report.html import amount, money_or_dash, table
from recon.report.model import Candidate, ReportData
from tally.core.events import iso_ms


def tolerance_and_proposed(data: ReportData) -> list[str]:
    """Money matched within tolerance (still money), then the proposed lines with
    their candidates for a person to accept or reject."""
    return tolerance(data) + proposed(data)


def tolerance(data: ReportData) -> list[str]:
    """Money matched within tolerance (still money): per channel and currency, and the
    largest items."""
    out = ["<h2>Matched within tolerance</h2>"]
    rows = []
    total: dict[str, tuple[int, Decimal, Decimal]] = {}
    for ch in sorted(data.tolerated):
        for cur, (n, a, f) in sorted(data.tolerated[ch].items()):
            rows.append([ch, cur, f"{n:,}", amount(a, cur), amount(f, cur)])
            tn, ta, tf = total.get(cur, (0, Decimal(0), Decimal(0)))
            total[cur] = (tn + n, ta + a, tf + f)
    if len(data.tolerated) > 1:
        for cur, (n, a, f) in sorted(total.items()):
            rows.append(["all", cur, f"{n:,}", amount(a, cur), amount(f, cur)])
    if rows:
        out.append(
            table(
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
                money_or_dash(r["ledger_amount"], r["currency"]),
                money_or_dash(r["statement_amount"], r["currency"]),
                amount(Decimal(r["amount_difference"]), r["currency"]),
                money_or_dash(r["ledger_fee"], r["currency"]),
                money_or_dash(r["statement_fee"], r["currency"]),
                amount(Decimal(r["fee_difference"]), r["currency"]),
                r["match_method"],
            ]
            for r in data.tolerated_items
        ]
        out.append(
            table(
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

    return out


def proposed(data: ReportData) -> list[str]:
    """The proposed lines with their candidates for a person to accept or reject."""
    out: list[str] = []
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
                    money_or_dash(p.amount, p.currency) if first else "",
                    p.currency if first else "",
                    c.txn_id or "(none)",
                    str(c.score) if c.txn_id else "",
                    money_or_dash(c.amount, p.currency) if c.txn_id else "",
                    iso_ms(c.created_at_ms) if c.created_at_ms is not None else "",
                ]
            )
    out.append(
        table(
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
