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

import io
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO

from recon.statements import fields as F
from recon.statements import spool as S
from recon.statements.insert import insert_spool, insert_statement, tail_line_raw
from recon.statements.model import Statement, Totals
from sinks.backend import Backend
from tally.config import Settings

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


def _next_delivery(
    db: Backend,
    channel: str,
    business_date: date,
    versions: list[dict[str, Any]],
    ours: Callable[[], Iterator[tuple[int, str]]],
) -> int:
    """The delivery number to write: the next one, or that of an interrupted load of
    this same file (its orphan lines are ours: same line numbers, same text). `ours`
    gives our (line, raw text) in line order."""
    top = max((v["delivery"] for v in versions), default=0)
    params = {"c": channel, "d": business_date.isoformat(), "v": top}
    orphans = db.query(
        "SELECT max(delivery) AS m, count() AS n FROM {db}.statement_lines "
        "WHERE channel_id = %(c)s AND business_date = toDate(%(d)s) AND delivery > %(v)s",
        params,
    )
    if not orphans or not int(orphans[0]["n"]):
        return top + 1
    last = int(orphans[0]["m"])
    # lines of an interrupted load: ours again (converge) or another file's (skip)
    return last if _orphans_are_ours(db, {**params, "l": last}, ours()) else last + 1


def _last_per_line(ours: Iterator[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """(line, raw) once per line number, the last text it has (a dict of them would)."""
    prev: tuple[int, str] | None = None
    for x in ours:
        if prev is not None and prev[0] != x[0]:
            yield prev
        prev = x
    if prev is not None:
        yield prev


ORPHAN_PAGE = 100_000  # line numbers a query of orphan lines covers


def _orphans_are_ours(db: Backend, params: dict[str, Any], ours: Iterator[tuple[int, str]]) -> bool:
    """Whether every stored (line, raw) of delivery `l` is ours (for a line number we
    have more than once, its last text), compared a page of line numbers at a time."""
    where = (
        "FROM {db}.statement_lines WHERE channel_id = %(c)s "
        "AND business_date = toDate(%(d)s) AND delivery = %(l)s"
    )
    top = db.query("SELECT max(line_no) AS m " + where, params)
    high = int(top[0]["m"]) if top else 0
    mine = _last_per_line(ours)
    cur = next(mine, None)
    for lo in range(0, high + 1, ORPHAN_PAGE):
        stored = db.query(
            "SELECT DISTINCT line_no, raw "
            + where
            + " AND line_no >= %(lo)s AND line_no < %(hi)s ORDER BY line_no",
            {**params, "lo": lo, "hi": lo + ORPHAN_PAGE},
        )
        for r in stored:
            ln = int(r["line_no"])
            while cur is not None and cur[0] < ln:
                cur = next(mine, None)
            if cur is None or cur[0] != ln or cur[1] != r["raw"]:
                return False
    return True


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
    lines = sorted(statement.lines, key=lambda x: x.line_no)
    delivery = _next_delivery(
        db,
        statement.channel_id,
        business_date,
        versions,
        lambda: ((x.line_no, x.raw) for x in lines),
    )
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
    """`load_stream` of bytes in memory."""
    return load_stream(
        db,
        settings,
        io.BytesIO(data),
        channel=channel,
        file_name=file_name,
        fmt=fmt,
        day=day,
        loaded_by=loaded_by,
        progress=progress,
        write_version=write_version,
    )


def load_path(
    db: Backend,
    settings: Settings,
    path: str | os.PathLike[str],
    *,
    channel: str,
    file_name: str | None = None,
    fmt: str | None = None,
    day: date | None = None,
    loaded_by: str = "",
    progress: Progress | None = None,
    write_version: bool = True,
) -> LoadResult:
    """`load_stream` of a file on disk (`tally statements load`); `file_name` defaults
    to the file's name."""
    with open(path, "rb") as f:
        return load_stream(
            db,
            settings,
            f,
            channel=channel,
            file_name=Path(path).name if file_name is None else file_name,
            fmt=fmt,
            day=day,
            loaded_by=loaded_by,
            progress=progress,
            write_version=write_version,
        )


def load_stream(
    db: Backend,
    settings: Settings,
    f: BinaryIO,
    *,
    channel: str,
    file_name: str = "",
    fmt: str | None = None,
    day: date | None = None,
    loaded_by: str = "",
    progress: Progress | None = None,
    write_version: bool = True,
) -> LoadResult:
    """Parse, validate whole, then store (see the module doc), reading `f` (a seekable
    binary file) from its start, in chunks: the lines go through a spool file on disk
    (recon/statements/spool.py), not memory. Raises StatementError with nothing
    written when the file is refused."""
    started = time.monotonic()
    checksum, estimate = S.checksum(f)
    done = already_loaded(db, channel, checksum, day)
    if done is not None:
        done.seconds = time.monotonic() - started
        return done
    env, lines = S.open_statement(
        f, channel=channel, fmt=fmt, file_name=file_name, checksum=checksum
    )
    with tempfile.TemporaryDirectory(prefix="tally-statement-") as work:
        checked = S.check_file(
            env,
            lines,
            lambda: settings.policies()[channel],
            day,
            Path(work),
            estimate=estimate,
            progress=progress,
        )
        result = _store_spool(
            db, checked, loaded_by=loaded_by, progress=progress, write_version=write_version
        )
    result.seconds = time.monotonic() - started
    return result


def _store_spool(
    db: Backend,
    checked: S.Checked,
    *,
    loaded_by: str,
    progress: Progress | None,
    write_version: bool,
) -> LoadResult:
    """`store` of a checked spool: the lines in batches, the version row last."""
    st, day = checked.statement, checked.business_date
    versions = list_versions(db, st.channel_id, day)
    result = LoadResult(
        status="loaded",
        channel_id=st.channel_id,
        business_date=day,
        delivery=0,
        format=st.format,
        file_name=st.file_name,
        checksum=st.checksum,
        line_count=checked.line_count,
        total_amount=checked.total,
        total_fee=checked.fees,
        declared=st.declared,
    )
    same = [v for v in versions if v["checksum"] == st.checksum]
    if same:
        result.status = "already_loaded"
        result.delivery = same[0]["delivery"]
        result.current_delivery = max(v["delivery"] for v in versions)
        return result

    def ours() -> Iterator[tuple[int, str]]:
        with checked.spool.open(encoding="utf-8", newline="\n") as f:
            yield from map(tail_line_raw, f)

    delivery = _next_delivery(db, st.channel_id, day, versions, ours)
    tick = S.ticker(progress, "storing", checked.line_count)
    insert_spool(db, checked.spool, st.channel_id, day, delivery, tick)
    if write_version:
        db.insert(
            "statement_versions",
            VERSION_COLUMNS,
            [
                (
                    st.channel_id,
                    day,
                    delivery,
                    st.checksum,
                    st.format,
                    st.file_name,
                    checked.line_count,
                    checked.total,
                    checked.fees,
                    int(time.time() * 1000),
                    loaded_by,
                )
            ],
        )
    result.delivery = result.current_delivery = delivery
    result.superseded = sorted(v["delivery"] for v in versions)
    return result
