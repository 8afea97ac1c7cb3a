"""The ClickHouse schema's migrations: the DDL, in order (`sinks.schema` applies them).

One schema for both backends: it must run on ClickHouse 18.16 (Debian's
clickhouse-server) and on chDB 26.x. So: no DateTime64, no LowCardinality, no
JSON type. Timestamps are Int64 epoch milliseconds (UTC, exact) with a
`DateTime('UTC')` column MATERIALIZED from them for humans and Grafana; money is
Decimal(18, 4) in major units (tally's amounts have at most 4 decimals and 13
integer digits); tables are ReplacingMergeTree with ORDER BY the stable identity
of a row and, where a row has successive states, a version. There is no PARTITION
BY: ReplacingMergeTree only collapses duplicates within one partition, and no
row attribute other than its identity is guaranteed stable.

Never edit an applied migration: add the next one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


def _ms_time(col: str, nullable: bool = False) -> str:
    """A DateTime column materialized from an Int64 epoch-ms column `<col>_ms`."""
    t = "Nullable(DateTime('UTC'))" if nullable else "DateTime('UTC')"
    return f"{col} {t} MATERIALIZED toDateTime(intDiv({col}_ms, 1000), 'UTC')"


_MONEY = "Decimal(18, 4)"
_NMONEY = f"Nullable({_MONEY})"

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "result tables: order states, breaks, postings, balances, status queries, "
        "dead letters, watermarks, channel transaction claims",
        (
            f"""CREATE TABLE IF NOT EXISTS {{db}}.order_states (
                txn_id String,
                version UInt64,
                events UInt32,
                known UInt8,
                type Nullable(String),
                merchant_id Nullable(String),
                channel_id Nullable(String),
                currency Nullable(String),
                amount {_NMONEY},
                coupon_amount {_NMONEY},
                fee {_NMONEY},
                original_txn_id Nullable(String),
                terminal_id Nullable(String),
                our_status Nullable(String),
                channel_status Nullable(String),
                channel_txn_id Nullable(String),
                standing String,
                resolved UInt8,
                reversed UInt8,
                business_date Nullable(Date),
                created_at_ms Nullable(Int64),
                updated_at_ms Int64,
                queries_sent UInt32,
                breaks Array(String),
                evidence String,
                state String,
                shard UInt16,
                {_ms_time("created_at", nullable=True)},
                {_ms_time("updated_at")}
            ) ENGINE = ReplacingMergeTree(version) ORDER BY txn_id""",
            f"""CREATE TABLE IF NOT EXISTS {{db}}.breaks (
                break_id String,
                kind String,
                txn_id String,
                merchant_id Nullable(String),
                channel_id Nullable(String),
                currency Nullable(String),
                amount {_NMONEY},
                channel_amount {_NMONEY},
                business_date Nullable(Date),
                event_time_ms Int64,
                detected_at_ms Nullable(Int64),
                detail String,
                evidence String,
                {_ms_time("event_time")},
                {_ms_time("detected_at", nullable=True)}
            ) ENGINE = ReplacingMergeTree() ORDER BY break_id""",
            f"""CREATE TABLE IF NOT EXISTS {{db}}.postings (
                posting_id String,
                account String,
                bucket String,
                component String,
                txn_id String,
                seq UInt32,
                merchant_id Nullable(String),
                channel_id Nullable(String),
                currency String,
                reason String,
                business_date Nullable(Date),
                event_time_ms Int64,
                account_kind String,
                amount {_MONEY},
                amount_minor Int64,
                {_ms_time("event_time")}
            ) ENGINE = ReplacingMergeTree()
            ORDER BY (posting_id, account, bucket, component)""",
            f"""CREATE TABLE IF NOT EXISTS {{db}}.balances (
                account String,
                currency String,
                shard UInt16,
                version UInt64,
                kind String,
                owner String,
                provisional_gross {_MONEY},
                provisional_refund {_MONEY},
                provisional_fee {_MONEY},
                provisional_coupon {_MONEY},
                confirmed_gross {_MONEY},
                confirmed_refund {_MONEY},
                confirmed_fee {_MONEY},
                confirmed_coupon {_MONEY},
                amounts_minor String
            ) ENGINE = ReplacingMergeTree(version) ORDER BY (account, currency, shard)""",
            f"""CREATE TABLE IF NOT EXISTS {{db}}.status_queries (
                query_id String,
                txn_id String,
                channel_id String,
                merchant_id Nullable(String),
                channel_txn_id Nullable(String),
                attempt UInt16,
                reason String,
                requested_at_ms Int64,
                {_ms_time("requested_at")}
            ) ENGINE = ReplacingMergeTree() ORDER BY query_id""",
            f"""CREATE TABLE IF NOT EXISTS {{db}}.dead_letters (
                dead_letter_id String,
                source_topic String,
                source_partition UInt32,
                source_offset UInt64,
                key_b64 Nullable(String),
                value_b64 String,
                value_size UInt32,
                value_truncated UInt8,
                value_sha256 String,
                code String,
                reason String,
                field Nullable(String),
                dead_at_ms Int64,
                {_ms_time("dead_at")}
            ) ENGINE = ReplacingMergeTree() ORDER BY dead_letter_id""",
            """CREATE TABLE IF NOT EXISTS {db}.watermarks (
                partition UInt16,
                watermark_ms Int64
            ) ENGINE = ReplacingMergeTree(watermark_ms) ORDER BY partition""",
            """CREATE TABLE IF NOT EXISTS {db}.channel_txn_claims (
                claim_key String,
                txn_id String,
                merchant_id Nullable(String),
                occurred_at_ms Int64,
                shard UInt16
            ) ENGINE = ReplacingMergeTree() ORDER BY claim_key""",
        ),
    ),
    Migration(
        2,
        "end of day: statement versions and lines, reconciliation runs and results, "
        "suspense entries and their append-only actions",
        (
            # One row per loaded statement file. A (channel, business date) may have
            # several deliveries; the highest `delivery` is the one in force (S7).
            # Lines are inserted before their version row: a version row exists only
            # for a file whose every line is stored, so readers join lines to versions
            # and never see half a file.
            f"""CREATE TABLE IF NOT EXISTS {{db}}.statement_versions (
                channel_id String,
                business_date Date,
                delivery UInt32,
                checksum String,
                format String,
                file_name String,
                line_count UInt32,
                total_amount {_MONEY},
                total_fee {_MONEY},
                loaded_at_ms Int64,
                loaded_by String,
                {_ms_time("loaded_at")}
            ) ENGINE = ReplacingMergeTree() ORDER BY (channel_id, business_date, delivery)""",
            # amount: what moved through the channel for the item (collected for a
            # payment, i.e. order amount less a platform coupon; paid back for a
            # refund), positive, major units. fee: NULL when the format states none.
            # txn_id: our order id as the statement quotes it ('' when it does not).
            f"""CREATE TABLE IF NOT EXISTS {{db}}.statement_lines (
                channel_id String,
                business_date Date,
                delivery UInt32,
                line_no UInt32,
                txn_id String,
                channel_txn_id String,
                original_txn_id String,
                kind String,
                status String,
                currency String,
                amount {_MONEY},
                fee {_NMONEY},
                coupon_amount {_NMONEY},
                merchant_ref String,
                occurred_at_ms Int64,
                raw String,
                {_ms_time("occurred_at")}
            ) ENGINE = ReplacingMergeTree()
            ORDER BY (channel_id, business_date, delivery, line_no)""",
            # One row per `tally recon run` of a channel and business date.
            f"""CREATE TABLE IF NOT EXISTS {{db}}.recon_runs (
                run_id String,
                channel_id String,
                business_date Date,
                statement_delivery UInt32,
                statement_checksum String,
                ledger_items UInt32,
                statement_items UInt32,
                counts String,
                started_at_ms Int64,
                finished_at_ms Int64,
                {_ms_time("started_at")},
                {_ms_time("finished_at")}
            ) ENGINE = ReplacingMergeTree() ORDER BY (channel_id, business_date, run_id)""",
            # One row per item (an order, or a statement line we cannot tie to one)
            # per run. class: matched | long | short | amount_mismatch | fee_mismatch |
            # status_mismatch | carried.
            f"""CREATE TABLE IF NOT EXISTS {{db}}.recon_results (
                run_id String,
                channel_id String,
                business_date Date,
                item_key String,
                class String,
                txn_id String,
                channel_txn_id String,
                merchant_id String,
                kind String,
                currency String,
                ledger_amount {_NMONEY},
                statement_amount {_NMONEY},
                ledger_fee {_NMONEY},
                statement_fee {_NMONEY},
                ledger_status String,
                statement_status String,
                statement_line UInt32,
                detail String
            ) ENGINE = ReplacingMergeTree()
            ORDER BY (channel_id, business_date, run_id, item_key)""",
            # A break parked with its amount until it is written off (S9). One entry per
            # item: a real-time break and the end-of-day result for the same order are
            # the same entry (entry_id from channel and item). `version` grows as more
            # evidence attaches; the entry's state comes from its actions.
            f"""CREATE TABLE IF NOT EXISTS {{db}}.suspense_entries (
                entry_id String,
                version UInt64,
                channel_id String,
                merchant_id String,
                txn_id String,
                channel_txn_id String,
                business_date Date,
                kinds Array(String),
                break_ids Array(String),
                currency String,
                amount {_MONEY},
                opened_at_ms Int64,
                updated_at_ms Int64,
                {_ms_time("opened_at")}
            ) ENGINE = ReplacingMergeTree(version) ORDER BY entry_id""",
            # Append-only history of what was done to an entry (write-off, link, ...);
            # nothing here is ever deleted or updated.
            f"""CREATE TABLE IF NOT EXISTS {{db}}.suspense_actions (
                action_id String,
                entry_id String,
                action String,
                reason String,
                actor String,
                linked_to String,
                at_ms Int64,
                {_ms_time("at")}
            ) ENGINE = ReplacingMergeTree() ORDER BY (entry_id, at_ms, action_id)""",
        ),
    ),
    Migration(
        3,
        "matching beyond exact ids: differences, method and score on recon_results; "
        "decisions on proposed lines",
        (
            # ClickHouse 18.16 has no ADD COLUMN IF NOT EXISTS: migrate() skips an ADD
            # COLUMN whose column is there (a half-applied migration re-run).
            # amount_difference: statement - ours for an item matched within tolerance;
            # fee_difference: |statement fee| - |our fee| likewise (0: none).
            # match_method: id | reference | combined | scored | accepted | ''.
            f"ALTER TABLE {{db}}.recon_results ADD COLUMN amount_difference {_MONEY} DEFAULT 0",
            f"ALTER TABLE {{db}}.recon_results ADD COLUMN fee_difference {_MONEY} DEFAULT 0",
            "ALTER TABLE {db}.recon_results ADD COLUMN match_method String DEFAULT ''",
            "ALTER TABLE {db}.recon_results ADD COLUMN score UInt8 DEFAULT 0",
            # Append-only: a person's accept / reject of a proposed line's candidate.
            f"""CREATE TABLE IF NOT EXISTS {{db}}.recon_decisions (
                decision_id String,
                channel_id String,
                business_date Date,
                item_key String,
                run_id String,
                action String,
                txn_id String,
                reason String,
                actor String,
                at_ms Int64,
                {_ms_time("at")}
            ) ENGINE = ReplacingMergeTree()
            ORDER BY (channel_id, business_date, item_key, at_ms, decision_id)""",
        ),
    ),
    Migration(
        4,
        "funds: the platform's bank account statements and settlement reconciliation "
        "runs and results",
        (
            # One row per loaded bank statement file of an account and statement date
            # (the closing balance's date); the highest delivery is in force. Entries
            # are inserted before their version row, as for channel statements.
            f"""CREATE TABLE IF NOT EXISTS {{db}}.bank_statement_versions (
                account String,
                statement_date Date,
                delivery UInt32,
                checksum String,
                format String,
                file_name String,
                entry_count UInt32,
                currency String,
                opening {_MONEY},
                closing {_MONEY},
                loaded_at_ms Int64,
                loaded_by String,
                {_ms_time("loaded_at")}
            ) ENGINE = ReplacingMergeTree() ORDER BY (account, statement_date, delivery)""",
            # direction: C money in, D money out; amount positive; booked 0 for a
            # camt.053 entry not booked (PDNG / INFO).
            f"""CREATE TABLE IF NOT EXISTS {{db}}.bank_entries (
                account String,
                statement_date Date,
                delivery UInt32,
                entry_no UInt32,
                line_no UInt32,
                direction String,
                amount {_MONEY},
                currency String,
                value_date Date,
                booking_date Date,
                entry_ref String,
                bank_ref String,
                customer_ref String,
                remittance String,
                booked UInt8,
                raw String
            ) ENGINE = ReplacingMergeTree()
            ORDER BY (account, statement_date, delivery, entry_no)""",
            # One row per `tally recon settlements --date D`.
            """CREATE TABLE IF NOT EXISTS {db}.settlement_runs (
                run_id String,
                run_date Date,
                window_start Date,
                bank_deliveries String,
                counts String,
                started_at_ms Int64,
                finished_at_ms Int64
            ) ENGINE = ReplacingMergeTree() ORDER BY (run_date, run_id)""",
            # One row per expected settlement (item_key stl:CHANNEL:CUR:DUE) or bank
            # credit no settlement takes (credit:ACCOUNT:REF) per run. class: settled |
            # settlement_late | settlement_short | settlement_over |
            # settlement_missing | unexpected_credit.
            f"""CREATE TABLE IF NOT EXISTS {{db}}.settlement_results (
                run_id String,
                run_date Date,
                item_key String,
                class String,
                channel_id String,
                currency String,
                due_date Nullable(Date),
                business_dates Array(Date),
                expected_amount {_NMONEY},
                credited_amount {_NMONEY},
                difference {_MONEY},
                credit_refs Array(String),
                value_dates Array(Date),
                sources Array(String),
                detail String
            ) ENGINE = ReplacingMergeTree() ORDER BY (run_date, run_id, item_key)""",
        ),
    ),
    Migration(
        5,
        "merchant payouts: payout batch files and merchant payout reconciliation runs and results",
        (
            # One row per loaded payout batch file of a business date; the highest
            # delivery is in force. Lines are inserted before their version row.
            f"""CREATE TABLE IF NOT EXISTS {{db}}.payout_versions (
                business_date Date,
                delivery UInt32,
                checksum String,
                file_name String,
                line_count UInt32,
                total {_MONEY},
                loaded_at_ms Int64,
                loaded_by String,
                {_ms_time("loaded_at")}
            ) ENGINE = ReplacingMergeTree() ORDER BY (business_date, delivery)""",
            f"""CREATE TABLE IF NOT EXISTS {{db}}.payout_lines (
                business_date Date,
                delivery UInt32,
                line_no UInt32,
                merchant_id String,
                currency String,
                amount {_MONEY},
                value_date Date,
                payout_ref String
            ) ENGINE = ReplacingMergeTree()
            ORDER BY (business_date, delivery, line_no)""",
            # One row per `tally recon merchants --date D`; source: file | bank.
            """CREATE TABLE IF NOT EXISTS {db}.merchant_recon_runs (
                run_id String,
                run_date Date,
                source String,
                deliveries String,
                counts String,
                started_at_ms Int64,
                finished_at_ms Int64
            ) ENGINE = ReplacingMergeTree() ORDER BY (run_date, run_id)""",
            # One row per merchant and currency of the business date (item_key
            # po:MERCHANT:CUR:DATE) per run. class: payout_matched | payout_short |
            # payout_over | payout_missing | unexpected_payout.
            f"""CREATE TABLE IF NOT EXISTS {{db}}.merchant_recon_results (
                run_id String,
                run_date Date,
                item_key String,
                class String,
                merchant_id String,
                currency String,
                net {_MONEY},
                held_amount {_MONEY},
                held_txn_ids Array(String),
                expected_amount {_NMONEY},
                paid_amount {_NMONEY},
                difference {_MONEY},
                payout_refs Array(String),
                value_dates Array(Date),
                detail String
            ) ENGINE = ReplacingMergeTree() ORDER BY (run_date, run_id, item_key)""",
        ),
    ),
)

LATEST = MIGRATIONS[-1].version


# the tables the sink fills from the output topics
TABLES = (
    "order_states",
    "breaks",
    "postings",
    "balances",
    "status_queries",
    "dead_letters",
    "watermarks",
    "channel_txn_claims",
)

# the tables of the end-of-day reconciliation (`recon/`)
RECON_TABLES = (
    "statement_versions",
    "statement_lines",
    "recon_runs",
    "recon_results",
    "suspense_entries",
    "suspense_actions",
    "recon_decisions",
    "bank_statement_versions",
    "bank_entries",
    "settlement_runs",
    "settlement_results",
    "payout_versions",
    "payout_lines",
    "merchant_recon_runs",
    "merchant_recon_results",
)
