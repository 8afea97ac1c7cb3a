"""`tally recon run`: one channel and business date, ledger vs statement, in ClickHouse.

The comparison is one `INSERT ... SELECT` (no per-row Python), written for both
backends: ClickHouse 18.16 (no window functions, no CTEs over subqueries) and chDB
26.x. It is the SQL twin of `recon.classify.classify` (the reference; a property test
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
import secrets
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from recon.classify import CLASSES, Day, carried_ledger_detail, carried_statement_detail
from sinks.backend import Backend
from tally.policy import ChannelPolicy

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
    "merchant_id, created_at_ms, business_date, our_status, reversed, channel_id "
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
        "ifNull(merchant_id, '') AS lmerchant, ifNull(created_at_ms, 0) AS created "
        f"FROM {_ORDERS} WHERE channel_id = %(c)s AND business_date = toDate(%({day_param})s) "
        "AND our_status = 'success' AND reversed = 0 AND type IN ('payment', 'refund')"
    )


def _lines(day_param: str, delivery_param: str) -> str:
    return (
        "SELECT line_no, txn_id, channel_txn_id, kind, status, currency, amount, fee, "
        "occurred_at_ms FROM {db}.statement_lines FINAL WHERE channel_id = %(c)s "
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


def classify_sql(prev_loaded: bool, next_loaded: bool) -> str:
    """INSERT ... SELECT of every item of (C, D) into recon_results."""
    ledger = _ledger("d")
    lines = _lines("d", "n_d")
    zero = _ZERO
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
    resolved = (
        "SELECT line_no, stxn, sctid, skind, sstatus, scur, samt, sfee_known, sfee, sat, "
        "toUInt8(sstatus = 'success' AND skind IN ('payment', 'refund')) AS splain, "
        f"if(stxn != '' AND stxn IN (SELECT txn_id FROM ({ledger})), stxn, via) AS rk "
        "FROM (SELECT line_no, txn_id AS stxn, channel_txn_id AS sctid, kind AS skind, "
        f"status AS sstatus, currency AS scur, amount AS samt, toUInt8(isNotNull(fee)) "
        f"AS sfee_known, ifNull(fee, {zero}) AS sfee, occurred_at_ms AS sat "
        f"FROM ({lines})) AS sl "
        "ANY LEFT JOIN (SELECT ctid AS sctid, min(txn_id) AS via "
        f"FROM ({ledger}) WHERE ctid != '' GROUP BY ctid) AS cm USING sctid"
    )
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
        },
        f"({ledger})",
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
        },
        f"({resolved})",
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
        "anyIf(lcarry, side = 1) AS lcarry, anyIf(qstatus, side = 3) AS qstatus, "
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
            )
        )
        + "countIf(side = 2) AS nlines "
        f"FROM ({ledger_rows} UNION ALL {line_rows} UNION ALL {quoted_rows}) GROUP BY key"
    )
    cls = (
        "multiIf(has_l AND has_s, multiIf(sstatus != 'success' OR skind != lkind, "
        "'status_mismatch', scur != lcur OR samt != lamt, 'amount_mismatch', "
        "sfee_known AND if(sfee < 0, -sfee, sfee) != if(lfee < 0, -lfee, lfee), "
        "'fee_mismatch', 'matched'), "
        "has_l, if(lcarry != '', 'carried', 'short'), if(scarry != '', 'carried', 'long'))"
    )
    detail = (
        "concat(multiIf(cls = 'status_mismatch', concat('statement: ', skind, ' ', sstatus, "
        "'; ours: ', lkind, ' success'), cls = 'amount_mismatch', 'amount or currency differs', "
        "cls = 'fee_mismatch', 'fee differs', cls = 'matched', '', cls = 'short', "
        "'not on the statement', cls = 'carried', if(has_l, lcarry, scarry), "
        "concat('no success on our side', if(qstatus != '', concat(' (ours: ', qstatus, ')'), "
        "''))), if(nlines > 1, concat(' (', toString(nlines), ' lines)'), ''))"
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
        f"{detail} FROM ({grouped}) WHERE has_l OR s_plain"
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


def run(
    db: Backend,
    channel: str,
    day: date,
    policy: ChannelPolicy,
    *,
    now_ms: int | None = None,
    sync_suspense: bool = True,
) -> RunOutcome:
    """Reconcile (channel, day) against the statement in force; store the run and its
    results; report what changed since the previous run; update suspense."""
    t0 = time.monotonic()
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    d = day_of(policy, day)
    vers = deliveries(db, channel, [d.prev, day, d.next])
    if day not in vers:
        raise ReconError(
            f"no statement loaded for channel {channel!r} on {day.isoformat()}: "
            "load it first (`tally statements load FILE --channel ...`)"
        )
    prev_run = previous_run(db, channel, day)
    run_id = new_run_id(channel, day, now_ms)
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
    }
    db.execute(classify_sql(d.prev in vers, d.next in vers), params)
    summary = run_summary(db, channel, day, run_id)
    n_ledger = db.query(f"SELECT count() AS n FROM ({_ledger('d')})", params)[0]["n"]
    n_lines = db.query(f"SELECT count() AS n FROM ({_lines('d', 'n_d')})", params)[0]["n"]
    counts = {c: sum(n for n, _ in summary.get(c, {}).values()) for c in CLASSES}
    finished = int(time.time() * 1000)
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
    )
    if sync_suspense:
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
