"""End of day: reconciliation classes by channel and day, suspense aging, settlement
totals, statement arrival per channel, funds (expected vs arrived per channel) and
merchant payouts vs clearing. For finance, every morning. All ClickHouse;
the time range selects business dates (`$__dateFilter(business_date)`)."""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.builders import dashboard as dash

from dashboards.common import (
    CH,
    SqlVariable,
    database_variable,
    grid,
    in_all,
    new_dashboard,
    steps,
    ts,
)
from tally.core import suspense

UID = "tally-eod"

# the latest run of each (channel, business date) in the range: its results are in force
LATEST_RUNS = """
    SELECT channel_id, business_date, argMax(run_id, finished_at_ms)
    FROM ${database}.recon_runs FINAL
    WHERE $__dateFilter(business_date)
    GROUP BY channel_id, business_date
"""

# the actions that close a suspense entry, and the one that reopens it (tally.core.suspense)
CLOSING = ", ".join(f"'{a}'" for a in (*suspense.WRITE_OFFS, suspense.CLEARED))
REOPENED = f"'{suspense.REOPENED}'"
AS_OF_MS = "toUnixTimestamp($__toTime) * 1000"

CHANNELS = SqlVariable(
    "channel",
    "Channel",
    """
SELECT DISTINCT channel_id AS value
FROM ${database}.recon_runs
ORDER BY value
""",
    "channels with reconciliation runs (ClickHouse)",
)
MERCHANTS = SqlVariable(
    "merchant",
    "Merchant",
    """
SELECT DISTINCT merchant_id AS value
FROM ${database}.recon_results
WHERE $__dateFilter(business_date) AND merchant_id != ''
ORDER BY value
LIMIT 1000
""",
    "merchants in the reconciliation results of the range (ClickHouse)",
)

CLASSES = CH(
    f"""
SELECT business_date AS day, channel_id AS channel, class, count() AS items,
       sum(ifNull(statement_amount, ledger_amount)) AS amount
FROM ${{database}}.recon_results FINAL
WHERE $__dateFilter(business_date)
  AND (channel_id, business_date, run_id) IN ({LATEST_RUNS})
  AND {in_all("channel_id", "channel")} AND {in_all("merchant_id", "merchant")}
GROUP BY day, channel, class
ORDER BY day DESC, channel, class
""",
    {
        "day": "Date",
        "channel": "String",
        "class": "String",
        "items": "UInt64",
        "amount": "Nullable(Decimal)",
    },
)

BREAK_CLASSES_PER_DAY = CH(
    f"""
SELECT toDateTime(business_date) AS time, class, count() AS items
FROM ${{database}}.recon_results FINAL
WHERE $__dateFilter(business_date) AND class NOT IN ('matched', 'carried')
  AND (channel_id, business_date, run_id) IN ({LATEST_RUNS})
  AND {in_all("channel_id", "channel")} AND {in_all("merchant_id", "merchant")}
GROUP BY time, class
ORDER BY time, class
""",
    {"time": "DateTime", "class": "String", "items": "UInt64"},
    kind="timeseries",
)

SUSPENSE_AGING = CH(
    f"""
SELECT multiIf(age_days < 1, '0-1d', age_days < 3, '1-3d', age_days < 7, '3-7d',
               age_days < 30, '7-30d', '30d+') AS age,
       currency, count() AS entries, sum(amount) AS amount
FROM (
    SELECT entry_id, channel_id, merchant_id, currency, amount,
           ({AS_OF_MS} - opened_at_ms) / 86400000 AS age_days
    FROM ${{database}}.suspense_entries FINAL
    WHERE opened_at_ms <= {AS_OF_MS}
)
WHERE entry_id NOT IN (
    SELECT entry_id FROM (
        SELECT entry_id, argMax(action, at_ms) AS last_action
        FROM ${{database}}.suspense_actions FINAL
        WHERE action IN ({CLOSING}, {REOPENED}) AND at_ms <= {AS_OF_MS}
        GROUP BY entry_id
    )
    WHERE last_action != {REOPENED}
)
  AND {in_all("channel_id", "channel")} AND {in_all("merchant_id", "merchant")}
GROUP BY age, currency
ORDER BY age, currency
""",
    {"age": "String", "currency": "String", "entries": "UInt64", "amount": "Decimal"},
)

SUSPENSE_BY_CHANNEL = CH(
    f"""
SELECT channel_id AS channel, currency,
       count() AS entries, sum(amount) AS amount,
       min(opened_at) AS oldest
FROM (
    SELECT entry_id, channel_id, merchant_id, currency, amount, opened_at, opened_at_ms
    FROM ${{database}}.suspense_entries FINAL
    WHERE opened_at_ms <= {AS_OF_MS}
)
WHERE entry_id NOT IN (
    SELECT entry_id FROM (
        SELECT entry_id, argMax(action, at_ms) AS last_action
        FROM ${{database}}.suspense_actions FINAL
        WHERE action IN ({CLOSING}, {REOPENED}) AND at_ms <= {AS_OF_MS}
        GROUP BY entry_id
    )
    WHERE last_action != {REOPENED}
)
  AND {in_all("channel_id", "channel")} AND {in_all("merchant_id", "merchant")}
GROUP BY channel, currency
ORDER BY amount DESC
""",
    {
        "channel": "String",
        "currency": "String",
        "entries": "UInt64",
        "amount": "Decimal",
        "oldest": "DateTime",
    },
)

SETTLEMENT = CH(
    f"""
SELECT business_date AS day, channel, currency,
       -sumIf(amount, component = 'gross') AS gross,
       sumIf(amount, component = 'refund') AS refunds,
       sumIf(amount, component = 'fee') AS fees,
       -sum(amount) AS net_payable,
       uniqExact(merchant) AS merchants
FROM (
    SELECT assumeNotNull(business_date) AS business_date, channel_id AS channel,
           ifNull(merchant_id, '') AS merchant, currency, component, amount
    FROM ${{database}}.postings FINAL
    WHERE account_kind = 'merchant' AND bucket = 'confirmed'
      AND business_date IS NOT NULL AND $__dateFilter(business_date)
)
WHERE {in_all("channel", "channel")} AND {in_all("merchant", "merchant")}
GROUP BY day, channel, currency
ORDER BY day DESC, channel, currency
""",
    {
        "day": "Date",
        "channel": "Nullable(String)",
        "currency": "String",
        "gross": "Decimal",
        "refunds": "Decimal",
        "fees": "Decimal",
        "net_payable": "Decimal",
        "merchants": "UInt64",
    },
)

STATEMENTS = CH(
    f"""
SELECT business_date AS day, channel_id AS channel,
       max(delivery) AS deliveries,
       min(loaded_at) AS first_loaded,
       max(loaded_at) AS last_loaded,
       (min(loaded_at_ms) - toUInt64(toDateTime(business_date)) * 1000) / 3600000
           AS hours_after_day_start,
       argMax(line_count, delivery) AS lines,
       argMax(total_amount, delivery) AS total_amount,
       argMax(total_fee, delivery) AS total_fee
FROM ${{database}}.statement_versions FINAL
WHERE $__dateFilter(business_date) AND {in_all("channel_id", "channel")}
GROUP BY day, channel
ORDER BY day DESC, channel
""",
    {
        "day": "Date",
        "channel": "String",
        "deliveries": "UInt32",
        "first_loaded": "DateTime",
        "last_loaded": "DateTime",
        "hours_after_day_start": "Float64",
        "lines": "UInt32",
        "total_amount": "Decimal",
        "total_fee": "Decimal",
    },
)


# the latest run of each date in the range (settlement: bank value date; merchant
# payouts: business date)
def _latest(runs: str) -> str:
    return f"""
    SELECT run_date, argMax(run_id, finished_at_ms)
    FROM ${{database}}.{runs} FINAL
    WHERE $__dateFilter(run_date)
    GROUP BY run_date
"""


FUNDS = CH(
    f"""
SELECT run_date AS day, channel_id AS channel, currency,
       sum(assumeNotNull(expected_amount)) AS expected,
       sum(assumeNotNull(credited_amount)) AS arrived,
       sum(assumeNotNull(credited_amount)) - sum(assumeNotNull(expected_amount))
           AS difference,
       countIf(class IN ('settled', 'settlement_late')) AS in_order,
       countIf(class NOT IN ('settled', 'settlement_late')) AS breaks
FROM ${{database}}.settlement_results FINAL
WHERE $__dateFilter(run_date) AND (run_date, run_id) IN ({_latest("settlement_runs")})
  AND {in_all("channel_id", "channel")}
GROUP BY day, channel, currency
ORDER BY day DESC, channel, currency
""",
    {
        "day": "Date",
        "channel": "String",
        "currency": "String",
        "expected": "Decimal",
        "arrived": "Decimal",
        "difference": "Decimal",
        "in_order": "UInt64",
        "breaks": "UInt64",
    },
)

PAYOUTS = CH(
    f"""
SELECT run_date AS day, merchant_id AS merchant, currency, class,
       net AS clearing_net, held_amount AS held_back,
       assumeNotNull(expected_amount) AS payable,
       assumeNotNull(paid_amount) AS paid, difference
FROM ${{database}}.merchant_recon_results FINAL
WHERE $__dateFilter(run_date) AND (run_date, run_id) IN ({_latest("merchant_recon_runs")})
  AND {in_all("merchant_id", "merchant")}
ORDER BY day DESC, class = 'payout_matched', merchant, currency
LIMIT 1000
""",
    {
        "day": "Date",
        "merchant": "String",
        "currency": "String",
        "class": "String",
        "clearing_net": "Decimal",
        "held_back": "Decimal",
        "payable": "Decimal",
        "paid": "Decimal",
        "difference": "Decimal",
    },
)


def build() -> Any:
    d = new_dashboard(
        UID,
        "tally — End of day",
        "The end-of-day reconciliation (channel statement vs our ledger): classes by "
        "channel and business day, open suspense entries by age, settlement totals, "
        "statement arrival. The time range selects business dates.",
        ["eod", "finance"],
    )
    d = d.time("now-7d/d", "now").refresh("5m")
    d = (
        d.with_variable(CHANNELS.builder())
        .with_variable(MERCHANTS.builder())
        .with_variable(database_variable())
    )
    d = _reconciliation(d)
    d = _suspense(d)
    d = _settlement(d)
    d = _funds(d)
    return d


def _reconciliation(d: Any) -> Any:
    """Row "Reconciliation": classes by channel and day, breaks per day."""
    d = d.with_row(dash.Row("Reconciliation"))
    d = d.with_panel(
        grid(
            "Reconciliation classes by channel and day",
            "Items of the latest run per channel and business date by class (matched, "
            "long, short, amount_mismatch, fee_mismatch, status_mismatch, carried), with "
            "the statement amount (ours when the statement has none).",
            [CLASSES],
            decimals=2,
            w=14,
            h=10,
        )
    )
    d = d.with_panel(
        ts(
            "Breaks per business day",
            "Items that are not matched or carried, per business day and class.",
            [BREAK_CLASSES_PER_DAY],
            "none",
            steps((None, "green"), (1, "red")),
            stacked=True,
            bars=True,
            w=10,
            h=10,
        )
    )
    return d


def _suspense(d: Any) -> Any:
    """Row "Suspense": open entries by age and by channel."""
    d = d.with_row(dash.Row("Suspense"))
    d = d.with_panel(
        grid(
            "Open suspense by age",
            "Suspense entries (挂账) open at the end of the range, by age since opened and "
            "currency: an entry is open until a write-off (refunded, channel_confirmed, "
            "loss_accepted, linked) or a re-run clears it, and open again if a later run "
            "reopens it.",
            [SUSPENSE_AGING],
            decimals=2,
        )
    )
    d = d.with_panel(
        grid(
            "Open suspense by channel",
            "Open entries per channel and currency, their amount and the oldest.",
            [SUSPENSE_BY_CHANNEL],
            decimals=2,
        )
    )
    return d


def _settlement(d: Any) -> Any:
    """Row "Settlement and statements"."""
    d = d.with_row(dash.Row("Settlement and statements"))
    d = d.with_panel(
        grid(
            "Settlement totals",
            "Per business day, channel and currency, what the merchants are owed for "
            "confirmed orders: gross, refunds, fees, net payable (recon/settle.py reads "
            "the same postings; hold-backs for open suspense are in `tally settle`).",
            [SETTLEMENT],
            decimals=2,
            w=24,
        )
    )
    d = d.with_panel(
        grid(
            "Statement arrival per channel",
            "Statement files per channel and business day: deliveries (a re-delivery "
            "supersedes, S7), first and last load, hours after the business day began "
            "(UTC), and the figures of the delivery in force.",
            [STATEMENTS],
            thresholds=steps((None, "green"), (34, "yellow"), (48, "red")),
            decimals=2,
            w=24,
        )
    )
    return d


def _funds(d: Any) -> Any:
    """Row "Funds and merchant payouts"."""
    d = d.with_row(dash.Row("Funds and merchant payouts"))
    d = d.with_panel(
        grid(
            "Settlement: money expected vs arrived per channel",
            "The latest `tally recon settlements` run of each bank date: per channel and "
            "currency, what the channels' statements say they owe (expected) against the "
            "credits in our bank account (arrived), settled or late vs breaks (short, "
            "over, missing, unexpected credit; channel empty: a credit no channel claims).",
            [FUNDS],
            decimals=2,
            w=24,
        )
    )
    d = d.with_panel(
        grid(
            "Merchant payouts vs clearing",
            "The latest `tally recon merchants` run of each business date: per merchant, "
            "the clearing net (`tally settle`), what open breaks hold back, the payable, "
            "what was paid and the difference; breaks first (payout_short, payout_over, "
            "payout_missing, unexpected_payout).",
            [PAYOUTS],
            decimals=2,
            w=24,
        )
    )
    return d
