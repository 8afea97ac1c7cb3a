"""Balances: per channel and top merchants, provisional vs confirmed, intraday. Every
money figure is per currency (the `currency` variable); amounts of different
currencies are never added."""

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
    prom,
    steps,
    time_bucket,
    ts,
)

UID = "tally-balances"
# a negative balance is unusual (a channel paid back more than it collected; a merchant
# owes us after refunds): red
NEGATIVE_RED = steps((None, "red"), (0, "green"))

CHANNELS = SqlVariable(
    "channel",
    "Channel",
    """
SELECT DISTINCT owner AS value
FROM ${database}.balances
WHERE kind = 'channel'
ORDER BY value
""",
    "channel accounts in ClickHouse (balances)",
)
MERCHANTS = SqlVariable(
    "merchant",
    "Merchant",
    """
SELECT DISTINCT owner AS value
FROM ${database}.balances
WHERE kind = 'merchant'
ORDER BY value
LIMIT 1000
""",
    "merchant accounts in ClickHouse (balances)",
)
CURRENCIES = SqlVariable(
    "currency",
    "Currency",
    """
SELECT DISTINCT currency AS value
FROM ${database}.balances
ORDER BY value
""",
    "one currency at a time: amounts of different currencies are never added",
    multi=False,
    include_all=False,
    default="CNY",
)

CHANNEL_BALANCES = CH(
    f"""
SELECT channel, currency,
       sum(prov) AS provisional,
       sum(conf) AS confirmed,
       sum(prov) + sum(conf) AS total,
       sum(n) AS postings
FROM (
    SELECT owner AS channel, currency,
           provisional_gross + provisional_refund + provisional_fee + provisional_coupon
               AS prov,
           confirmed_gross + confirmed_refund + confirmed_fee + confirmed_coupon AS conf,
           version AS n
    FROM ${{database}}.balances FINAL
    WHERE kind = 'channel'
)
WHERE {in_all("channel", "channel")}
GROUP BY channel, currency
ORDER BY channel, currency
""",
    {
        "channel": "String",
        "currency": "String",
        "provisional": "Decimal",
        "confirmed": "Decimal",
        "total": "Decimal",
        "postings": "UInt64",
    },
)

TOP_MERCHANTS = CH(
    f"""
SELECT merchant, currency,
       -sumIf(amount, bucket = 'confirmed') AS confirmed_payable,
       -sumIf(amount, bucket = 'provisional') AS provisional_payable,
       uniqExact(txn_id) AS orders
FROM (
    SELECT assumeNotNull(merchant_id) AS merchant, channel_id AS channel, currency, bucket,
           amount, txn_id
    FROM ${{database}}.postings FINAL
    WHERE account_kind = 'merchant' AND currency = '${{currency}}'
)
WHERE {in_all("channel", "channel")} AND {in_all("merchant", "merchant")}
GROUP BY merchant, currency
ORDER BY confirmed_payable DESC
LIMIT 20
""",
    {
        "merchant": "String",
        "currency": "String",
        "confirmed_payable": "Decimal",
        "provisional_payable": "Decimal",
        "orders": "UInt64",
    },
)

CHANNEL_INTRADAY = CH(
    f"""
SELECT {time_bucket("event_time")} AS time, bucket, sum(amount) AS amount
FROM (
    SELECT event_time, channel_id AS channel, bucket, amount
    FROM ${{database}}.postings FINAL
    WHERE $__timeFilter(event_time) AND account_kind = 'channel'
      AND currency = '${{currency}}'
)
WHERE {in_all("channel", "channel")}
GROUP BY time, bucket
ORDER BY time, bucket
""",
    {"time": "DateTime", "bucket": "String", "amount": "Decimal"},
    kind="timeseries",
)

MERCHANT_INTRADAY = CH(
    f"""
SELECT {time_bucket("event_time")} AS time, bucket, -sum(amount) AS payable
FROM (
    SELECT event_time, channel_id AS channel, merchant_id AS merchant, bucket, amount
    FROM ${{database}}.postings FINAL
    WHERE $__timeFilter(event_time) AND account_kind = 'merchant'
      AND currency = '${{currency}}'
)
WHERE {in_all("channel", "channel")} AND {in_all("merchant", "merchant")}
GROUP BY time, bucket
ORDER BY time, bucket
""",
    {"time": "DateTime", "bucket": "String", "payable": "Decimal"},
    kind="timeseries",
)


def build() -> Any:
    d = new_dashboard(
        UID,
        "tally — Balances",
        "Channel and merchant balances, provisional vs confirmed (S10), intraday. Live "
        "channel balances from the workers (Prometheus, a float copy for display); the "
        "books from ClickHouse (exact decimals). One currency at a time.",
        ["balances"],
    )
    d = d.time("now/d", "now").refresh("1m")
    d = (
        d.with_variable(CHANNELS.builder())
        .with_variable(MERCHANTS.builder())
        .with_variable(CURRENCIES.builder())
        .with_variable(database_variable())
    )
    d = _channels(d)
    d = _merchants(d)
    return d


def _channels(d: Any) -> Any:
    """Row "Channels": live and stored channel balances, movement."""
    d = d.with_row(dash.Row("Channels"))
    d = d.with_panel(
        ts(
            "Channel balance, live (Prometheus)",
            "What each channel collected for us in the selected currency, provisional "
            "(believed, not yet confirmed: S3, S10) and confirmed, as the workers hold it "
            "now. A float copy of exact amounts, for display.",
            [
                prom(
                    'sum by (channel, bucket) (tally_channel_balance{channel=~"$channel", '
                    'currency="$currency"})',
                    "{{channel}} {{bucket}}",
                )
            ],
            "none",
            decimals=2,
        )
    )
    d = d.with_panel(
        grid(
            "Channel balances (ClickHouse)",
            "Every channel account's balance by currency from the stored shard snapshots "
            "(FINAL): provisional, confirmed, their total and the postings applied.",
            [CHANNEL_BALANCES],
            thresholds=NEGATIVE_RED,
            decimals=2,
        )
    )
    d = d.with_panel(
        ts(
            "Channel movement per interval (ClickHouse)",
            "Postings to the selected channels' accounts per interval in the selected "
            "currency, provisional vs confirmed. A provisional amount later confirmed "
            "moves from one bucket to the other.",
            [CHANNEL_INTRADAY],
            "none",
            bars=True,
            decimals=2,
            w=24,
        )
    )
    return d


def _merchants(d: Any) -> Any:
    """Row "Merchants": top payables, payable per interval."""
    d = d.with_row(dash.Row("Merchants"))
    d = d.with_panel(
        grid(
            "Top merchants by confirmed payable",
            "The 20 merchants we owe most (confirmed) in the selected currency, with what "
            "is still provisional, over all time; filtered by the channel and merchant "
            "variables.",
            [TOP_MERCHANTS],
            thresholds=NEGATIVE_RED,
            decimals=2,
        )
    )
    d = d.with_panel(
        ts(
            "Merchant payable per interval",
            "Change of what we owe the selected merchants per interval (gross less "
            "refunds and fees), provisional vs confirmed.",
            [MERCHANT_INTRADAY],
            "none",
            bars=True,
            decimals=2,
        )
    )
    return d
