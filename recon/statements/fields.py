"""Field-level parsing shared by the format modules: amounts, times, text, encodings.
Pure; every failure is a `StatementError` naming the file, line and field."""

from __future__ import annotations

import codecs
import re
import xml.parsers.expat
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import BinaryIO

from recon.statements.model import StatementError
from tally.core.money import EXPONENTS

# China Standard Time has had no daylight saving since 1991: a fixed offset is exact
# and much faster than zoneinfo for a million lines.
CST = timezone(timedelta(hours=8), "Asia/Shanghai")

_AMOUNT = re.compile(r"(0|[1-9][0-9]{0,12})(\.[0-9]{1,4})?")
_SIGNED = re.compile(r"-?(0|[1-9][0-9]{0,12})(\.[0-9]{1,4})?")
_COUNT = re.compile(r"[0-9]{1,18}")  # ASCII digits only: str.isdigit takes '²'
_LOCAL_TIME = re.compile(r"(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})")
# A cell a spreadsheet would run as a formula (CSV injection); tab and CR too (OWASP).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class Where:
    """The file being read, to build errors: `where.error(line_no, field, msg)`."""

    __slots__ = ("file_name",)

    def __init__(self, file_name: str) -> None:
        self.file_name = file_name

    def error(self, line_no: int | None, field: str | None, message: str) -> StatementError:
        return StatementError(message, file_name=self.file_name, line_no=line_no, field=field)


def count(where: Where, line_no: int | None, field: str, value: str) -> int:
    """A declared count: up to 18 ASCII digits (int() of a 1 MB number raises)."""
    if not _COUNT.fullmatch(value):
        raise where.error(line_no, field, f"{value[:20]!r} is not a count")
    return int(value)


def currency(where: Where, line_no: int | None, field: str, value: str) -> str:
    if value not in EXPONENTS:
        raise where.error(line_no, field, f"{value[:20]!r} is not a known ISO 4217 currency")
    return value


def amount(
    where: Where,
    line_no: int | None,
    field: str,
    value: str,
    cur: str | None = None,
    *,
    signed: bool = False,
    positive: bool = False,
) -> Decimal:
    """A decimal amount in major units: at most 13 integer digits and 4 decimals (and
    no more decimals than `cur` has); `signed` allows a leading minus; `positive`
    rejects zero."""
    # fast path, without a regex: what it accepts the patterns accept too; anything
    # else goes through the patterns, which give the message
    whole, dot, frac = (value[1:] if signed and value[:1] == "-" else value).partition(".")
    if not (
        whole.isdigit()
        and whole.isascii()
        and len(whole) <= 13
        and (len(whole) == 1 or whole[0] != "0")
        and (not dot or (0 < len(frac) <= 4 and frac.isdigit() and frac.isascii()))
    ) and not (_SIGNED if signed else _AMOUNT).fullmatch(value):
        if value.startswith("-") and not signed:
            raise where.error(line_no, field, f"{value[:40]!r} must not be negative")
        raise where.error(line_no, field, f"{value[:40]!r} is not an amount")
    d = Decimal(value)
    if cur is not None:
        exp = EXPONENTS.get(cur, 2)
        if len(frac) > exp and frac[exp:].strip("0"):
            raise where.error(
                line_no, field, f"{value!r} has more than {exp} decimal places for {cur}"
            )
    if positive and d <= 0:
        raise where.error(line_no, field, f"{value!r} must be greater than zero")
    return d


def local_time_ms(where: Where, line_no: int | None, field: str, value: str) -> int:
    """`yyyy-MM-dd HH:mm:ss` in China Standard Time (UTC+8) -> epoch ms UTC."""
    m = _LOCAL_TIME.fullmatch(value)
    if m is None:
        raise where.error(line_no, field, f"{value[:40]!r} is not a time like 2026-11-24 10:15:30")
    try:
        y, mo, d, h, mi, sec = (int(g) for g in m.groups())
        dt = datetime(y, mo, d, h, mi, sec, tzinfo=CST)
    except ValueError as exc:
        raise where.error(line_no, field, f"{value!r} is not a valid time ({exc})") from None
    return int(dt.timestamp()) * 1000


class LocalTimes:
    """`local_time_ms` remembering each distinct string it has read: a file of a
    million lines has at most some 90,000 distinct seconds. Exact: a string read
    again gives what it gave the first time; a bad one is refused every time."""

    __slots__ = ("_minutes", "_seen", "where")

    def __init__(self, where: Where) -> None:
        self.where = where
        self._seen: dict[str, int] = {}
        self._minutes: dict[str, int] = {}  # "yyyy-MM-dd HH:mm" -> ms of its second 00

    def __call__(self, line_no: int | None, field: str, value: str) -> int:
        ms = self._seen.get(value)
        if ms is None:
            sec = value[17:]
            if (
                len(sec) == 2
                and sec.isdigit()
                and sec.isascii()
                and sec < "60"
                and value[16] == ":"
            ):
                # a new second of a minute: the minute read once (UTC+8 is a fixed offset)
                minute = value[:16]
                base = self._minutes.get(minute)
                if base is None:
                    try:
                        base = local_time_ms(self.where, line_no, field, minute + ":00")
                    except StatementError:
                        local_time_ms(self.where, line_no, field, value)  # names the value
                        raise
                    self._minutes[minute] = base
                ms = base + int(sec) * 1000
            else:
                ms = local_time_ms(self.where, line_no, field, value)
            self._seen[value] = ms
        return ms


class Amounts:
    """`amount` remembering the strings it has accepted, up to `size` of them (a
    bill repeats its zeros and common prices on every line). Exact: a value read
    again gives the same Decimal; a bad one is refused every time."""

    __slots__ = ("_seen", "size", "where")

    def __init__(self, where: Where, size: int = 65_536) -> None:
        self.where = where
        self.size = size
        self._seen: dict[tuple[str, str | None, bool], Decimal] = {}

    def __call__(
        self,
        line_no: int | None,
        field: str,
        value: str,
        cur: str | None = None,
        signed: bool = False,
    ) -> Decimal:
        key = (value, cur, signed)
        d = self._seen.get(key)
        if d is None:
            d = amount(self.where, line_no, field, value, cur, signed=signed)
            if len(self._seen) < self.size:
                self._seen[key] = d
        return d


def format_local_time(ms: int) -> str:
    return datetime.fromtimestamp(ms // 1000, tz=CST).strftime("%Y-%m-%d %H:%M:%S")


def utc_iso(ms: int) -> str:
    """RFC 3339 UTC, milliseconds only when there are any."""
    dt = datetime.fromtimestamp(ms // 1000, tz=UTC)
    s = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if ms % 1000:
        s += f".{ms % 1000:03d}"
    return s + "Z"


def text(where: Where, line_no: int | None, field: str, value: str) -> str:
    """A free-text or id field: refused when a spreadsheet would run it as a formula."""
    if value and value.startswith(FORMULA_START):
        raise where.error(
            line_no,
            field,
            f"{value[:40]!r} starts with {value[0]!r}: refused as a spreadsheet formula "
            "(CSV injection)",
        )
    return value


def fmt_amount(value: Decimal, cur: str) -> str:
    """Plain decimal with the currency's decimals (more only when the value has them)."""
    exp = EXPONENTS.get(cur, 2)
    s = f"{value:.{exp}f}"
    if Decimal(s) != value:
        s = format(value.normalize(), "f")
    return s


def fmt_fee(value: Decimal) -> str:
    s = f"{value:.2f}"
    if Decimal(s) != value:
        s = format(value.normalize(), "f")
    return s


def decode_utf8(where: Where, data: bytes, expected: str) -> str:
    """UTF-8 text (a BOM is dropped); anything else is refused with the line of the
    first byte that is not UTF-8."""
    try:
        text_ = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        hint = " (it looks like GBK)" if _is_gbk(data) else ""
        raise where.error(
            line, None, f"wrong encoding: {expected} files are UTF-8, this one is not{hint}"
        ) from None
    return text_.removeprefix("\ufeff")


def _is_gbk(data: bytes) -> bool:
    try:
        data.decode("gbk")
    except UnicodeDecodeError:
        return False
    return True


CHUNK = 1 << 20  # bytes read at a time from a statement file


def check_utf8_file(where: Where, f: BinaryIO, expected: str) -> tuple[int, bytes]:
    """What `decode_utf8` refuses, read from the start of `f` a chunk at a time (an
    incremental decoder): the line of the first byte that is not UTF-8, with the same
    message. Returns the number of line ends (\\n) and the file's last byte (b"" when
    empty)."""
    f.seek(0)
    dec = codecs.getincrementaldecoder("utf-8")()
    newlines = 0
    last = b""
    try:
        while chunk := f.read(CHUNK):
            dec.decode(chunk)
            newlines += chunk.count(b"\n")
            last = chunk[-1:]
        dec.decode(b"", final=True)
    except UnicodeDecodeError:
        # \n is never part of a multi-byte sequence: the first line that does not
        # decode holds the first bad byte
        f.seek(0)
        bad = (n for n, raw in enumerate(f, start=1) if not _decodes(raw, "utf-8"))
        line = next(bad, newlines + 1)
        hint = " (it looks like GBK)" if decodes_file(f, "gbk") else ""
        raise where.error(
            line, None, f"wrong encoding: {expected} files are UTF-8, this one is not{hint}"
        ) from None
    return newlines, last


def _decodes(raw: bytes, encoding: str) -> bool:
    try:
        raw.decode(encoding)
    except UnicodeDecodeError:
        return False
    return True


def decodes_file(f: BinaryIO, codec: str) -> bool:
    """Whether the whole of `f` (from its start) decodes as `codec`, a chunk at a time."""
    f.seek(0)
    dec = codecs.getincrementaldecoder(codec)()
    try:
        while chunk := f.read(CHUNK):
            dec.decode(chunk)
        dec.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def file_lines(f: BinaryIO, encoding: str = "utf-8") -> Iterator[str]:
    """The lines of `f` (from its start) decoded one at a time, without their line ends,
    a leading BOM dropped: what `physical_lines` gives of the decoded text (it splits at
    \\n and drops one \\r before it). The encoding must have been checked already."""
    f.seek(0)
    first = True
    for raw in f:
        s = raw.decode(encoding)
        if first:
            s = s.removeprefix("\ufeff")
            first = False
        if s.endswith("\n"):
            s = s[:-1]
        elif not s:  # a file of a BOM alone: no line
            return
        if s.endswith("\r"):
            s = s[:-1]
        yield s


def date_in_name(name: str) -> date | None:
    """A date in a file name: 2026-11-24, 2026_11_24 or 20261124."""
    m = re.search(r"(?<!\d)(20\d{2})[-_]?(\d{2})[-_]?(\d{2})(?!\d)", name)
    if not m:
        return None
    try:
        return date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        return None


def split_simple(line: str, sep: str = ",") -> list[str]:
    """Split a CSV line; the csv module only when there are quotes."""
    if '"' not in line:
        return line.split(sep)
    import csv

    return next(csv.reader([line]))


def physical_lines(text_: str) -> list[str]:
    """The file's lines without their line ends (\\n or \\r\\n)."""
    if text_.count("\r\n") == text_.count("\n"):  # every line ends \r\n (or none does)
        lines = text_.split("\r\n") if "\r\n" in text_ else text_.split("\n")
        if lines[-1] == "":
            lines.pop()
        elif lines[-1].endswith("\r"):  # a last line without its \n
            lines[-1] = lines[-1][:-1]
        return lines
    lines = text_.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [x[:-1] if x.endswith("\r") else x for x in lines]


# ---------------------------------------------------------- structured information

# The bank formats carry what has no field of its own in a slash-coded text
# (MT940 :86:, camt.053 AddtlTxInf), e.g. `/EREF/T1/KIND/refund/ORIG/T0/FEE/CNY0.60`.
INFO_CODES = ("EREF", "CREF", "ORIG", "KIND", "STAT", "TIME", "FEE", "CPN", "MREF")
_INFO = re.compile(r"/(" + "|".join(INFO_CODES) + r")/")


def parse_info(value: str) -> dict[str, str]:
    out: dict[str, str] = {}
    parts = _INFO.split(value.replace("\r", "").replace("\n", ""))
    # parts: [prefix, code, value, code, value, ...]
    for i in range(1, len(parts) - 1, 2):
        out[parts[i]] = parts[i + 1]
    return out


def info_time_ms(where: Where, line_no: int | None, field: str, value: str) -> int:
    """`20261124T101530Z` (UTC, optionally .mmm) -> epoch ms."""
    m = re.fullmatch(r"(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})(?:\.(\d{3}))?Z", value)
    if m is None:
        raise where.error(line_no, field, f"{value[:40]!r} is not a time like 20261124T101530Z")
    try:
        y, mo, d, h, mi, sec = (int(g) for g in m.groups()[:6])
        dt = datetime(y, mo, d, h, mi, sec, tzinfo=UTC)
    except ValueError as exc:
        raise where.error(line_no, field, f"{value!r} is not a valid time ({exc})") from None
    return int(dt.timestamp()) * 1000 + int(m[7] or 0)


def format_info_time(ms: int) -> str:
    dt = datetime.fromtimestamp(ms // 1000, tz=UTC)
    s = dt.strftime("%Y%m%dT%H%M%S")
    if ms % 1000:
        s += f".{ms % 1000:03d}"
    return s + "Z"


def noon_utc_ms(d: date) -> int:
    """The instant used for an item whose file gives only a date (bank formats
    without a /TIME/): 12:00 UTC of that date, the same calendar date in every zone
    from UTC-11 to UTC+11."""
    return int(datetime(d.year, d.month, d.day, 12, tzinfo=UTC).timestamp()) * 1000


Progress = Callable[[int], None]


DTD_REFUSED = "refused: the XML declares a DTD or entities (not allowed in a statement)"


class _Prolog(Exception):
    """The root element opened: the prolog (where a DOCTYPE must be) is over."""


def refuse_dtd(where: Where, p: xml.parsers.expat.XMLParserType) -> None:
    """Make an expat parser refuse a DOCTYPE or entity declaration, whatever the
    encoding (checked by expat after decoding, not on the raw bytes)."""

    def doctype(*_args: object) -> None:
        raise where.error(p.CurrentLineNumber, "DOCTYPE", DTD_REFUSED)

    p.StartDoctypeDeclHandler = doctype
    p.EntityDeclHandler = doctype


def xml_prolog(data: bytes, where: Where) -> None:
    """Check an XML document's prolog: no DOCTYPE or entities, an encoding expat reads.
    Stops at the root element, so it costs nothing on a large file."""
    xml_prolog_chunks((data,), where)


def xml_prolog_chunks(chunks: Iterable[bytes], where: Where) -> None:
    """`xml_prolog` of a document given in chunks (a file read a chunk at a time)."""
    p = xml.parsers.expat.ParserCreate()
    refuse_dtd(where, p)

    def root(*_args: object) -> None:
        raise _Prolog

    p.StartElementHandler = root
    try:
        for chunk in chunks:
            p.Parse(chunk, False)
        p.Parse(b"", True)
    except _Prolog:
        return
    except StatementError:
        raise
    except (ValueError, LookupError) as exc:  # expat: multi-byte or unknown encoding
        raise where.error(1, "encoding", f"encoding not supported: {exc}") from None
    except xml.parsers.expat.ExpatError as exc:
        raise where.error(exc.lineno, None, f"not well-formed XML: {exc}") from None
