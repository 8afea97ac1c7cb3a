"""The residue of a run in ClickHouse, the input of the matching search
(`tally.core.matching.find_links`), and the links as the query's array parameters."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from recon.run.sql import ledger_sql, lines_sql, resolved_sql
from sinks.backend import Backend
from tally.core.eod import LedgerOrder, StatementLine
from tally.core.matching import Group, Link, Rules

_LINE_COLS = "line_no, stxn, sctid, skind, sstatus, scur, samt, sfee_known, sfee, sat, sraw, rk0"
_ITEM_COLS = "txn_id, ctid, lkind, lcur, lamt, lfee_known, lfee, lmerchant, created, lorig"


def _as_line(r: dict[str, Any]) -> StatementLine:
    return StatementLine(
        line_no=int(r["line_no"]),
        kind=r["skind"],
        status=r["sstatus"],
        currency=r["scur"],
        amount=Decimal(r["samt"]),
        fee=Decimal(r["sfee"]) if r["sfee_known"] else None,
        txn_id=r["stxn"],
        channel_txn_id=r["sctid"],
        occurred_at_ms=int(r["sat"]),
        raw=r["sraw"],
    )


def _as_item(r: dict[str, Any]) -> LedgerOrder:
    # lamt is the comparable amount already: an item of the residue has no coupon
    return LedgerOrder(
        txn_id=r["txn_id"],
        type=r["lkind"],
        our_status="success",
        reversed=False,
        currency=r["lcur"],
        amount=Decimal(r["lamt"]),
        coupon_amount=None,
        fee=Decimal(r["lfee"]) if r["lfee_known"] else None,
        business_date=None,
        created_at_ms=int(r["created"]),
        channel_txn_id=r["ctid"],
        merchant_id=r["lmerchant"],
        original_txn_id=r["lorig"],
    )


def residue(
    db: Backend, params: dict[str, Any], rules: Rules
) -> tuple[list[StatementLine], list[LedgerOrder], list[Group]]:
    """`tally.core.eod.residue` in ClickHouse: the lines no id resolves, the items no
    line resolves to, the shared channel txn ids (small sets on a real day)."""
    resolved = resolved_sql(False)
    free_lines = [
        _as_line(r)
        for r in db.query(
            f"SELECT {_LINE_COLS} FROM ({resolved}) WHERE rk0 = '' AND splain ORDER BY line_no",
            params,
        )
    ]
    free_items = [
        _as_item(r)
        for r in db.query(
            f"SELECT {_ITEM_COLS} FROM ({ledger_sql('d')}) WHERE txn_id NOT IN "
            f"(SELECT rk0 FROM ({resolved}) WHERE rk0 != '') ORDER BY txn_id",
            params,
        )
    ]
    return free_lines, free_items, _groups(db, params) if rules.combined else []


def _groups(db: Backend, params: dict[str, Any]) -> list[Group]:
    """The items sharing a channel txn id, the lines quoting it, and whether a line
    quotes one of the items by its own id."""
    resolved = resolved_sql(False)
    shared = (
        f"(SELECT ctid FROM ({ledger_sql('d')}) WHERE ctid != '' GROUP BY ctid HAVING count() > 1)"
    )
    members: dict[str, list[LedgerOrder]] = {}
    for r in db.query(
        f"SELECT {_ITEM_COLS} FROM ({ledger_sql('d')}) WHERE ctid IN {shared} ORDER BY txn_id",
        params,
    ):
        members.setdefault(r["ctid"], []).append(_as_item(r))
    carrying: dict[str, list[StatementLine]] = {}
    for r in db.query(
        f"SELECT {_LINE_COLS} FROM ({resolved}) WHERE rk0 != '' AND stxn != rk0 "
        f"AND sctid IN {shared} ORDER BY line_no",
        params,
    ):
        carrying.setdefault(r["sctid"], []).append(_as_line(r))
    quoted = {
        r["txn_id"]
        for r in db.query(
            f"SELECT DISTINCT txn_id FROM ({lines_sql('d', 'n_d')}) WHERE txn_id IN "
            f"(SELECT txn_id FROM ({ledger_sql('d')}) WHERE ctid IN {shared})",
            params,
        )
    }
    return [
        Group(c, tuple(ms), tuple(carrying.get(c, ())), any(m.txn_id in quoted for m in ms))
        for c, ms in sorted(members.items())
    ]


def link_params(links: dict[int, Link]) -> dict[str, Any]:
    ls = [links[k] for k in sorted(links)]
    return {
        "k_n": len(ls),
        "k_no": [x.line_no for x in ls],
        "k_members": [",".join(x.members) for x in ls],
        "k_method": [x.method for x in ls],
        "k_score": [x.score for x in ls],
        "k_detail": [x.detail for x in ls],
        "k_gamt": [str(x.group_amount) for x in ls],
        "k_gfee": [str(x.group_fee) for x in ls],
    }
