"""Mutated statement files, every sample format: each loaded whole or refused whole.

In: sample files (`samples(root)`: tests/data/statements in the five channel formats,
tests/data/bank (MT940, camt.053) and a payout file), a seed, a count. Out:
`MutationFigures`. Each mutant (`MUTATORS`: truncation, byte flips, changed digits and
totals, duplicated / dropped / swapped lines, wrong encodings, BOMs, line ends, NULs,
XML entities and DTDs, character references, formula cells, 1 MB lines, random lines,
empty files) goes through the real parser and checks (`outcome`: for a channel
statement `read_statement`, `derive_date`, `validate`, what `load_file` runs before it
writes; `recon.funds.bank.parse`; `parse_payouts`): accepted whole, or refused with a
`StatementError` (naming the line and the field, the line only, or neither: counted
apart); anything else is an exception. `Store` loads channel-statement mutants through
`load_file` into ClickHouse: accepted, the version's rows are the lines read; refused,
nothing written.
"""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from recon.funds.bank import parse as parse_bank
from recon.funds.payouts import Payout, parse_payouts, write_payouts
from recon.statements.checks import derive_date, read_statement, validate
from recon.statements.load import load_file
from recon.statements.model import StatementError
from sinks.backend import Backend
from tally.config import Settings
from tally.core.policy import Policies

MB = 1024 * 1024


@dataclass(frozen=True)
class Sample:
    name: str  # file name (the date in it is the business date where the file has none)
    kind: str  # statement | bank | payouts
    fmt: str  # wechat | alipay | mt940 | camt053 | csv (payouts: csv)
    channel: str  # statements: the channel it is loaded for
    data: bytes
    encoding: str = "utf-8"


# tests/data/statements: file -> (format, channel), as tests/recon/test_statements_load
STATEMENTS = {
    "wechat-2026-11-24.csv": ("wechat", "wechat"),
    "alipay-20261124.csv": ("alipay", "alipay"),
    "bank-2026-11-24.sta": ("mt940", "unionpay"),
    "bank-camt053-2026-11-24.xml": ("camt053", "icbc"),
    "psp-2026-11-24.csv": ("csv", "psp"),
}
BANK = {"bank-mt940-2026-11-24.sta": "mt940", "bank-camt053-2026-11-25.xml": "camt053"}
PAYOUT_DAY = date(2026, 11, 24)
LIMIT_SECONDS = 10


def payout_sample() -> bytes:
    d = date(2026, 11, 25)
    return write_payouts(
        [Payout(f"M{i}", "CNY", 3500000 + i, d, f"PO-20261124-M{i}") for i in (1, 2, 3)]
    )


def samples(root: Path) -> list[Sample]:
    """The sample of every format, from the tree's tests/data (`root` = the tree)."""
    out = []
    for name, (fmt, channel) in STATEMENTS.items():
        enc = "gbk" if fmt == "alipay" else "utf-8"
        data = (root / "tests/data/statements" / name).read_bytes()
        out.append(Sample(name, "statement", fmt, channel, data, enc))
    for name, fmt in BANK.items():
        out.append(Sample(name, "bank", fmt, "", (root / "tests/data/bank" / name).read_bytes()))
    out.append(Sample("payouts-2026-11-24.csv", "payouts", "csv", "", payout_sample()))
    return out


Mutator = Callable[[random.Random, Sample], bytes]


def _lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True) or [b""]


def truncate(rng: random.Random, s: Sample) -> bytes:
    return s.data[: rng.randrange(len(s.data))]


def truncate_at_line(rng: random.Random, s: Sample) -> bytes:
    lines = _lines(s.data)
    return b"".join(lines[: rng.randrange(len(lines))])


def byte_flip(rng: random.Random, s: Sample) -> bytes:
    b = bytearray(s.data)
    for _ in range(rng.choice((1, 1, 2, 4, 8))):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def _digit_at(rng: random.Random, data: bytes, lo: int) -> bytes:
    where = [i for i in range(lo, len(data)) if 48 <= data[i] <= 57]
    if not where:
        return data + b"1"
    i = rng.choice(where)
    return data[:i] + bytes([48 + (data[i] - 48 + rng.randrange(1, 10)) % 10]) + data[i + 1 :]


def change_digit(rng: random.Random, s: Sample) -> bytes:
    return _digit_at(rng, s.data, 0)


def change_total(rng: random.Random, s: Sample) -> bytes:
    """A digit of the last fifth of the file: footers, trailers, closing balances and
    summaries are there (camt.053's summary is near the top: its first fifth too)."""
    if s.fmt == "camt053" and rng.random() < 0.5:
        head = s.data[: len(s.data) // 3]
        return _digit_at(rng, head, len(head) // 2) + s.data[len(head) :]
    return _digit_at(rng, s.data, len(s.data) * 4 // 5)


def duplicate_line(rng: random.Random, s: Sample) -> bytes:
    lines = _lines(s.data)
    i = rng.randrange(len(lines))
    return b"".join([*lines[: i + 1], lines[i], *lines[i + 1 :]])


def drop_line(rng: random.Random, s: Sample) -> bytes:
    lines = _lines(s.data)
    del lines[rng.randrange(len(lines))]
    return b"".join(lines)


def swap_lines(rng: random.Random, s: Sample) -> bytes:
    lines = _lines(s.data)
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    lines[i], lines[j] = lines[j], lines[i]
    return b"".join(lines)


def wrong_encoding(rng: random.Random, s: Sample) -> bytes:
    text = s.data.decode(s.encoding, "replace")
    enc = rng.choice([e for e in ("utf-8", "gbk", "utf-16", "latin-1", "big5") if e != s.encoding])
    return text.encode(enc, "replace")


def bom_and_line_ends(rng: random.Random, s: Sample) -> bytes:
    how = rng.choice(("bom8", "bom16", "crlf", "cr", "nul", "no_last_newline"))
    if how.startswith("bom"):
        return (b"\xef\xbb\xbf" if how == "bom8" else b"\xff\xfe") + s.data
    if how == "crlf":
        return s.data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if how == "cr":
        return s.data.replace(b"\r\n", b"\n").replace(b"\n", b"\r")
    if how == "nul":
        i = rng.randrange(len(s.data))
        return s.data[:i] + b"\x00" + s.data[i:]
    return s.data.rstrip(b"\r\n")


LAUGHS = (
    b'<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;'
    b'&lol;&lol;&lol;">'
    + b"".join(
        b'<!ENTITY lol%d "%s">' % (i, b"".join(b"&lol%d;" % (i - 1) for _ in range(10)))
        for i in range(2, 10)
    )
    + b"]>"
)
DTDS = (
    LAUGHS,
    b'<!DOCTYPE d [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>',
    b'<!DOCTYPE d [<!ENTITY % p SYSTEM "http://127.0.0.1:9/x.dtd"> %p;]>',
    b'<!DOCTYPE d SYSTEM "http://127.0.0.1:9/camt.dtd">',
    b'<!DOCTYPE Document [<!ENTITY x "X9">]>',
)
REFS = (b"&lol9;", b"&xxe;", b"&x;")


def xml_entities(rng: random.Random, s: Sample) -> bytes:
    """A DTD (billion laughs, external entities, a remote DTD) after the XML
    declaration, an entity referenced in a text; sometimes the whole in UTF-16."""
    data = s.data
    decl_end = data.find(b"?>") + 2 if data.startswith(b"<?xml") else 0
    out = data[:decl_end] + rng.choice(DTDS) + data[decl_end:]
    i = out.find(b"</AcctSvcrRef>")
    if i > 0:
        out = out[:i] + rng.choice(REFS) + out[i:]
    if rng.random() < 0.3:  # a DTD the byte patterns of UTF-8 do not show
        text = out.decode("utf-8", "replace").replace('encoding="UTF-8"', 'encoding="UTF-16"')
        out = text.encode("utf-16")
    return out


CHAR_REFS = (b"&#61;1+2", b"&#x40;SUM(A1)", b"<![CDATA[=cmd]]>", b"&amp;", b"&#0;")


def xml_char_refs(rng: random.Random, s: Sample) -> bytes:
    """Character references and CDATA where a text is expected: `&#61;` is `=`."""
    for tag in (b"<AcctSvcrRef>", b"<EndToEndId>", b"<AddtlTxInf>", b"<Id>"):
        i = s.data.find(tag)
        if i >= 0:
            j = i + len(tag)
            what = rng.choice(CHAR_REFS)
            return s.data[:j] + what + s.data[j:]
    return s.data + b"&#61;"


FORMULAS = ("=1+2", "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "\t=1", '=HYPERLINK("x")')


def formula_cell(rng: random.Random, s: Sample) -> bytes:
    """A formula at the start of a cell (CSV), a remittance text (MT940 :86:) or an
    element text (XML)."""
    f = rng.choice(FORMULAS).encode(s.encoding, "replace")
    lines = _lines(s.data)
    i = rng.randrange(1, len(lines)) if len(lines) > 1 else 0
    line = lines[i]
    if s.fmt in ("camt053",) and b"<" in s.data:
        j = s.data.find(rng.choice((b"<AcctSvcrRef>", b"<EndToEndId>", b"<AddtlTxInf>")))
        k = s.data.find(b">", j) + 1 if j >= 0 else 0
        return s.data[:k] + f + s.data[k:]
    if s.fmt == "mt940":
        return s.data.replace(b"/EREF/", b"/EREF/" + f, 1) if b"/EREF/" in s.data else s.data + f
    sep = b","
    cells = line.rstrip(b"\r\n").split(sep)
    c = rng.randrange(len(cells))
    tick = b"`" if cells[c].startswith(b"`") else b""
    cells[c] = tick + f
    lines[i] = sep.join(cells) + line[len(line.rstrip(b"\r\n")) :]
    return b"".join(lines)


def long_line(rng: random.Random, s: Sample) -> bytes:
    """A line of 1 MB: inserted, or one line's cell grown to it."""
    lines = _lines(s.data)
    i = rng.randrange(len(lines))
    fill = rng.choice((b"A", b"9", b",", "商".encode(s.encoding, "replace")))
    big = fill * (MB // len(fill))
    if rng.random() < 0.5:
        lines.insert(i, big + b"\n")
    else:
        j = max(lines[i].find(b","), 0)
        lines[i] = lines[i][:j] + big + lines[i][j:]
    return b"".join(lines)


def random_line(rng: random.Random, s: Sample) -> bytes:
    lines = _lines(s.data)
    junk = rng.randbytes(rng.randint(1, 200)).replace(b"\n", b"")
    lines.insert(rng.randrange(len(lines) + 1), junk + b"\n")
    return b"".join(lines)


def emptyish(rng: random.Random, s: Sample) -> bytes:
    return rng.choice((b"", b"\n", _lines(s.data)[0], b"\xef\xbb\xbf", b" " * 10))


_NAMES = """truncate truncate_at_line byte_flip change_digit change_total duplicate_line
drop_line swap_lines wrong_encoding bom_and_line_ends xml_entities xml_char_refs formula_cell
long_line random_line emptyish"""
MUTATORS: dict[str, Mutator] = {name: globals()[name] for name in _NAMES.split()}


@dataclass
class Outcome:
    status: str  # accepted | refused | exception
    lines: int = 0  # accepted: the items read
    line_no: int | None = None  # refused: where
    field: str | None = None
    message: str = ""
    day: date | None = None  # accepted statements: the business date


def _alarm(_signum: int, _frame: Any) -> None:
    raise TimeoutError(f"no answer within {LIMIT_SECONDS} s")


def outcome(sample: Sample, data: bytes, policies: Policies) -> Outcome:
    """The mutant through the real parser and checks, nothing stored; a parser that
    takes over LIMIT_SECONDS is stopped (SIGALRM) and counted as an exception."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(LIMIT_SECONDS)
    try:
        return _outcome(sample, data, policies)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _outcome(sample: Sample, data: bytes, policies: Policies) -> Outcome:
    try:
        if sample.kind == "bank":
            return Outcome(
                "accepted", len(parse_bank(data, sample.fmt, file_name=sample.name).entries)
            )
        if sample.kind == "payouts":
            pf = parse_payouts(data, PAYOUT_DAY, file_name=sample.name)
            return Outcome("accepted", len(pf.payouts))
        st = read_statement(data, channel=sample.channel, fmt=sample.fmt, file_name=sample.name)
        policy = policies[sample.channel]
        day = derive_date(st, policy, None)
        validate(st, policy, day)
        return Outcome("accepted", len(st.lines), day=day)
    except StatementError as exc:
        return Outcome("refused", line_no=exc.line_no, field=exc.field, message=str(exc)[:200])
    except Exception as exc:  # the finding
        return Outcome("exception", message=f"{type(exc).__name__}: {str(exc)[:200]}")


@dataclass
class FormatFigures:
    mutants: int = 0
    accepted: int = 0
    refused_line_field: int = 0  # the refusal names the line and the field
    refused_line: int = 0  # the line only (the line as a whole is wrong)
    refused_unlocated: int = 0  # neither (a whole-file check: totals, balances, date)
    exceptions: int = 0
    stored: int = 0  # loaded through load_file into ClickHouse and checked
    store_failures: int = 0

    def add(self, o: Outcome) -> None:
        self.mutants += 1
        if o.status == "accepted":
            self.accepted += 1
        elif o.status == "exception":
            self.exceptions += 1
        elif o.line_no is not None and o.field:
            self.refused_line_field += 1
        elif o.line_no is not None:
            self.refused_line += 1
        else:
            self.refused_unlocated += 1


@dataclass
class MutationFigures:
    formats: dict[str, FormatFigures] = field(default_factory=dict)
    mutators: Counter[str] = field(default_factory=Counter)
    exceptions: list[str] = field(default_factory=list)  # reproducers
    store_failures: list[str] = field(default_factory=list)
    dtd_accepted: list[str] = field(default_factory=list)  # a DTD neither refused nor inert
    unlocated: Counter[str] = field(default_factory=Counter)  # (format: field) of refusals
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.exceptions or self.store_failures or self.dtd_accepted)

    def total(self, name: str) -> int:
        return sum(int(getattr(f, name)) for f in self.formats.values())

    def line(self) -> str:
        refused = sum(
            self.total(k) for k in ("refused_line_field", "refused_line", "refused_unlocated")
        )
        return (
            f"mutations {self.total('mutants')} of {len(self.formats)} sample files: accepted "
            f"{self.total('accepted')} refused {refused} (line and field "
            f"{self.total('refused_line_field')}, line only {self.total('refused_line')}, "
            f"neither {self.total('refused_unlocated')}) exceptions {len(self.exceptions)} "
            f"DTDs accepted {len(self.dtd_accepted)}; "
            f"through load_file into chDB {self.total('stored')}: half-loaded or wrong row "
            f"count {len(self.store_failures)} in {self.seconds:.1f} s"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "formats": {k: vars(v) for k, v in self.formats.items()},
            "mutators": dict(sorted(self.mutators.items())),
            "exceptions": len(self.exceptions),
            "exception_samples": self.exceptions[:10],
            "store_failures": self.store_failures[:10],
            "dtd_accepted": len(self.dtd_accepted),
            "dtd_accepted_samples": self.dtd_accepted[:10],
            "unlocated_refusals": dict(self.unlocated.most_common()),
            "seconds": round(self.seconds, 2),
            "ok": self.ok,
        }


def mutants(sample: Sample, n: int, seed: int) -> Iterator[tuple[str, bytes]]:
    """`n` mutants of one sample, every mutator in turn (then at random), one at a time."""
    rng = random.Random(f"{seed}:{sample.name}")
    names = list(MUTATORS)
    for i in range(n):
        name = names[i] if i < len(names) else rng.choice(names)
        yield name, MUTATORS[name](rng, sample)


def _entity_used(data: bytes) -> bool:
    """An internal entity declared and used (accepted: expanded into a field)."""
    text = (
        data.decode("utf-16") if data[:2] in (b"\xff\xfe", b"\xfe\xff") else data.decode("latin-1")
    )
    return '<!ENTITY x "X9">' in text and "&x;" in text


class Store:
    """Statement mutants through `load_file` into a ClickHouse database (migrated)."""

    def __init__(self, db: Backend, settings: Settings) -> None:
        self.db, self.settings = db, settings

    def _counts(self, channel: str) -> list[int]:
        sql = "SELECT count() AS n FROM {db}.%s WHERE channel_id = %%(c)s"
        tables = ("statement_lines", "statement_versions")
        return [int(self.db.query(sql % t, {"c": channel})[0]["n"]) for t in tables]

    def check(self, sample: Sample, data: bytes, expected: Outcome) -> str | None:
        """What is wrong with loading `data` (None: nothing): accepted, the rows of its
        version are exactly the lines read; refused, nothing written."""
        before = self._counts(sample.channel)
        try:
            r = load_file(
                self.db,
                self.settings,
                data,
                channel=sample.channel,
                fmt=sample.fmt,
                file_name=sample.name,
            )
        except StatementError as exc:
            after = self._counts(sample.channel)
            if expected.status != "refused":
                return f"load_file refused what the checks accept: {exc}"
            if after != before:
                return f"refused, yet rows/versions went {before} -> {after}: {exc}"
            return None
        except Exception as exc:
            return f"load_file raised {type(exc).__name__}: {str(exc)[:200]}"
        if expected.status != "accepted":
            return f"load_file accepted what the checks refuse ({expected.message})"
        if r.status == "already_loaded":
            return None
        rows = self.db.query(
            "SELECT count() AS n FROM {db}.statement_lines WHERE channel_id = %(c)s "
            "AND business_date = toDate(%(d)s) AND delivery = %(v)s",
            {"c": sample.channel, "d": r.business_date.isoformat(), "v": r.delivery},
        )
        n = int(rows[0]["n"])
        if not n == r.line_count == expected.lines:
            return (
                f"stored {n} rows, load_file says {r.line_count}, the parser read {expected.lines}"
            )
        return None


def check_mutations(
    samples_: list[Sample],
    n_per_sample: int,
    seed: int = 1,
    *,
    store: Store | None = None,
    store_every: int = 1,
    progress: Callable[[int], None] | None = None,
) -> MutationFigures:
    """`n_per_sample` mutants of each sample, each checked (`outcome`); every
    `store_every`-th channel-statement mutant also loaded through `store`."""
    t0 = time.monotonic()
    figs = MutationFigures()
    policies = Policies()
    done = 0
    for sample in samples_:
        ff = figs.formats.setdefault(f"{sample.kind}:{sample.fmt}", FormatFigures())
        for i, (name, data) in enumerate(mutants(sample, n_per_sample, seed)):
            o = outcome(sample, data, policies)
            ff.add(o)
            figs.mutators[name] += 1
            what = f"{sample.name} {name} #{i} (seed {seed})"
            if o.status == "exception":
                figs.exceptions.append(f"{o.message} <- {what}")
            elif o.status == "accepted" and name == "xml_entities" and _entity_used(data):
                figs.dtd_accepted.append(f"accepted with an entity declared and used <- {what}")
            elif o.status == "refused" and o.line_no is None:
                figs.unlocated[f"{sample.kind}:{sample.fmt}: {o.field}"] += 1
            if store is not None and sample.kind == "statement" and i % store_every == 0:
                ff.stored += 1
                problem = store.check(sample, data, o)
                if problem is not None:
                    ff.store_failures += 1
                    figs.store_failures.append(f"{problem} <- {what}")
            done += 1
            if progress is not None and done % 1000 == 0:
                progress(done)
    figs.seconds = time.monotonic() - t0
    return figs
