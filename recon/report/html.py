"""The drawing pieces: inline SVG bar charts, tables, amounts, the stylesheet."""

from __future__ import annotations

from decimal import Decimal
from html import escape
from typing import Any

from sinks.queries import money


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


def amount(a: Decimal, cur: str) -> str:
    return money(a, cur) or "0"


def table(
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


CSS = """
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


def money_or_dash(a: Decimal | None, cur: str) -> str:
    return "–" if a is None else amount(a, cur)


def dec(v: Any) -> Decimal | None:
    """A stored amount (Decimal, or a string from toString; NULL as None or \\N)."""
    return None if v is None or v in ("\\N", "") else Decimal(str(v))
