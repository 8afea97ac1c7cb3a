"""`tally bench recon`: end-of-day reconciliation of N ledger items against N statement
lines, tally's ClickHouse SQL (`recon.run`) next to a pandas merge of the same data.

Both sides are generated **inside ClickHouse** with `INSERT ... SELECT FROM numbers(N)`
(no Python row building): N orders of one channel and business date in
`order_states`, N lines of one statement delivery in `statement_lines`, with a known
mix of differences, per 100 items:

    i % 100 == 0   line missing, an extra line for an order we never had  short + long
    i % 100 == 1   amount + 0.01 on the line                              amount_mismatch
    i % 100 == 2   fee + 0.01 on the line                                 fee_mismatch
    i % 100 == 3   the line says refund                                   status_mismatch
    i % 100 == 4   created within the carry window before the cutoff,
                   line missing (the next day's statement is not loaded),
                   an extra line for an order we never had                carried + long
    otherwise      identical                                              matched

so 1,000,000 vs 1,000,000 gives 950,000 matched, 10,000 each of short, carried,
amount_mismatch, fee_mismatch, status_mismatch and 20,000 long.

Timed: `recon.run.run` (the SQL classification into recon_results, the run row and
the diff against the previous run; suspense synchronisation off, it is not part of the
comparison), then pandas: export both sides to DataFrames, then the merge and the
classification (vectorised). The class counts of both must equal the known mix.

pandas is in the `bench` extra: `pip install -e '.[bench]'`.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from recon.run import run
from recon.statements.load import VERSION_COLUMNS
from sinks.backend import Backend, render
from sinks.schema import migrate
from tally.core.eod import CLASSES
from tally.core.policy import ChannelPolicy

CHANNEL = "bench"
DAY = date(2026, 3, 2)


@dataclass
class BenchResult:
    rows: int
    build_seconds: float
    sql_seconds: float
    sql_counts: dict[str, int]
    pandas_export_seconds: float = 0.0
    pandas_merge_seconds: float = 0.0
    pandas_counts: dict[str, int] = field(default_factory=dict)
    expected: dict[str, int] = field(default_factory=dict)
    machine: str = ""
    # the same day again with 1-cent amount and fee tolerances on (docs/reconciliation.md)
    tolerance_seconds: float = 0.0
    tolerance_counts: dict[str, int] = field(default_factory=dict)

    @property
    def agree(self) -> bool:
        return self.sql_counts == self.expected and (
            not self.pandas_counts or self.pandas_counts == self.expected
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "build_seconds": round(self.build_seconds, 3),
            "sql_seconds": round(self.sql_seconds, 3),
            "pandas_export_seconds": round(self.pandas_export_seconds, 3),
            "pandas_merge_seconds": round(self.pandas_merge_seconds, 3),
            "pandas_total_seconds": round(
                self.pandas_export_seconds + self.pandas_merge_seconds, 3
            ),
            "sql_counts": self.sql_counts,
            "pandas_counts": self.pandas_counts,
            "expected": self.expected,
            "agree": self.agree,
            "tolerance_seconds": round(self.tolerance_seconds, 3),
            "tolerance_counts": self.tolerance_counts,
            "tolerance_vs_exact": round(self.tolerance_seconds / self.sql_seconds, 2)
            if self.sql_seconds
            else None,
            "machine": self.machine,
        }


def expected_counts(n: int) -> dict[str, int]:
    """The class counts the generated mix must give (see the module docstring)."""

    def per(r: int) -> int:  # how many i < n have i % 100 == r
        return n // 100 + (1 if n % 100 > r else 0)

    out = dict.fromkeys(CLASSES, 0)
    out["short"] = per(0)
    out["amount_mismatch"] = per(1)
    out["fee_mismatch"] = per(2)
    out["status_mismatch"] = per(3)
    out["carried"] = per(4)
    out["long"] = per(0) + per(4)
    out["matched"] = n - sum(per(r) for r in range(5))
    return out


def build(db: Backend, n: int, policy: ChannelPolicy) -> None:
    """Fresh tables in the backend's database, both sides generated in ClickHouse."""
    db.execute("DROP DATABASE IF EXISTS {db}")
    migrate(db)
    start = policy.cutoff_ms(DAY - timedelta(days=1))
    end = policy.cutoff_ms(DAY)
    # normal items: spread over 20 hours from 2 h after the day starts
    created = (
        f"if(number % 100 = 4, {end} - 1000 - (number % 60000), "
        f"{start} + 7200000 + intDiv(number * 72000000, {max(n, 1)}))"
    )
    amount_minor = "(100 + (number * 7919) % 2000000)"
    amount = f"toDecimal64({amount_minor}, 4) / 100"
    fee = f"toDecimal64(intDiv({amount_minor} * 6, 1000), 4) / 100"
    db.execute(
        "INSERT INTO {db}.order_states (txn_id, version, events, known, type, merchant_id, "
        "channel_id, currency, amount, coupon_amount, fee, our_status, channel_status, "
        "channel_txn_id, standing, resolved, reversed, business_date, created_at_ms, "
        "updated_at_ms, queries_sent, evidence, state, shard) "
        f"SELECT concat('B', toString(number)), 1, 1, 1, 'payment', "
        f"concat('M', toString(number % 997)), '{CHANNEL}', 'CNY', {amount}, "
        f"toDecimal64(0, 4), {fee}, 'success', 'success', concat('BC', toString(number)), "
        f"'confirmed', 1, 0, toDate('{DAY.isoformat()}'), {created}, {created} + 1500, 0, "
        f"'[]', '{{}}', 0 FROM numbers({n})"
    )
    extra = "number % 100 IN (0, 4)"
    db.execute(
        "INSERT INTO {db}.statement_lines (channel_id, business_date, delivery, line_no, "
        "txn_id, channel_txn_id, original_txn_id, kind, status, currency, amount, fee, "
        "coupon_amount, merchant_ref, occurred_at_ms, raw) "
        f"SELECT '{CHANNEL}', toDate('{DAY.isoformat()}'), 1, number + 1, "
        f"if({extra}, concat('X', toString(number)), concat('B', toString(number))), "
        f"if({extra}, concat('XC', toString(number)), concat('BC', toString(number))), '', "
        "if(number % 100 = 3, 'refund', 'payment'), 'success', 'CNY', "
        f"{amount} + if(number % 100 = 1, toDecimal64(0.01, 4), toDecimal64(0, 4)), "
        f"{fee} + if(number % 100 = 2, toDecimal64(0.01, 4), toDecimal64(0, 4)), "
        f"NULL, '', if({extra}, {start} + 7200000 + (number % 3600000), {created} + 500), '' "
        f"FROM numbers({n})"
    )
    tot = db.query(
        "SELECT count() AS n, sum(amount) AS a, sum(fee) AS f FROM {db}.statement_lines "
        "WHERE channel_id = %(c)s",
        {"c": CHANNEL},
    )[0]
    db.insert(
        "statement_versions",
        VERSION_COLUMNS,
        [
            (
                CHANNEL,
                DAY,
                1,
                f"bench-{n}",
                "csv",
                f"bench-{n}.csv",
                int(tot["n"]),
                tot["a"],
                tot["f"],
                int(time.time() * 1000),
                "tally bench recon",
            )
        ],
    )


def run_sql(db: Backend, policy: ChannelPolicy) -> tuple[float, dict[str, int]]:
    t0 = time.perf_counter()
    out = run(db, CHANNEL, DAY, policy, sync_suspense=False)
    return time.perf_counter() - t0, out.counts()


# ------------------------------------------------------------------ pandas


def _frame(db: Backend, sql: str) -> Any:
    """A DataFrame from a query: chDB hands one over directly (Arrow); a server's rows
    go through the driver."""
    import pandas as pd

    session = getattr(db, "session", None)
    if session is not None:
        return session.query(render(sql, db.database, None), "DataFrame")
    return pd.DataFrame(db.query(sql))


def export(db: Backend) -> tuple[Any, Any]:
    """Both sides as DataFrames, money as Int64 in 1/10,000 (exact)."""
    ledger = _frame(
        db,
        "SELECT txn_id, ifNull(channel_txn_id, '') AS ctid, type AS kind, currency, "
        "toInt64((amount - ifNull(coupon_amount, toDecimal64(0, 4))) * 10000) AS amount, "
        "toInt64(ifNull(fee, toDecimal64(0, 4)) * 10000) AS fee, created_at_ms, business_date "
        "FROM (SELECT * FROM {db}.order_states FINAL) WHERE our_status = 'success' "
        f"AND reversed = 0 AND type IN ('payment', 'refund') AND channel_id = '{CHANNEL}' "
        f"AND business_date IN (toDate('{(DAY - timedelta(days=1)).isoformat()}'), "
        f"toDate('{DAY.isoformat()}'), toDate('{(DAY + timedelta(days=1)).isoformat()}'))",
    )
    lines = _frame(
        db,
        "SELECT line_no, txn_id, channel_txn_id AS ctid, kind, status, currency, "
        "toInt64(amount * 10000) AS amount, isNotNull(fee) AS has_fee, "
        "toInt64(ifNull(fee, toDecimal64(0, 4)) * 10000) AS fee, occurred_at_ms "
        "FROM {db}.statement_lines FINAL "
        f"WHERE channel_id = '{CHANNEL}' AND business_date = toDate('{DAY.isoformat()}') "
        "AND delivery = 1",
    )
    return ledger, lines


def classify_pandas(
    ledger: Any, lines: Any, policy: ChannelPolicy, neighbours_loaded: bool = False
) -> dict[str, int]:
    """The same comparison as tally.core.eod, with pandas merges (one day; the
    neighbouring statements are not loaded in this benchmark)."""
    import numpy as np
    import pandas as pd

    start = policy.cutoff_ms(DAY - timedelta(days=1))
    end = policy.cutoff_ms(DAY)
    carry = policy.carry_window_seconds * 1000
    bd = pd.to_datetime(ledger["business_date"]).dt.date
    items = ledger[bd == DAY]
    neighbour_items = ledger[bd != DAY]
    # resolve each line to an item: txn_id, else channel txn id (smallest txn_id)
    by_ctid = (
        items[items["ctid"] != ""]
        .sort_values("txn_id")
        .drop_duplicates("ctid")[["ctid", "txn_id"]]
        .rename(columns={"txn_id": "ctid_txn"})
    )
    ln = lines.merge(by_ctid, on="ctid", how="left")
    in_items = ln["txn_id"].isin(items["txn_id"]) & (ln["txn_id"] != "")
    fallback = ln["ctid_txn"].where(ln["ctid_txn"].notna(), "")
    own = ln["txn_id"].where(ln["txn_id"] != "", ln["ctid"])
    ln["key"] = np.where(in_items, ln["txn_id"], np.where(fallback != "", fallback, own))
    first = ln.sort_values("line_no").drop_duplicates("key")
    m = items.rename(columns={"txn_id": "key"}).merge(
        first, on="key", how="outer", suffixes=("_l", "_s"), indicator=True
    )
    both = m["_merge"] == "both"
    left = m["_merge"] == "left_only"
    right = m["_merge"] == "right_only"
    status = both & ((m["status"] != "success") | (m["kind_s"] != m["kind_l"]))
    amount = (
        both & ~status & ((m["currency_s"] != m["currency_l"]) | (m["amount_s"] != m["amount_l"]))
    )
    fee = both & ~status & ~amount & m["has_fee"].astype(bool) & (m["fee_s"] != m["fee_l"])
    near_item = ((m["created_at_ms"] - end).abs() <= carry) | (
        (m["created_at_ms"] - start).abs() <= carry
    )
    carried_item = left & near_item & (not neighbours_loaded)
    near_line = ((m["occurred_at_ms"] - end).abs() <= carry) | (
        (m["occurred_at_ms"] - start).abs() <= carry
    )
    quoted = m["txn_id"].isin(neighbour_items["txn_id"]) | m["ctid_s"].isin(neighbour_items["ctid"])
    success_line = right & (m["status"] == "success")
    carried_line = success_line & near_line & quoted
    cls = np.select(
        [status, amount, fee, both, carried_item, left, carried_line, success_line],
        [
            "status_mismatch",
            "amount_mismatch",
            "fee_mismatch",
            "matched",
            "carried",
            "short",
            "carried",
            "long",
        ],
        default="",
    )
    counts = pd.Series(cls[cls != ""]).value_counts().to_dict()
    return {c: int(counts.get(c, 0)) for c in CLASSES}


def machine() -> str:
    import os

    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def bench(
    db: Backend, n: int, policy: ChannelPolicy | None = None, pandas: bool = True
) -> BenchResult:
    policy = policy or ChannelPolicy()
    t0 = time.perf_counter()
    build(db, n, policy)
    built = time.perf_counter() - t0
    sql_s, sql_counts = run_sql(db, policy)
    res = BenchResult(
        rows=n,
        build_seconds=built,
        sql_seconds=sql_s,
        sql_counts=sql_counts,
        expected=expected_counts(n),
        machine=machine(),
    )
    tolerant = policy.model_copy(update={"amount_tolerance_minor": 1, "fee_tolerance_minor": 1})
    res.tolerance_seconds, res.tolerance_counts = run_sql(db, tolerant)
    if pandas:
        t1 = time.perf_counter()
        ledger, lines = export(db)
        t2 = time.perf_counter()
        res.pandas_counts = classify_pandas(ledger, lines, policy)
        t3 = time.perf_counter()
        res.pandas_export_seconds, res.pandas_merge_seconds = t2 - t1, t3 - t2
    return res
