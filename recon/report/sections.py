"""Sections: results by class and channel, suspense aging, settlement totals,
statement arrival."""

from __future__ import annotations

from collections import defaultdict
from html import escape

from recon.report.html import amount, bar_chart, table
from recon.report.model import AGING_BUCKETS, BREAKS, CLASSES, ReportData
from recon.settle import MerchantSettlement
from tally.core.events import iso_ms
from tally.core.money import format_minor


def results(data: ReportData) -> list[str]:
    """1. results by class and channel."""
    out: list[str] = []
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
        table(
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
                    amount_rows.append([ch, c, cur, f"{n:,}", amount(a, cur)])
    out.append("<h3>Amounts by class and channel</h3>")
    out.append(
        table(
            "amounts-by-class",
            ["channel", "class", "currency", "items", "amount"],
            amount_rows,
            {3, 4},
        )
    )

    return out


def aging(data: ReportData) -> list[str]:
    """2. suspense aging."""
    out: list[str] = []
    out.append("<h2>Suspense aging (open entries, all days)</h2>")
    aging_rows = []
    for b in AGING_BUCKETS:
        by = data.aging.get(b, {})
        if not by:
            aging_rows.append([b, "", "0", "0"])
        for cur, (n, a) in sorted(by.items()):
            aging_rows.append([b, cur, f"{n:,}", amount(a, cur)])
    out.append(
        table("suspense-aging", ["age", "currency", "entries", "amount"], aging_rows, {2, 3})
    )
    out.append(
        bar_chart(
            "Open suspense entries by age",
            [(b, sum(n for n, _ in data.aging.get(b, {}).values())) for b in AGING_BUCKETS],
        )
    )

    return out


def settlement(data: ReportData) -> list[str]:
    """3. settlement totals."""
    out: list[str] = []
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
    out.append(table("settlement-totals", head, trows, set(range(2, 12))))
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

    return out


def arrival(data: ReportData) -> list[str]:
    """4. statement arrival."""
    out: list[str] = []
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
        table(
            "statement-arrival",
            ["channel", "delivery", "loaded at", "format", "file", "lines", "checksum", "by"],
            arr_rows,
            {5},
        )
    )
    return out


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
