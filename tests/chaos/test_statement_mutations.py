"""Mutated statement files (tally.chaos.mutate): every sample format, ~1,000 mutants each,
accepted whole or refused with a StatementError naming where; a sample loaded through
load_file into chDB, nothing half-loaded. The known bugs are strict xfails with their
reproducers (docs/reliability.md, "Hostile inputs")."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from sinks.backend import Backend, connect
from sinks.schema import migrate
from tally.chaos.bigfile import write_csv
from tally.chaos.mutate import (
    MUTATORS,
    Outcome,
    Sample,
    Store,
    check_mutations,
    outcome,
    samples,
)
from tally.config import Settings
from tally.core.policy import Policies
from tests.clickhouse import unique_db

ROOT = Path(__file__).parents[2]
SAMPLES = samples(ROOT)
# refusals a whole-file check makes without a line (docs/reliability.md lists them)
WHOLE_FILE_FIELDS = re.compile(
    r"^(:20:.*|:25:.*|:60F:.*|:62F:.*|Bal.*|TxsSummry.*|Stmt|business date|None)$"
)
# known exceptions (see the xfails below), by their message: none left
KNOWN_EXCEPTIONS: tuple[str, ...] = ()


@pytest.fixture(autouse=True)
def _quiet_mt940() -> Iterator[None]:
    log = logging.getLogger("mt940")
    level = log.level
    log.setLevel(logging.CRITICAL)  # the mt940 library logs every line it cannot match
    yield
    log.setLevel(level)


def sample(fmt: str, kind: str = "statement") -> Sample:
    return next(s for s in SAMPLES if s.fmt == fmt and s.kind == kind)


def test_every_sample_is_accepted_unmutated() -> None:
    for s in SAMPLES:
        o = outcome(s, s.data, Policies())
        assert o.status == "accepted" and o.lines > 0, (s.name, o.message)


def test_1000_mutants_of_every_format_accepted_or_refused_whole() -> None:
    f = check_mutations(SAMPLES, 1000, seed=2)
    assert f.total("mutants") == 1000 * len(SAMPLES)
    assert set(f.mutators) == set(MUTATORS)
    unknown = [x for x in f.exceptions if not any(k in x for k in KNOWN_EXCEPTIONS)]
    assert not unknown, unknown[:3]
    for name, ff in f.formats.items():
        assert ff.accepted > 50 and ff.refused_line_field > 10, (name, vars(ff))
    # a refusal without a line is one of the whole-file checks (totals, balances, date)
    odd = [k for k in f.unlocated if not WHOLE_FILE_FIELDS.match(k.split(": ", 1)[1])]
    assert not odd, odd
    # a DTD with an entity is refused or inert, whatever the encoding
    assert not f.dtd_accepted, f.dtd_accepted[:3]


@pytest.fixture()
def store(tmp_path: Path, chdb_dir: Path) -> Iterator[Store]:
    s = Settings(_env_file=None, data_dir=str(chdb_dir), clickhouse_database=unique_db("mut"))
    db: Backend = connect(s)
    migrate(db)
    yield Store(db, s)
    db.execute("DROP DATABASE IF EXISTS {db}")


@pytest.mark.clickhouse
def test_mutants_through_load_file_store_all_or_nothing(store: Store) -> None:
    statements = [s for s in SAMPLES if s.kind == "statement"]
    f = check_mutations(statements, 40, seed=3, store=store)
    assert f.total("stored") == 40 * len(statements)
    assert not f.store_failures, f.store_failures[:3]


# ---------------------------------------------- known bugs: strict reproducers


@pytest.mark.clickhouse
def test_a_minified_camt053_stores_every_entry(store: Store) -> None:
    s = sample("camt053")
    data = re.sub(rb">\s*\n\s*<", b"><", s.data)  # the same document without line ends
    o = outcome(s, data, Policies())
    assert o == Outcome("accepted", 3, day=o.day)
    assert store.check(s, data, o) is None  # stored 1 row of 3


@pytest.mark.parametrize("kind", ["statement", "bank"])
def test_a_utf16_camt053_with_a_dtd_is_refused(kind: str) -> None:
    s = sample("camt053", kind)
    decl = s.data.find(b"?>") + 2
    data = s.data[:decl] + b'<!DOCTYPE Document [<!ENTITY x "X9">]>' + s.data[decl:]
    i = data.find(b"</AcctSvcrRef>")
    text = (data[:i] + b"&x;" + data[i:]).decode().replace('"UTF-8"', '"UTF-16"')
    assert outcome(s, text.encode("utf-16"), Policies()).status == "refused"


@pytest.mark.parametrize("kind", ["statement", "bank"])
def test_a_camt053_declaring_a_multibyte_encoding_is_refused(kind: str) -> None:
    s = sample("camt053", kind)
    data = s.data.replace(b'encoding="UTF-8"', b'encoding="EUC-JP"', 1)
    assert outcome(s, data, Policies()).status == "refused"


def test_a_payout_file_with_a_1mb_field_is_refused() -> None:
    s = sample("csv", "payouts")
    data = s.data.replace(b"M1,", b"M1" + b"A" * (1 << 20) + b",", 1)
    assert outcome(s, data, Policies()).status == "refused"


def test_a_wechat_bill_with_a_1mb_number_is_refused() -> None:
    s = sample("wechat")
    lines = s.data.split(b"\n")
    footer = len(lines) - 2  # the footer's values: `4,`1353.50,...
    lines[footer] = lines[footer].replace(b"`4,", b"`4" + b"9" * (1 << 20) + b",", 1)
    assert outcome(s, b"\n".join(lines), Policies()).status == "refused"


def test_the_big_file_generator_writes_a_valid_statement(tmp_path: Path) -> None:
    path = tmp_path / "psp-2026-11-24.csv"
    n = write_csv(path, 1 << 20)
    s = Sample(path.name, "statement", "csv", "psp", path.read_bytes())
    assert outcome(s, s.data, Policies()) == Outcome(
        "accepted", n, day=outcome(s, s.data, Policies()).day
    )
