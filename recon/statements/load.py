"""Load a statement file into ClickHouse as one *version*, validated whole first.

    result = load_file(db, settings, data, channel="wechat", file_name="wechat-2026-11-24.csv")

1. Parse (the format's own checks: encoding, layout, amounts, formulas, footer
   totals against the lines) and `validate` (pure: kinds, statuses, currencies,
   positive amounts, duplicates, every line inside the business day or within the
   channel's carry window of its cutoff). Any failure raises `StatementError`
   naming the line and the field, before anything is written.
2. Version: (channel, business date, delivery, checksum). The same checksum already
   loaded for that channel and date: nothing is written (`status="already_loaded"`).
   Otherwise delivery = the highest delivery so far + 1; it supersedes the earlier
   ones (readers take the highest delivery that has a `statement_versions` row).
3. Write: every `statement_lines` row of the version first, in batches, then the
   one `statement_versions` row. A crash in between leaves lines without a version
   row: invisible to readers (they join lines to versions). Loading the same file
   again finds those orphan lines, sees they are its own (same line numbers, same
   text), and reuses their delivery number: the rows are written again with the
   same keys and ReplacingMergeTree keeps one copy, so the load converges. Orphans
   from a different file are skipped over (the next delivery number is used).

Not safe against two loads of the same channel and date at the same moment: run
one loader per channel and date at a time.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from recon.statements import MODULES, detect, scan
from recon.statements import fields as F
from recon.statements.model import (
    KINDS,
    STATUSES,
    Statement,
    StatementError,
    StatementLine,
    Totals,
)
from sinks.backend import Backend
from tally.config import Settings
from tally.core.money import EXPONENTS
from tally.core.policy import ChannelPolicy

LINE_COLUMNS = (
    "channel_id",
    "business_date",
    "delivery",
    "line_no",
    "txn_id",
    "channel_txn_id",
    "original_txn_id",
    "kind",
    "status",
    "currency",
    "amount",
    "fee",
    "coupon_amount",
    "merchant_ref",
    "occurred_at_ms",
    "raw",
)
VERSION_COLUMNS = (
    "channel_id",
    "business_date",
    "delivery",
    "checksum",
    "format",
    "file_name",
    "line_count",
    "total_amount",
    "total_fee",
    "loaded_at_ms",
    "loaded_by",
)
_LINE_STRUCTURE = (
    "channel_id String, business_date Date, delivery UInt32, line_no UInt32, "
    "txn_id String, channel_txn_id String, original_txn_id String, kind String, "
    "status String, currency String, amount Decimal(18, 4), "
    "fee Nullable(Decimal(18, 4)), coupon_amount Nullable(Decimal(18, 4)), "
    "merchant_ref String, occurred_at_ms Int64, raw String"
)
BATCH_ROWS = 200_000

Progress = Callable[[str, int, int], None]  # (phase, done so far, total)


@dataclass
class LoadResult:
    status: str  # loaded | already_loaded
    channel_id: str
    business_date: date
    delivery: int
    format: str
    file_name: str
    checksum: str
    line_count: int
    total_amount: Decimal
    total_fee: Decimal
    declared: Totals | None = None
    superseded: list[int] = field(default_factory=list)  # earlier deliveries now replaced
    current_delivery: int | None = None  # for already_loaded: the delivery in force
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "channel_id": self.channel_id,
            "business_date": self.business_date.isoformat(),
            "delivery": self.delivery,
            "format": self.format,
            "file_name": self.file_name,
            "checksum": self.checksum,
            "lines": self.line_count,
            "total_amount": str(self.total_amount),
            "total_fee": str(self.total_fee),
            "superseded": self.superseded,
            "current_delivery": self.current_delivery,
            "seconds": round(self.seconds, 3),
        }


# ------------------------------------------------------------------ validation


def day_bounds(policy: ChannelPolicy, day: date) -> tuple[int, int]:
    """[start, end) of a business day in epoch ms."""
    return policy.cutoff_ms(day - timedelta(days=1)), policy.cutoff_ms(day)


def _label(fmt: str, attr: str, default: str) -> str:
    mod = MODULES.get(fmt)
    return str(getattr(mod, attr, default)) if mod else default


def derive_date(statement: Statement, policy: ChannelPolicy, requested: date | None) -> date:
    """The statement's business date: what the file declares (MT940 :62F:, camt.053
    CLBD, Alipay 起始日期) or else `requested` (--date), or else a date in the file
    name, or else the business date most of the lines have. A declared date that
    differs from `requested` is an error."""
    where = F.Where(statement.file_name)
    declared = statement.business_date
    if declared is not None:
        if requested is not None and requested != declared:
            raise where.error(
                None,
                "business date",
                f"the file is for {declared}, not --date {requested}",
            )
        return declared
    if requested is not None:
        return requested
    named = F.date_in_name(statement.file_name)
    if named is not None:
        return named
    if not statement.lines:
        raise where.error(None, "business date", "an empty file without a date: give --date")
    sample = statement.lines[:10_000]
    votes = collections.Counter(policy.business_date(x.occurred_at_ms) for x in sample)
    return votes.most_common(1)[0][0]


def validate(
    statement: Statement,
    policy: ChannelPolicy,
    business_date: date,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Checks every line against the business day and the others (pure). Raises
    StatementError on the first problem."""
    where = F.Where(statement.file_name)
    fmt = statement.format
    time_field = _label(fmt, "TIME_FIELD", "occurred_at")
    ctid_field = _label(fmt, "CTID_FIELD", "channel_txn_id")
    start, end = day_bounds(policy, business_date)
    carry = policy.carry_window_seconds * 1000
    seen: dict[tuple[str, str, str], int] = {}
    kinds, statuses = set(KINDS), set(STATUSES)
    formula = frozenset(F.FORMULA_START)
    for n, x in enumerate(statement.lines, start=1):
        ln = x.line_no
        if x.kind not in kinds:
            raise where.error(ln, "kind", f"{x.kind!r} is not one of {', '.join(KINDS)}")
        if x.status not in statuses:
            raise where.error(ln, "status", f"{x.status!r} is not one of {', '.join(STATUSES)}")
        if x.currency not in EXPONENTS:
            raise where.error(ln, "currency", f"{x.currency!r} is not a known ISO 4217 currency")
        if x.amount <= 0:
            raise where.error(ln, "amount", f"{x.amount} must be greater than zero")
        if not x.channel_txn_id:
            raise where.error(ln, ctid_field, "empty")
        if (
            x.txn_id[:1] in formula
            or x.channel_txn_id[:1] in formula
            or x.original_txn_id[:1] in formula
            or x.merchant_ref[:1] in formula
        ):
            for name in ("txn_id", "channel_txn_id", "original_txn_id", "merchant_ref"):
                F.text(where, ln, name, getattr(x, name))
        t = x.occurred_at_ms
        if not (start <= t < end) and not (abs(t - start) <= carry or abs(t - end) <= carry):
            got = policy.business_date(t)
            raise where.error(
                ln,
                time_field,
                f"{F.utc_iso(t)} is business date {got} for this channel, not {business_date} "
                f"(and not within the {policy.carry_window_seconds} s carry window of the "
                "cutoff)",
            )
        key = (x.kind, x.channel_txn_id, x.txn_id if x.kind != "payment" else "")
        first = seen.get(key)
        if first is not None:
            raise where.error(
                ln,
                ctid_field,
                f"duplicate of line {first}: {x.kind} {x.channel_txn_id!r} appears twice",
            )
        seen[key] = ln
        if progress is not None and n % 10_000 == 0:
            progress(10_000)
    if progress is not None:
        progress(len(statement.lines) % 10_000)


def read_statement(
    data: bytes,
    *,
    channel: str,
    fmt: str | None = None,
    file_name: str = "",
    progress: Callable[[int], None] | None = None,
) -> Statement:
    """Parse a file fully (format checks included), reporting progress per line."""
    fmt = fmt or detect(data, file_name)
    if fmt not in MODULES:
        raise StatementError(f"unknown format {fmt!r}", file_name=file_name)
    env, lines = scan(data, fmt, file_name=file_name, channel_id=channel)
    out: list[StatementLine] = []
    append = out.append
    for n, line in enumerate(lines, start=1):
        append(line)
        if progress is not None and n % 10_000 == 0:
            progress(10_000)
    if progress is not None:
        progress(len(out) % 10_000)
    env.lines = out
    return env


# ---------------------------------------------------------------- ClickHouse


def list_versions(
    db: Backend, channel: str | None = None, day: date | str | None = None
) -> list[dict[str, Any]]:
    """Every loaded version, oldest first per channel and date; `current` marks the
    delivery in force (the highest)."""
    where, params = [], {}
    if channel:
        where.append("channel_id = %(c)s")
        params["c"] = channel
    if day:
        where.append("business_date = toDate(%(d)s)")
        params["d"] = str(day)
    sql = (
        "SELECT channel_id, business_date, delivery, checksum, format, file_name, "
        "line_count, total_amount, total_fee, loaded_at_ms, loaded_by "
        "FROM {db}.statement_versions FINAL"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY channel_id, business_date, delivery"
    )
    rows = db.query(sql, params)
    top: dict[tuple[str, date], int] = {}
    for r in rows:
        k = (r["channel_id"], r["business_date"])
        top[k] = max(top.get(k, 0), int(r["delivery"]))
    for r in rows:
        r["delivery"] = int(r["delivery"])
        r["line_count"] = int(r["line_count"])
        r["loaded_at"] = F.utc_iso(int(r["loaded_at_ms"]))
        r["current"] = r["delivery"] == top[(r["channel_id"], r["business_date"])]
    return rows


def latest_version(db: Backend, channel: str, day: date | str) -> dict[str, Any] | None:
    """The version in force for a channel and business date (highest delivery), or None."""
    rows = list_versions(db, channel, day)
    return rows[-1] if rows else None


def _tsv(v: Any) -> str:
    if v is None:
        return "\\N"
    if isinstance(v, str):
        if any(c in v for c in "\\\t\n\r\0"):
            v = (
                v.replace("\\", "\\\\")
                .replace("\t", "\\t")
                .replace("\n", "\\n")
                .replace("\r", "\\r")
                .replace("\0", "\\0")
            )
        return v
    if isinstance(v, Decimal):
        return format(v, "f")
    if isinstance(v, date):
        return v.isoformat()
    return str(v)


_ESCAPE = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\0": "\\0"})


def _esc(v: str) -> str:
    """TabSeparated escaping of a String value. `str.translate` is slow on long
    non-ASCII text, so it runs only when there is something to escape."""
    if "\\" in v or "\t" in v or "\n" in v or "\r" in v or "\0" in v:
        return v.translate(_ESCAPE)
    return v


def _tsv_lines(statement: Statement, business_date: date, delivery: int) -> Iterator[str]:
    """The TabSeparated text of each statement_lines row (LINE_COLUMNS order)."""
    head = f"{_tsv(statement.channel_id)}\t{business_date.isoformat()}\t{delivery}\t"
    esc = _esc
    for x in statement.lines:
        fee = "\\N" if x.fee is None else format(x.fee, "f")
        cpn = "\\N" if x.coupon_amount is None else format(x.coupon_amount, "f")
        yield (
            f"{head}{x.line_no}\t{esc(x.txn_id)}\t"
            f"{esc(x.channel_txn_id)}\t{esc(x.original_txn_id)}\t"
            f"{x.kind}\t{x.status}\t{x.currency}\t{format(x.amount, 'f')}\t{fee}\t{cpn}\t"
            f"{esc(x.merchant_ref)}\t{x.occurred_at_ms}\t{esc(x.raw)}\n"
        )


def _rows(statement: Statement, business_date: date, delivery: int) -> Iterator[tuple[Any, ...]]:
    ch = statement.channel_id
    for x in statement.lines:
        yield (
            ch,
            business_date,
            delivery,
            x.line_no,
            x.txn_id,
            x.channel_txn_id,
            x.original_txn_id,
            x.kind,
            x.status,
            x.currency,
            x.amount,
            x.fee,
            x.coupon_amount,
            x.merchant_ref,
            x.occurred_at_ms,
            x.raw,
        )


def _batches(rows: Iterable[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    batch: list[tuple[Any, ...]] = []
    for r in rows:
        batch.append(r)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def insert_statement(
    db: Backend,
    statement: Statement,
    business_date: date,
    delivery: int,
    progress: Callable[[int], None] | None = None,
    batch_rows: int = BATCH_ROWS,
) -> int:
    """Insert the lines of a statement version (see `insert_lines`)."""
    if db.name != "chdb":
        return insert_lines(db, _rows(statement, business_date, delivery), progress, batch_rows)
    lines = _tsv_lines(statement, business_date, delivery)
    n = 0
    while True:
        batch = list(itertools.islice(lines, batch_rows))
        if not batch:
            return n
        _chdb_insert_text(db, batch)
        n += len(batch)
        if progress is not None:
            progress(len(batch))


def insert_lines(
    db: Backend,
    rows: Iterable[tuple[Any, ...]],
    progress: Callable[[int], None] | None = None,
    batch_rows: int = BATCH_ROWS,
) -> int:
    """Insert statement_lines rows in batches. On chDB each batch goes through a
    TabSeparated temporary file read with `file()` (about 3x faster than the
    backend's JSON insert); on a server, the driver's native columnar insert."""
    n = 0
    for batch in _batches(rows, batch_rows):
        if db.name == "chdb":
            _chdb_insert_tsv(db, batch)
        else:
            db.insert("statement_lines", LINE_COLUMNS, batch)
        n += len(batch)
        if progress is not None:
            progress(len(batch))
    return n


def _chdb_insert_tsv(db: Backend, batch: Sequence[tuple[Any, ...]]) -> None:
    _chdb_insert_text(db, ["\t".join(map(_tsv, r)) + "\n" for r in batch])


def _chdb_insert_text(db: Backend, batch: Sequence[str]) -> None:
    fd, path = tempfile.mkstemp(prefix="tally-statement-", suffix=".tsv")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.writelines(batch)
        quoted = path.replace("\\", "\\\\").replace("'", "\\'")
        db.execute(
            f"INSERT INTO {{db}}.statement_lines ({', '.join(LINE_COLUMNS)}) "
            f"SELECT * FROM file('{quoted}', 'TabSeparated', '{_LINE_STRUCTURE}')"
        )
    finally:
        os.unlink(path)


def _next_delivery(
    db: Backend, statement: Statement, business_date: date, versions: list[dict[str, Any]]
) -> int:
    top = max((v["delivery"] for v in versions), default=0)
    params = {"c": statement.channel_id, "d": business_date.isoformat(), "v": top}
    orphans = db.query(
        "SELECT max(delivery) AS m, count() AS n FROM {db}.statement_lines "
        "WHERE channel_id = %(c)s AND business_date = toDate(%(d)s) AND delivery > %(v)s",
        params,
    )
    if not orphans or not int(orphans[0]["n"]):
        return top + 1
    last = int(orphans[0]["m"])
    # lines of an interrupted load: ours again (converge) or another file's (skip)
    mine = {x.line_no: x.raw for x in statement.lines}
    stored = db.query(
        "SELECT DISTINCT line_no, raw FROM {db}.statement_lines "
        "WHERE channel_id = %(c)s AND business_date = toDate(%(d)s) AND delivery = %(l)s",
        {**params, "l": last},
    )
    if all(mine.get(int(r["line_no"])) == r["raw"] for r in stored):
        return last
    return last + 1


def store(
    db: Backend,
    statement: Statement,
    business_date: date,
    *,
    loaded_by: str = "",
    now_ms: int | None = None,
    progress: Callable[[int], None] | None = None,
    write_version: bool = True,
) -> LoadResult:
    """Write a validated statement as a new version (or nothing if its checksum is
    already loaded for the channel and date). `write_version=False` stops after the
    lines, as a crash would (tests)."""
    versions = list_versions(db, statement.channel_id, business_date)
    total = sum((x.amount for x in statement.lines), Decimal(0))
    fees = sum((x.fee for x in statement.lines if x.fee is not None), Decimal(0))

    def result(status: str, delivery: int, current: int, superseded: list[int]) -> LoadResult:
        return LoadResult(
            status=status,
            channel_id=statement.channel_id,
            business_date=business_date,
            delivery=delivery,
            format=statement.format,
            file_name=statement.file_name,
            checksum=statement.checksum,
            line_count=len(statement.lines),
            total_amount=total,
            total_fee=fees,
            declared=statement.declared,
            superseded=superseded,
            current_delivery=current,
        )

    same = [v for v in versions if v["checksum"] == statement.checksum]
    if same:
        top = max(v["delivery"] for v in versions)
        return result("already_loaded", same[0]["delivery"], top, [])
    delivery = _next_delivery(db, statement, business_date, versions)
    insert_statement(db, statement, business_date, delivery, progress)
    if write_version:
        db.insert(
            "statement_versions",
            VERSION_COLUMNS,
            [
                (
                    statement.channel_id,
                    business_date,
                    delivery,
                    statement.checksum,
                    statement.format,
                    statement.file_name,
                    len(statement.lines),
                    total,
                    fees,
                    int(time.time() * 1000) if now_ms is None else now_ms,
                    loaded_by,
                )
            ],
        )
    return result("loaded", delivery, delivery, sorted(v["delivery"] for v in versions))


def already_loaded(
    db: Backend, channel: str, checksum: str, day: date | None = None
) -> LoadResult | None:
    """The version a file with this checksum was loaded as for the channel (and the
    date, when given), without parsing it again; None when it never was."""
    rows = [v for v in list_versions(db, channel, day) if v["checksum"] == checksum]
    if not rows:
        return None
    v = rows[0]
    top = latest_version(db, channel, v["business_date"])
    return LoadResult(
        status="already_loaded",
        channel_id=channel,
        business_date=v["business_date"],
        delivery=v["delivery"],
        format=v["format"],
        file_name=v["file_name"],
        checksum=checksum,
        line_count=v["line_count"],
        total_amount=v["total_amount"],
        total_fee=v["total_fee"],
        current_delivery=top["delivery"] if top else v["delivery"],
    )


def load_file(
    db: Backend,
    settings: Settings,
    data: bytes,
    *,
    channel: str,
    file_name: str = "",
    fmt: str | None = None,
    day: date | None = None,
    loaded_by: str = "",
    progress: Progress | None = None,
    write_version: bool = True,
) -> LoadResult:
    """Parse, validate whole, then store (see the module doc). Raises StatementError
    with nothing written when the file is refused."""
    started = time.monotonic()
    done = already_loaded(db, channel, hashlib.sha256(data).hexdigest(), day)
    if done is not None:
        done.seconds = time.monotonic() - started
        return done
    estimate = data.count(b"\n")

    def step(phase: str) -> Callable[[int], None] | None:
        if progress is None:
            return None
        done = [0]

        def tick(n: int) -> None:
            done[0] += n
            progress(phase, done[0], estimate)

        return tick

    statement = read_statement(
        data, channel=channel, fmt=fmt, file_name=file_name, progress=step("reading")
    )
    estimate = len(statement.lines)
    policy = settings.policies()[channel]
    business_date = derive_date(statement, policy, day)
    validate(statement, policy, business_date, progress=step("checking"))
    result = store(
        db,
        statement,
        business_date,
        loaded_by=loaded_by,
        progress=step("storing"),
        write_version=write_version,
    )
    result.seconds = time.monotonic() - started
    return result
