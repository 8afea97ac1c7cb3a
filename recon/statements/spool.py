"""Checking a statement file without holding its lines: what `read_statement`,
`derive_date` and `validate` (recon/statements/checks.py) decide, the same refusals in
the same order, with memory that does not grow with the file.

    with tempfile.TemporaryDirectory() as work:
        env, lines = open_statement(f, channel="psp", fmt=None, file_name=name, checksum=c)
        checked = check_file(env, lines, policy_of, day, Path(work), estimate=n)
        # checked.spool: one `insert.tsv_tail` text a line, in file order

One pass over the lines (the format's own checks raise as they come: they are first)
writes each line's row to the spool, its (line, time) to a binary file, its duplicate
key to one of several key files (by the key's hash), and remembers the first line
that fails a check that needs no business date. Then the business date (from the
first 10,000 lines when the file and the name give none), the first line outside the
day (the time file, up to that line), and the first duplicate before both (each key
file read alone: a dict of its keys only). The lowest of the three is the refusal
`validate` gives, or the file is accepted.

Formats with a `scan_file(f, file_name, env)` (the generic CSV, WeChat, Alipay and
camt.053) read the file a line or a chunk at a time; MT940 is given its bytes whole
(`scan(data, ...)`), only its lines are not held.
"""

from __future__ import annotations

import contextlib
import hashlib
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import BinaryIO

from recon.statements import MODULES, detect
from recon.statements import fields as F
from recon.statements.checks import LineChecks, derive_date, dup_key
from recon.statements.insert import _esc, tsv_tail, unescape
from recon.statements.model import Statement, StatementError, StatementLine
from tally.core.policy import ChannelPolicy

HEAD = 1 << 20  # bytes given to `detect`
SAMPLE = 10_000  # lines kept for `derive_date` (it votes with the first 10,000)
BUCKET_KEYS = 200_000  # keys per key file, about (a dict of them: some 40 MB)
MAX_BUCKETS = 256
Progress = Callable[[str, int, int], None]  # (phase, done so far, total)


@dataclass
class Checked:
    statement: Statement  # without its lines
    business_date: date
    line_count: int
    total: Decimal
    fees: Decimal
    spool: Path


def checksum(f: BinaryIO) -> tuple[str, int]:
    """SHA-256 of the file (hex), read in chunks, and its number of line ends."""
    f.seek(0)
    h = hashlib.sha256()
    n = 0
    while chunk := f.read(F.CHUNK):
        h.update(chunk)
        n += chunk.count(b"\n")
    return h.hexdigest(), n


def open_statement(
    f: BinaryIO, *, channel: str, fmt: str | None, file_name: str, checksum: str
) -> tuple[Statement, Iterator[StatementLine]]:
    """The statement (no lines) and an iterator over its lines, as `scan` gives them."""
    f.seek(0)
    fmt = fmt or detect(f.read(HEAD), file_name)
    if fmt not in MODULES:
        raise StatementError(f"unknown format {fmt!r}", file_name=file_name)
    env = Statement(
        channel_id=channel,
        business_date=None,
        format=fmt,
        lines=[],
        checksum=checksum,
        file_name=file_name,
    )
    mod = MODULES[fmt]
    scan_file = getattr(mod, "scan_file", None)
    if scan_file is not None:
        lines: Iterator[StatementLine] = scan_file(f, file_name, env)
        return env, lines
    f.seek(0)
    lines = mod.scan(f.read(), file_name, env)
    return env, lines


def ticker(progress: Progress | None, phase: str, total: int) -> Callable[[int], None]:
    done = [0]

    def tick(n: int) -> None:
        if progress is not None:
            done[0] += n
            progress(phase, done[0], total)

    return tick


class _Spooler:
    """Pass one: the lines to the spool, their times and keys to their files."""

    def __init__(self, work: Path, estimate: int) -> None:
        self.work = work
        self.buckets = max(1, min(MAX_BUCKETS, estimate // BUCKET_KEYS + 1))
        self.key_paths = [work / f"keys-{i}.tsv" for i in range(self.buckets)]
        self.times_path = work / "times.bin"
        self.spool = work / "lines.tsv"

    def run(
        self, lines: Iterator[StatementLine], checks: LineChecks, tick: Callable[[int], None]
    ) -> tuple[int, Decimal, Decimal, list[StatementLine], tuple[int, StatementError] | None]:
        n = 0
        total = fees = Decimal(0)
        sample: list[StatementLine] = []
        first_bad: tuple[int, StatementError] | None = None
        times = array("q")
        buckets = self.buckets
        keys = [p.open("w", encoding="utf-8", newline="\n") for p in self.key_paths]
        try:
            with (
                self.spool.open("w", encoding="utf-8", newline="\n") as out,
                self.times_path.open("wb") as tf,
            ):
                for n, x in enumerate(lines, start=1):
                    out.write(tsv_tail(x))
                    times.append(x.line_no)
                    times.append(x.occurred_at_ms)
                    if len(times) >= 1 << 17:
                        times.tofile(tf)
                        del times[:]
                    k = dup_key(x)
                    keys[hash(k) % buckets].write(
                        f"{n}\t{x.line_no}\t{_esc(k[0])}\t{_esc(k[1])}\t{_esc(k[2])}\n"
                    )
                    if first_bad is None:
                        try:
                            checks.before_time(x)
                        except StatementError as exc:
                            first_bad = (n, exc)
                    total += x.amount
                    if x.fee is not None:
                        fees += x.fee
                    if n <= SAMPLE:
                        sample.append(x)
                    if n % 10_000 == 0:
                        tick(10_000)
                times.tofile(tf)
        finally:
            for k_file in keys:
                k_file.close()
        tick(n % 10_000)
        return n, total, fees, sample, first_bad

    def first_bad_time(
        self, checks: LineChecks, limit: int, tick: Callable[[int], None]
    ) -> tuple[int, StatementError] | None:
        """The first line before line `limit` (in file order) outside the day."""
        in_day = checks.in_day
        n = 0
        with self.times_path.open("rb") as tf:
            while True:
                a = array("q")
                with contextlib.suppress(EOFError):  # the last, shorter chunk is read all the same
                    a.fromfile(tf, 1 << 17)
                if not a:
                    tick(n % 10_000)
                    return None
                for j in range(0, len(a), 2):
                    n += 1
                    if n >= limit:
                        return None
                    if not in_day(a[j + 1]):
                        try:
                            checks.time(a[j], a[j + 1])
                        except StatementError as exc:
                            return n, exc
                    if n % 10_000 == 0:
                        tick(10_000)

    def first_duplicate(self, checks: LineChecks, limit: int) -> StatementError | None:
        """The first line before line `limit` whose key an earlier line has."""
        best: tuple[int, int, int, str] | None = None  # (n, line, first line, key)
        for path in self.key_paths:
            seen: dict[str, int] = {}
            with path.open(encoding="utf-8", newline="\n") as f:
                for row in f:
                    n_s, ln_s, key = row.split("\t", 2)
                    n = int(n_s)
                    if n >= limit or (best is not None and n >= best[0]):
                        break
                    first = seen.get(key)
                    if first is not None:
                        best = (n, int(ln_s), first, key)
                        break
                    seen[key] = int(ln_s)
        if best is None:
            return None
        kind, ctid, _ = best[3][:-1].split("\t")
        return checks.duplicate(best[1], best[2], unescape(kind), unescape(ctid))


def check_file(
    env: Statement,
    lines: Iterator[StatementLine],
    policy_of: Callable[[], ChannelPolicy],
    requested: date | None,
    work: Path,
    *,
    estimate: int,
    progress: Progress | None = None,
) -> Checked:
    """Check every line (see the module doc), writing the spool into `work`. Raises the
    StatementError `read_statement`, `derive_date` and `validate` would, in their
    order."""
    spooler = _Spooler(work, estimate)
    checks = LineChecks(env)
    n, total, fees, sample, first_bad = spooler.run(
        lines, checks, ticker(progress, "reading", estimate)
    )
    policy = policy_of()
    env.lines = sample  # derive_date votes with the first 10,000 lines
    business_date = derive_date(env, policy, requested)
    env.lines = []
    checks.set_day(policy, business_date)
    limit = first_bad[0] if first_bad is not None else n + 1
    bad_time = spooler.first_bad_time(checks, limit, ticker(progress, "checking", n))
    error: StatementError | None = None
    if bad_time is not None:
        limit, error = bad_time
    elif first_bad is not None:
        error = first_bad[1]
    dup = spooler.first_duplicate(checks, limit)
    if dup is not None:
        raise dup
    if error is not None:
        raise error
    return Checked(env, business_date, n, total, fees, spooler.spool)
