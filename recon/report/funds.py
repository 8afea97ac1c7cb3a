"""Sections: channel settlements in our bank account (funds), and merchant payouts
vs clearing (S14)."""

from __future__ import annotations

from decimal import Decimal
from html import escape
from typing import Any

from recon.funds.payouts import BREAK_CLASSES as PAYOUT_BREAKS
from recon.funds.settlement import BREAK_CLASSES as FUNDS_BREAKS
from recon.report.html import amount, dec, money_or_dash, table
from recon.report.model import ReportData


def funds_and_payouts(data: ReportData) -> list[str]:
    """Money expected vs arrived per channel (settlement), then payouts vs clearing
    per merchant (S14)."""
    return funds(data) + payouts(data)


def funds(data: ReportData) -> list[str]:
    """Money expected vs arrived per channel and currency, and the settlement breaks."""
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
            t[0] += dec(r["expected_amount"]) or 0
            t[1] += dec(r["credited_amount"]) or 0
            t[2 if r["class"] not in FUNDS_BREAKS else 3] += 1
        rows = [
            [ch, cur, amount(e, cur), amount(a, cur), amount(a - e, cur), f"{ok:,}", f"{b:,}"]
            for (ch, cur), (e, a, ok, b) in sorted(per.items())
        ]
        out.append(
            table(
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
                table(
                    "funds-breaks",
                    ["item", "class", "currency", "expected", "credited", "detail"],
                    [
                        [
                            r["item_key"],
                            r["class"],
                            r["currency"],
                            money_or_dash(dec(r["expected_amount"]), r["currency"]),
                            money_or_dash(dec(r["credited_amount"]), r["currency"]),
                            r["detail"],
                        ]
                        for r in brk
                    ],
                    {3, 4},
                )
            )

    return out


def payouts(data: ReportData) -> list[str]:
    """Payable vs paid per currency, then per merchant the breaks and hold-backs."""
    out: list[str] = []
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
        t[1] += dec(r["expected"]) or 0
        t[2] += dec(r["paid"]) or 0
        t[3] += dec(r["held_amount"]) or 0
        t[4] += r["class"] in PAYOUT_BREAKS
    out.append(
        table(
            "payouts-by-currency",
            ["currency", "merchants", "payable", "paid", "held back", "breaks"],
            [
                [c, f"{n:,}", amount(e, c), amount(p, c), amount(h, c), f"{b:,}"]
                for c, (n, e, p, h, b) in sorted(tot.items())
            ],
            {1, 2, 3, 4, 5},
        )
    )
    shown = [
        r for r in data.payouts if r["class"] in PAYOUT_BREAKS or (dec(r["held_amount"]) or 0) != 0
    ]
    if shown:
        out.append("<h3>Payout breaks and hold-backs</h3>")
        out.append(
            table(
                "payout-items",
                ["merchant", "currency", "class", "net", "held back", "payable", "paid", "detail"],
                [
                    [
                        r["merchant_id"],
                        r["currency"],
                        r["class"],
                        money_or_dash(dec(r["net"]), r["currency"]),
                        money_or_dash(dec(r["held_amount"]), r["currency"]),
                        money_or_dash(dec(r["expected"]), r["currency"]),
                        money_or_dash(dec(r["paid"]), r["currency"]),
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
