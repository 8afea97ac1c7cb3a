"""`tally recon run`: one channel and business date, ledger vs statement, in ClickHouse.

The comparison is one `INSERT ... SELECT` (no per-row Python), written for both
backends: ClickHouse 18.16 (no window functions, no CTEs over subqueries) and chDB
26.x. It is the SQL twin of `tally.core.eod.classify` (the reference; a property test
keeps them in agreement), so read that module for the rules. Shape of the query:

1. ledger items of D (`order_states FINAL`, filtered after FINAL);
2. the lines of D's delivery in force, each resolved to a ledger item: by txn_id
   (`IN`), else by channel txn id (ANY LEFT JOIN on a map channel txn id -> smallest
   txn_id);
3. ledger rows, line rows and "quoted orders" (orders the lines name that are not
   items, to say why a line is long) in one UNION ALL, grouped by item key: a full
   outer join by aggregation, the first line of an item by argMinIf(…, line_no);
4. the class from the group's two sides; carried from the neighbouring days' rows
   (IN sets), or a constant when the neighbouring statement is not loaded.

Every value in the union is non-Nullable (fees as flag + value), so neither
`join_use_nulls` nor Nullable join keys matter.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from sinks.backend import Backend
from tally.core.eod import (
    CLASSES,
    Day,
    LedgerOrder,
    StatementLine,
    carried_ledger_detail,
    carried_statement_detail,
)
from tally.core.matching import Decision, Decisions, Group, Link, Rules, find_links
from tally.core.policy import ChannelPolicy

RUN_COLUMNS = (
    "run_id",
    "channel_id",
    "business_date",
    "statement_delivery",
    "statement_checksum",
    "ledger_items",
    "statement_items",
    "counts",
    "started_at_ms",
    "finished_at_ms",
)
RESULT_COLUMNS = (
    "run_id",
    "channel_id",
    "business_date",
    "item_key",
    "class",
    "txn_id",
    "channel_txn_id",
    "merchant_id",
    "kind",
    "currency",
    "ledger_amount",
    "statement_amount",
    "ledger_fee",
    "statement_fee",
    "ledger_status",
    "statement_status",
    "statement_line",
    "detail",
    "amount_difference",
    "fee_difference",
    "match_method",
    "score",
)


class ReconError(RuntimeError):
    """A run that cannot be made (no statement, unknown run, ...)."""


def day_of(policy: ChannelPolicy, day: date) -> Day:
    return Day(
        day=day,
        start_cutoff_ms=policy.cutoff_ms(day - timedelta(days=1)),
        end_cutoff_ms=policy.cutoff_ms(day),
        carry_ms=policy.carry_window_seconds * 1000,
    )


# ------------------------------------------------------------------- the SQL

_ORDERS = (
    "(SELECT txn_id, channel_txn_id, type, currency, amount, coupon_amount, fee, "
    "merchant_id, created_at_ms, business_date, our_status, reversed, channel_id, "
    "original_txn_id "
    "FROM {db}.order_states FINAL)"
)
_ZERO = "toDecimal64(0, 4)"


def _ledger(day_param: str) -> str:
    """Ledger items of the channel on a business date (filtered after FINAL)."""
    return (
        "SELECT txn_id, ifNull(channel_txn_id, '') AS ctid, assumeNotNull(type) AS lkind, "
        "ifNull(currency, '') AS lcur, "
        f"if(assumeNotNull(type) = 'payment', ifNull(amount, {_ZERO}) - "
        f"ifNull(coupon_amount, {_ZERO}), ifNull(amount, {_ZERO})) AS lamt, "
        f"toUInt8(isNotNull(fee)) AS lfee_known, ifNull(fee, {_ZERO}) AS lfee, "
        "ifNull(merchant_id, '') AS lmerchant, ifNull(created_at_ms, 0) AS created, "
        "ifNull(original_txn_id, '') AS lorig "
        f"FROM {_ORDERS} WHERE channel_id = %(c)s AND business_date = toDate(%({day_param})s) "
        "AND our_status = 'success' AND reversed = 0 AND type IN ('payment', 'refund')"
    )


def _lines(day_param: str, delivery_param: str) -> str:
    return (
        "SELECT line_no, txn_id, channel_txn_id, kind, status, currency, amount, fee, "
        "occurred_at_ms, raw FROM {db}.statement_lines FINAL WHERE channel_id = %(c)s "
        f"AND business_date = toDate(%({day_param})s) AND delivery = %({delivery_param})s"
    )


def _near(col: str, cutoff_param: str) -> str:
    return f"abs({col} - %({cutoff_param})s) <= %(carry)s"


def _ledger_found(side: str, loaded: bool) -> str:
    """Is a ledger item (txn_id, ctid) on the neighbouring statement `side`?"""
    if not loaded:
        return "1"
    lines = (
        f"(SELECT txn_id, channel_txn_id FROM ({_lines(side, 'n_' + side)}) "
        "WHERE status = 'success' AND kind IN ('payment', 'refund'))"
    )
    return (
        f"(txn_id IN (SELECT txn_id FROM {lines}) OR "
        f"(ctid != '' AND ctid IN (SELECT channel_txn_id FROM {lines})))"
    )


def _line_found(side: str) -> str:
    """Is a line (stxn, sctid) an item of the neighbouring day's ledger `side`?"""
    items = f"({_ledger(side)})"
    return (
        f"((stxn != '' AND stxn IN (SELECT txn_id FROM {items})) OR "
        f"(sctid != '' AND sctid IN (SELECT ctid FROM {items} WHERE ctid != '')))"
    )


# The columns of the UNION ALL in classify_sql and their value where a side has none.
_UNION = (
    ("side", "toUInt8(0)"),
    ("key", "''"),
    ("txn", "''"),
    ("lctid", "''"),
    ("lkind", "''"),
    ("lcur", "''"),
    ("lamt", _ZERO),
    ("lfee_known", "toUInt8(0)"),
    ("lfee", _ZERO),
    ("merchant", "''"),
    ("lcarry", "''"),
    ("lexcess", "''"),
    ("qstatus", "''"),
    ("line_no", "toUInt32(0)"),
    ("sctid", "''"),
    ("skind", "''"),
    ("sstatus", "''"),
    ("scur", "''"),
    ("samt", _ZERO),
    ("sfee_known", "toUInt8(0)"),
    ("sfee", _ZERO),
    ("scarry", "''"),
    ("splain", "toUInt8(0)"),
    ("smethod", "''"),
    ("kmethod", "''"),
    ("kscore", "toUInt8(0)"),
    ("kdetail", "''"),
    ("kgamt", _ZERO),
    ("kgfee", _ZERO),
    ("klead", "toUInt8(0)"),
)


def _union_part(values: dict[str, str], source: str) -> str:
    """One SELECT of the union, every column in order. Defaults are materialized:
    ClickHouse 18.16 refuses a UNION ALL whose first SELECT has a constant where a
    later one has a column."""
    cols = []
    for name, default in _UNION:
        expr = values.get(name)
        if expr is None or expr.startswith("toUInt8("):
            expr = f"materialize({expr or default})"
        cols.append(expr if expr == name else f"{expr} AS {name}")
    return f"SELECT {', '.join(cols)} FROM {source}"


def _abs(x: str) -> str:
    return f"if(({x}) < 0, -({x}), ({x}))"  # abs() of a Decimal: not on 18.16


def _resolved(links: bool) -> str:
    """The day's lines, each with the item it resolves to by id (rk0: by txn_id, else
    by channel txn id, '' when neither) and, with links, the link's fields and one row
    per item it is linked to (rk)."""
    ledger = _ledger("d")
    base = (
        "SELECT line_no, stxn, sctid, skind, sstatus, scur, samt, sfee_known, sfee, sat, sraw, "
        "toUInt8(sstatus = 'success' AND skind IN ('payment', 'refund')) AS splain, "
        f"if(stxn != '' AND stxn IN (SELECT txn_id FROM ({ledger})), stxn, via) AS rk0 "
        "FROM (SELECT line_no, txn_id AS stxn, channel_txn_id AS sctid, kind AS skind, "
        f"status AS sstatus, currency AS scur, amount AS samt, toUInt8(isNotNull(fee)) "
        f"AS sfee_known, ifNull(fee, {_ZERO}) AS sfee, occurred_at_ms AS sat, raw AS sraw "
        f"FROM ({_lines('d', 'n_d')})) AS sl "
        "ANY LEFT JOIN (SELECT ctid AS sctid, min(txn_id) AS via "
        f"FROM ({ledger}) WHERE ctid != '' GROUP BY ctid) AS cm USING sctid"
    )
    if not links:
        return (
            "SELECT *, rk0 AS rk, materialize(multiIf(rk0 != '' AND stxn = rk0, 'id', "
            "rk0 != '', 'reference', '')) AS smethod, materialize('') AS kmethod, "
            f"toUInt8(0) AS kscore, materialize('') AS kdetail, materialize({_ZERO}) AS kgamt, "
            f"materialize({_ZERO}) AS kgfee, toUInt8(1) AS klead FROM ({base})"
        )
    linked = (
        "SELECT toUInt32(%(k_no)s[i]) AS line_no, %(k_members)s[i] AS kmem, "
        "%(k_method)s[i] AS kmethod, toUInt8(%(k_score)s[i]) AS kscore, "
        "%(k_detail)s[i] AS kdetail, toDecimal64(%(k_gamt)s[i], 4) AS kgamt, "
        "toDecimal64(%(k_gfee)s[i], 4) AS kgfee "
        "FROM (SELECT arrayJoin(range(toUInt32(%(k_n)s))) + 1 AS i)"
    )
    joined = f"SELECT * FROM ({base}) AS rl ANY LEFT JOIN ({linked}) AS lk USING line_no"
    return (
        "SELECT *, multiIf(kmethod NOT IN ('', 'proposed'), kmethod, rk0 != '' AND stxn = rk0, "
        "'id', rk0 != '', 'reference', '') AS smethod, "
        "toUInt8(kmethod != 'combined' OR rk = splitByChar(',', kmem)[1]) AS klead "
        "FROM (SELECT *, arrayJoin(if(kmethod NOT IN ('', 'proposed'), "
        f"splitByChar(',', kmem), [rk0])) AS rk FROM ({joined}))"
    )


def _ledger_with_excess() -> str:
    """Ledger items of D, each refund flagged (lexcess: its payment) when our refunds
    of its payment up to D exceed the payment (`tally.core.matching.refund_excess`)."""
    excess = (
        "SELECT orig AS lorig, toUInt8(1) AS xflag FROM (SELECT if(type = 'refund', "
        "ifNull(original_txn_id, ''), txn_id) AS orig, type AS t, "
        f"ifNull(amount, {_ZERO}) AS a FROM {_ORDERS} WHERE channel_id = %(c)s AND "
        "(type = 'payment' OR (type = 'refund' AND our_status = 'success' AND reversed = 0 "
        "AND business_date <= toDate(%(d)s) AND ifNull(original_txn_id, '') != ''))) "
        "GROUP BY orig HAVING max(t = 'payment') = 1 AND countIf(t = 'refund') > 0 "
        "AND sumIf(a, t = 'refund') > maxIf(a, t = 'payment')"
    )
    return (
        "SELECT *, if(lkind = 'refund' AND xflag = 1, lorig, '') AS lexcess "
        f"FROM ({_ledger('d')}) AS lx ANY LEFT JOIN ({excess}) AS ex USING lorig"
    )


def classify_sql(prev_loaded: bool, next_loaded: bool, links: bool = False) -> str:
    """INSERT ... SELECT of every item of (C, D) into recon_results. `links`: the
    query takes the run's links (`tally.core.matching.find_links`) as array parameters."""
    ledger = _ledger("d")
    lines = _lines("d", "n_d")
    lcarry = (
        f"multiIf({_near('created', 'end_ms')} AND {_ledger_found('dnext', next_loaded)}, "
        f"%(lc_next)s, {_near('created', 'start_ms')} AND "
        f"{_ledger_found('dprev', prev_loaded)}, %(lc_prev)s, '')"
    )
    scarry = (
        f"multiIf(splain AND {_near('sat', 'end_ms')} AND {_line_found('dnext')}, "
        f"%(sc_next)s, splain AND {_near('sat', 'start_ms')} AND "
        f"{_line_found('dprev')}, %(sc_prev)s, '')"
    )
    # the line an item is compared with: the first that is not a plain success, else
    # the first (a payment and its revocation: the revocation)
    order = "toUInt64(line_no) + if(splain, 4294967296, 0)"
    ledger_rows = _union_part(
        {
            "side": "toUInt8(1)",
            "key": "txn_id",
            "txn": "txn_id",
            "lctid": "ctid",
            "lkind": "lkind",
            "lcur": "lcur",
            "lamt": "lamt",
            "lfee_known": "lfee_known",
            "lfee": "lfee",
            "merchant": "lmerchant",
            "lcarry": lcarry,
            "lexcess": "lexcess",
        },
        f"({_ledger_with_excess()})",
    )
    line_rows = _union_part(
        {
            "side": "toUInt8(2)",
            "key": "multiIf(rk != '', rk, stxn != '', stxn, sctid != '', sctid, "
            "concat('line:', toString(line_no)))",
            "txn": "stxn",
            "line_no": "line_no",
            "sctid": "sctid",
            "skind": "skind",
            "sstatus": "sstatus",
            "scur": "scur",
            "samt": "samt",
            "sfee_known": "sfee_known",
            "sfee": "sfee",
            "scarry": scarry,
            "splain": "splain",
            "smethod": "smethod",
            "kmethod": "kmethod",
            "kscore": "kscore",
            "kdetail": "kdetail",
            "kgamt": "kgamt",
            "kgfee": "kgfee",
            "klead": "klead",
        },
        f"({_resolved(links)})",
    )
    quoted_rows = _union_part(
        {
            "side": "toUInt8(3)",
            "key": "txn_id",
            "txn": "txn_id",
            "merchant": "ifNull(merchant_id, '')",
            "qstatus": "if(reversed = 1, 'reversed', ifNull(our_status, ''))",
        },
        f"{_ORDERS} WHERE channel_id = %(c)s "
        f"AND txn_id IN (SELECT txn_id FROM ({lines}) WHERE txn_id != '') "
        f"AND txn_id NOT IN (SELECT txn_id FROM ({ledger}))",
    )
    grouped = (
        "SELECT key, max(side = 1) AS has_l, max(side = 2) AS has_s, "
        "anyIf(txn, side = 1) AS l_txn, anyIf(lctid, side = 1) AS l_ctid, "
        "anyIf(lkind, side = 1) AS lkind, anyIf(lcur, side = 1) AS lcur, "
        "anyIf(lamt, side = 1) AS lamt, anyIf(lfee_known, side = 1) AS lfee_known, "
        "anyIf(lfee, side = 1) AS lfee, anyIf(merchant, side != 2) AS merchant, "
        "anyIf(lcarry, side = 1) AS lcarry, anyIf(lexcess, side = 1) AS lexcess, "
        "anyIf(qstatus, side = 3) AS qstatus, "
        f"argMinIf(line_no, {order}, side = 2) AS line, "
        + "".join(
            f"argMinIf({c}, {order}, side = 2) AS {a}, "
            for c, a in (
                ("txn", "s_txn"),
                ("sctid", "s_ctid"),
                ("skind", "skind"),
                ("sstatus", "sstatus"),
                ("scur", "scur"),
                ("samt", "samt"),
                ("sfee_known", "sfee_known"),
                ("sfee", "sfee"),
                ("scarry", "scarry"),
                ("splain", "s_plain"),
                ("smethod", "smethod"),
                ("kmethod", "kmethod"),
                ("kscore", "kscore"),
                ("kdetail", "kdetail"),
                ("kgamt", "kgamt"),
                ("kgfee", "kgfee"),
                ("klead", "klead"),
            )
        )
        + "countIf(side = 2) AS nlines "
        f"FROM ({ledger_rows} UNION ALL {line_rows} UNION ALL {quoted_rows}) GROUP BY key"
    )
    # what the line is compared with: the item, or a combined group's sums
    cmp = "if(smethod = 'combined', kgamt, lamt)"
    cfee = f"if(smethod = 'combined', kgfee, {_abs('lfee')})"
    dd = f"if(samt >= {cmp}, samt - {cmp}, {cmp} - samt)"
    amount_ok = (
        f"({dd} <= toDecimal64(%(atol)s, 4) OR toDecimal128({dd}, 4) * 10000 <= "
        f"toDecimal128({_abs(cmp)}, 4) * %(abps)s)"
    )
    fd = f"{_abs('sfee')} - {cfee}"
    fee_ok = f"({_abs(fd)} <= toDecimal64(%(ftol)s, 4))"
    cls = (
        "multiIf(has_l AND has_s, multiIf(sstatus != 'success' OR skind != lkind, "
        f"'status_mismatch', scur != lcur OR NOT {amount_ok}, 'amount_mismatch', "
        "lexcess != '', 'refund_excess', "
        f"sfee_known AND NOT {fee_ok}, 'fee_mismatch', 'matched'), "
        "has_l, if(lcarry != '', 'carried', 'short'), scarry != '', 'carried', "
        "kmethod = 'proposed', 'proposed', 'long')"
    )
    base_detail = (
        "multiIf(cls = 'status_mismatch', concat('statement: ', skind, ' ', sstatus, "
        "'; ours: ', lkind, ' success'), cls = 'amount_mismatch', 'amount or currency differs', "
        "cls = 'refund_excess', concat('refunds of ', lexcess, ' exceed the payment'), "
        "cls = 'fee_mismatch', 'fee differs', cls = 'matched', '', cls = 'short', "
        "'not on the statement', cls = 'carried', if(has_l, lcarry, scarry), "
        "cls = 'proposed', kdetail, "
        "concat('no success on our side', if(qstatus != '', concat(' (ours: ', qstatus, ')'), "
        "'')))"
    )
    detail = (
        f"concat({base_detail} AS bd, if(has_l AND has_s AND smethod IN ('combined', 'accepted'), "
        "concat(if(bd != '', '; ', ''), kdetail), ''), "
        "if(nlines > 1, concat(' (', toString(nlines), ' lines)'), ''))"
    )
    both = "has_l AND has_s AND klead"
    adiff = (
        f"if({both} AND cls IN ('matched', 'fee_mismatch', 'refund_excess'), samt - {cmp}, {_ZERO})"
    )
    fdiff = f"if({both} AND cls = 'matched' AND sfee_known, {fd}, {_ZERO})"
    score = (
        "multiIf(has_l AND has_s AND smethod IN ('scored', 'accepted'), kscore, "
        "NOT has_l AND cls = 'proposed', kscore, toUInt8(0))"
    )
    cols = ", ".join(RESULT_COLUMNS)
    return (
        f"INSERT INTO {{db}}.recon_results ({cols}) "
        f"SELECT %(run)s, %(c)s, toDate(%(d)s), key, {cls} AS cls, "
        "if(has_l, l_txn, s_txn), if(has_l AND l_ctid != '', l_ctid, s_ctid), merchant, "
        "if(has_l, lkind, skind), if(has_l, lcur, scur), "
        "if(has_l, toNullable(lamt), NULL), if(has_s, toNullable(samt), NULL), "
        "if(has_l AND lfee_known, toNullable(lfee), NULL), "
        "if(has_s AND sfee_known, toNullable(sfee), NULL), "
        "if(has_l, 'success', qstatus), sstatus, line, "
        f"{detail}, {adiff}, {fdiff}, if(has_l AND has_s, smethod, ''), {score} "
        f"FROM ({grouped}) WHERE has_l OR s_plain"
    )


# ---------------------------------------------------------------- statements


@dataclass(frozen=True)
class Delivery:
    delivery: int
    checksum: str


def deliveries(db: Backend, channel: str, days: list[date]) -> dict[date, Delivery]:
    """The statement version in force (highest delivery with a version row) per day."""
    rows = db.query(
        "SELECT business_date AS day, max(delivery) AS dl, argMax(checksum, delivery) AS sum "
        "FROM {db}.statement_versions FINAL WHERE channel_id = %(c)s "
        "AND business_date IN (" + ", ".join(f"toDate('{d.isoformat()}')" for d in days) + ") "
        "GROUP BY business_date",
        {"c": channel},
    )
    return {r["day"]: Delivery(int(r["dl"]), r["sum"]) for r in rows}


def channels_of(db: Backend, day: date) -> list[str]:
    """Channels with a statement or ledger items for a business date."""
    rows = db.query(
        "SELECT DISTINCT channel_id FROM {db}.statement_versions FINAL "
        "WHERE business_date = toDate(%(d)s)",
        {"d": day.isoformat()},
    ) + db.query(
        "SELECT DISTINCT assumeNotNull(channel_id) AS channel_id FROM (SELECT channel_id, "
        "business_date, our_status, type, reversed FROM {db}.order_states FINAL) "
        "WHERE business_date = toDate(%(d)s) AND our_status = 'success' AND reversed = 0 "
        "AND type IN ('payment', 'refund') AND isNotNull(channel_id)",
        {"d": day.isoformat()},
    )
    return sorted({r["channel_id"] for r in rows})


# ----------------------------------------------------------------------- runs


@dataclass
class Change:
    item_key: str
    old: str  # '' when the item was not in the previous run
    new: str  # '' when it is not in this run
    currency: str
    old_amount: Decimal | None
    new_amount: Decimal | None
    old_statement_amount: Decimal | None
    new_statement_amount: Decimal | None

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Decimal) else v) for k, v in self.__dict__.items()}


@dataclass
class RunOutcome:
    run_id: str
    channel_id: str
    business_date: date
    delivery: int
    checksum: str
    ledger_items: int
    statement_items: int
    # class -> currency -> (count, amount)
    summary: dict[str, dict[str, tuple[int, Decimal]]]
    previous_run: str | None
    changes: list[Change]
    seconds: float
    neighbours: dict[str, int | None] = field(default_factory=dict)
    suspense: dict[str, int] = field(default_factory=dict)
    posted_to: date | None = None
    # currency -> (items, amount differences, fee differences) matched within tolerance
    tolerated: dict[str, tuple[int, Decimal, Decimal]] = field(default_factory=dict)
    dry_run: bool = False

    def counts(self) -> dict[str, int]:
        return {c: sum(n for n, _ in self.summary.get(c, {}).values()) for c in CLASSES}

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "channel_id": self.channel_id,
            "business_date": self.business_date.isoformat(),
            "statement_delivery": self.delivery,
            "statement_checksum": self.checksum,
            "neighbour_deliveries": self.neighbours,
            "ledger_items": self.ledger_items,
            "statement_items": self.statement_items,
            "counts": self.counts(),
            "amounts": {
                c: {cur: str(a) for cur, (_, a) in sorted(by.items())}
                for c, by in self.summary.items()
            },
            "previous_run": self.previous_run,
            "changes": [c.to_json() for c in self.changes],
            "suspense": self.suspense,
            "suspense_posted_to": self.posted_to.isoformat() if self.posted_to else None,
            "tolerated": {
                cur: {"items": n, "amount_difference": str(a), "fee_difference": str(f)}
                for cur, (n, a, f) in sorted(self.tolerated.items())
            },
            "dry_run": self.dry_run,
            "seconds": round(self.seconds, 3),
        }


def new_run_id(channel: str, day: date, now_ms: int) -> str:
    return f"{day.isoformat()}.{channel}.{now_ms}.{secrets.token_hex(3)}"


def previous_run(db: Backend, channel: str, day: date, before: str | None = None) -> str | None:
    rows = db.query(
        "SELECT run_id FROM {db}.recon_runs FINAL WHERE channel_id = %(c)s "
        "AND business_date = toDate(%(d)s) AND run_id != %(r)s "
        "ORDER BY started_at_ms DESC, run_id DESC LIMIT 1",
        {"c": channel, "d": day.isoformat(), "r": before or ""},
    )
    return rows[0]["run_id"] if rows else None


def latest_run(db: Backend, channel: str, day: date) -> str | None:
    return previous_run(db, channel, day)


def _residue(
    db: Backend, params: dict[str, Any], rules: Rules
) -> tuple[list[StatementLine], list[LedgerOrder], list[Group]]:
    """`tally.core.eod.residue` in ClickHouse: the lines no id resolves, the items no
    line resolves to, the shared channel txn ids (small sets on a real day)."""
    resolved = _resolved(False)
    line_cols = "line_no, stxn, sctid, skind, sstatus, scur, samt, sfee_known, sfee, sat, sraw, rk0"
    item_cols = "txn_id, ctid, lkind, lcur, lamt, lfee_known, lfee, lmerchant, created, lorig"

    def as_line(r: dict[str, Any]) -> StatementLine:
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

    def as_item(r: dict[str, Any]) -> LedgerOrder:
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

    free_lines = [
        as_line(r)
        for r in db.query(
            f"SELECT {line_cols} FROM ({resolved}) WHERE rk0 = '' AND splain ORDER BY line_no",
            params,
        )
    ]
    free_items = [
        as_item(r)
        for r in db.query(
            f"SELECT {item_cols} FROM ({_ledger('d')}) WHERE txn_id NOT IN "
            f"(SELECT rk0 FROM ({resolved}) WHERE rk0 != '') ORDER BY txn_id",
            params,
        )
    ]
    groups: list[Group] = []
    if rules.combined:
        shared = (
            f"(SELECT ctid FROM ({_ledger('d')}) WHERE ctid != '' GROUP BY ctid HAVING count() > 1)"
        )
        members: dict[str, list[LedgerOrder]] = {}
        for r in db.query(
            f"SELECT {item_cols} FROM ({_ledger('d')}) WHERE ctid IN {shared} ORDER BY txn_id",
            params,
        ):
            members.setdefault(r["ctid"], []).append(as_item(r))
        carrying: dict[str, list[StatementLine]] = {}
        for r in db.query(
            f"SELECT {line_cols} FROM ({resolved}) WHERE rk0 != '' AND stxn != rk0 "
            f"AND sctid IN {shared} ORDER BY line_no",
            params,
        ):
            carrying.setdefault(r["sctid"], []).append(as_line(r))
        quoted = {
            r["txn_id"]
            for r in db.query(
                f"SELECT DISTINCT txn_id FROM ({_lines('d', 'n_d')}) WHERE txn_id IN "
                f"(SELECT txn_id FROM ({_ledger('d')}) WHERE ctid IN {shared})",
                params,
            )
        }
        groups = [
            Group(c, tuple(ms), tuple(carrying.get(c, ())), any(m.txn_id in quoted for m in ms))
            for c, ms in sorted(members.items())
        ]
    return free_lines, free_items, groups


def _link_params(links: dict[int, Link]) -> dict[str, Any]:
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


def decisions_of(db: Backend, channel: str, day: date) -> Decisions:
    """What people accepted or rejected of the day's proposed lines, in order."""
    rows = db.query(
        "SELECT item_key, action, txn_id FROM {db}.recon_decisions FINAL "
        "WHERE channel_id = %(c)s AND business_date = toDate(%(d)s) "
        "ORDER BY at_ms, decision_id",
        {"c": channel, "d": day.isoformat()},
    )
    return Decisions.of(Decision(r["item_key"], r["action"], r["txn_id"]) for r in rows)


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
    params: dict[str, Any] = {
        "run": run_id,
        "c": channel,
        "d": day.isoformat(),
        "dprev": d.prev.isoformat(),
        "dnext": d.next.isoformat(),
        "n_d": vers[day].delivery,
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
    links: dict[int, Link] = {}
    if rules.searching:
        links = find_links(*_residue(db, params, rules), rules, decisions_of(db, channel, day))
        params.update(_link_params(links))
    db.execute(classify_sql(d.prev in vers, d.next in vers, bool(links)), params)
    summary = run_summary(db, channel, day, run_id)
    tolerated = tolerated_of(db, channel, day, run_id)
    n_ledger = db.query(f"SELECT count() AS n FROM ({_ledger('d')})", params)[0]["n"]
    n_lines = db.query(f"SELECT count() AS n FROM ({_lines('d', 'n_d')})", params)[0]["n"]
    counts = {c: sum(n for n, _ in summary.get(c, {}).values()) for c in CLASSES}
    finished = int(time.time() * 1000)
    if dry_run:
        changes = diff(db, channel, day, prev_run, run_id) if prev_run else []
        db.execute(
            "ALTER TABLE {db}.recon_results DELETE WHERE channel_id = %(c)s "
            "AND business_date = toDate(%(d)s) AND run_id = %(run)s",
            params,
        )
    else:
        db.insert(
            "recon_runs",
            RUN_COLUMNS,
            [
                (
                    run_id,
                    channel,
                    day,
                    vers[day].delivery,
                    vers[day].checksum,
                    int(n_ledger),
                    int(n_lines),
                    json.dumps(counts, separators=(",", ":")),
                    now_ms,
                    max(finished, now_ms),
                )
            ],
        )
        changes = diff(db, channel, day, prev_run, run_id) if prev_run else []
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
        changes=changes,
        seconds=0.0,
        neighbours={
            d.prev.isoformat(): vers[d.prev].delivery if d.prev in vers else None,
            d.next.isoformat(): vers[d.next].delivery if d.next in vers else None,
        },
        tolerated=tolerated,
        dry_run=dry_run,
    )
    if sync_suspense and not dry_run:
        from recon import suspense

        today = policy.business_date(now_ms)
        # S7: a day reconciled before and already past is settled; what a later run
        # finds is posted as a break of the current day.
        post_to = today if (prev_run is not None and day < today) else day
        # real-time breaks first, so that this run clears those it finds matched
        parked = suspense.sync_breaks(db, day=day, channel=channel, now_ms=now_ms)
        out.suspense = suspense.sync_run(db, run_id, post_to=post_to, now_ms=now_ms)
        out.suspense.update({f"breaks_{k}": v for k, v in parked.items()})
        out.posted_to = post_to
    out.seconds = time.monotonic() - t0
    return out


def tolerated_of(
    db: Backend, channel: str, day: date, run_id: str
) -> dict[str, tuple[int, Decimal, Decimal]]:
    """currency -> (items matched with a difference, amount differences summed, fee
    differences summed): tolerated money is still money."""
    rows = db.query(
        "SELECT currency, count() AS n, sum(amount_difference) AS a, "
        "sum(fee_difference) AS f FROM {db}.recon_results FINAL WHERE channel_id = %(c)s "
        "AND business_date = toDate(%(d)s) AND run_id = %(r)s "
        "AND (amount_difference != 0 OR fee_difference != 0) GROUP BY currency ORDER BY currency",
        {"c": channel, "d": day.isoformat(), "r": run_id},
    )
    return {r["currency"]: (int(r["n"]), Decimal(r["a"]), Decimal(r["f"])) for r in rows}


def run_summary(
    db: Backend, channel: str, day: date, run_id: str
) -> dict[str, dict[str, tuple[int, Decimal]]]:
    """class -> currency -> (items, amount: ours, else the statement's)."""
    rows = db.query(
        "SELECT class, currency, count() AS n, "
        "sum(ifNull(ledger_amount, ifNull(statement_amount, toDecimal64(0, 4)))) AS amount "
        "FROM {db}.recon_results FINAL WHERE channel_id = %(c)s AND business_date = toDate(%(d)s) "
        "AND run_id = %(r)s GROUP BY class, currency ORDER BY class, currency",
        {"c": channel, "d": day.isoformat(), "r": run_id},
    )
    out: dict[str, dict[str, tuple[int, Decimal]]] = {}
    for r in rows:
        out.setdefault(r["class"], {})[r["currency"]] = (int(r["n"]), Decimal(r["amount"]))
    return out


def diff(db: Backend, channel: str, day: date, old: str, new: str) -> list[Change]:
    """Items whose class or amounts differ between two runs of (channel, day)."""

    def pick(col: str, run: str) -> str:
        return f"anyIf({col}, run_id = %({run})s)"

    def text(col: str, run: str) -> str:
        return f"ifNull(toString({pick(col, run)}), '-')"

    money = ("ledger_amount", "statement_amount", "ledger_fee", "statement_fee")
    rows = db.query(
        "SELECT item_key, o, n, cur, oa, na, osa, nsa FROM ("
        f"SELECT item_key, {pick('class', 'o')} AS o, {pick('class', 'n')} AS n, "
        "any(currency) AS cur, "
        f"{pick('ledger_amount', 'o')} AS oa, {pick('ledger_amount', 'n')} AS na, "
        f"{pick('statement_amount', 'o')} AS osa, {pick('statement_amount', 'n')} AS nsa, "
        + ", ".join(f"{text(m, 'o')} AS o_{m}, {text(m, 'n')} AS n_{m}" for m in money)
        + " FROM {db}.recon_results FINAL WHERE channel_id = %(c)s "
        "AND business_date = toDate(%(d)s) AND run_id IN (%(o)s, %(n)s) GROUP BY item_key) "
        "WHERE o != n OR " + " OR ".join(f"o_{m} != n_{m}" for m in money) + " ORDER BY item_key",
        {"c": channel, "d": day.isoformat(), "o": old, "n": new},
    )
    return [
        Change(
            item_key=r["item_key"],
            old=r["o"],
            new=r["n"],
            currency=r["cur"],
            old_amount=r["oa"],
            new_amount=r["na"],
            old_statement_amount=r["osa"],
            new_statement_amount=r["nsa"],
        )
        for r in rows
    ]


def results(
    db: Backend, channel: str, day: date, run_id: str, cls: str | None = None
) -> list[dict[str, Any]]:
    where = "channel_id = %(c)s AND business_date = toDate(%(d)s) AND run_id = %(r)s"
    params: dict[str, Any] = {"c": channel, "d": day.isoformat(), "r": run_id}
    if cls:
        where += " AND class = %(k)s"
        params["k"] = cls
    return db.query(
        f"SELECT {', '.join(RESULT_COLUMNS)} FROM {{db}}.recon_results FINAL "
        f"WHERE {where} ORDER BY item_key",
        params,
    )


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
