"""Channel statement files (对账单): parsers and writers per real format, and the
loader into ClickHouse.

    from recon.statements import parse, write, detect
    st = parse(data, "wechat", file_name="wechat-2026-11-24.csv", channel_id="wechat")
    data2 = write(st)  # the same format's bytes

Formats: `wechat` (WeChat Pay ALL bill), `alipay` (Alipay 业务明细, GBK), `mt940`
(SWIFT MT940), `camt053` (ISO 20022 camt.053.001.02/.08), `csv` (the generic CSV).
Each format module has `scan(data, file_name, env)` (a generator of lines that
fills the statement's declared totals and date) and `write(statement) -> bytes`; the
generic CSV, WeChat, Alipay and camt.053 modules also `scan_file(f, file_name, env)`,
the same read from a binary file a line (camt.053: a chunk) at a time
(`spool.open_statement` uses it; load.py
`load_path` / `load_stream` load a file without holding it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from types import ModuleType

from recon.statements import alipay, camt053, generic_csv, swift_mt940, wechat
from recon.statements.model import KINDS, STATUSES, Statement, StatementError, StatementLine, Totals

MODULES: dict[str, ModuleType] = {
    "wechat": wechat,
    "alipay": alipay,
    "mt940": swift_mt940,
    "camt053": camt053,
    "csv": generic_csv,
}
FORMATS = tuple(MODULES)

__all__ = [
    "FORMATS",
    "KINDS",
    "STATUSES",
    "Statement",
    "StatementError",
    "StatementLine",
    "Totals",
    "detect",
    "parse",
    "scan",
    "write",
]


def detect(data: bytes, file_name: str = "") -> str:
    """The format of a statement file, from its content."""
    for name, mod in MODULES.items():
        if mod.sniff(data):
            return name
    raise StatementError(
        "unknown statement format (not a WeChat Pay or Alipay bill, MT940, camt.053 or "
        f"the generic CSV); give --format one of {', '.join(FORMATS)}",
        file_name=file_name,
        line_no=1,
    )


def _module(fmt: str) -> ModuleType:
    try:
        return MODULES[fmt]
    except KeyError:
        raise ValueError(f"unknown statement format {fmt!r}: one of {', '.join(FORMATS)}") from None


def scan(
    data: bytes, fmt: str, *, file_name: str = "", channel_id: str = ""
) -> tuple[Statement, Iterator[StatementLine]]:
    """A statement without its lines, and an iterator over them: the statement's
    business date and declared totals are filled in once the iterator is done (the
    footer comes last). Raises StatementError while iterating."""
    env = Statement(
        channel_id=channel_id,
        business_date=None,
        format=fmt,
        lines=[],
        checksum=hashlib.sha256(data).hexdigest(),
        file_name=file_name,
    )
    lines: Iterator[StatementLine] = _module(fmt).scan(data, file_name, env)
    return env, lines


def parse(data: bytes, fmt: str, *, file_name: str = "", channel_id: str = "") -> Statement:
    """The whole statement, every line in memory."""
    env, lines = scan(data, fmt, file_name=file_name, channel_id=channel_id)
    env.lines = list(lines)
    return env


def write(statement: Statement) -> bytes:
    """The bytes of `statement` in its format, as the channel would deliver them."""
    writer: Callable[[Statement], bytes] = _module(statement.format).write
    return writer(statement)
