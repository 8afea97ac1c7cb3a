"""The streamed statement loader (recon/statements/spool.py, load.load_path): the same
refusals and stored rows as the whole-file checks (`read_statement`, `derive_date`,
`validate`), and memory that does not grow with the file (bigfile.measure, a child
process under RLIMIT_AS)."""

from __future__ import annotations

import dataclasses
import io
import json
import random
import resource
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from recon.statements import camt053, generic_csv, spool
from recon.statements.checks import derive_date, read_statement, validate
from recon.statements.load import load_file, load_path
from recon.statements.model import StatementError
from sinks.backend import Backend
from tally.chaos.bigfile import measure, write_csv
from tally.chaos.mutate import Outcome, Sample, mutants, outcome, samples
from tally.config import Settings
from tally.core.policy import Policies
from tests.recon.test_statements_formats import DATA

ROOT = Path(__file__).parents[2]
STATEMENTS = [s for s in samples(ROOT) if s.kind == "statement"]
DAY = date(2026, 11, 24)


def streamed(s: Sample, data: bytes, day: date | None = None) -> Outcome:
    """`outcome` of the streamed checks (what load_stream runs before it writes)."""
    f = io.BytesIO(data)
    try:
        checksum, estimate = spool.checksum(f)
        env, lines = spool.open_statement(
            f, channel=s.channel, fmt=s.fmt, file_name=s.name, checksum=checksum
        )
        with tempfile.TemporaryDirectory() as work:
            c = spool.check_file(
                env, lines, lambda: Policies()[s.channel], day, Path(work), estimate=estimate
            )
            assert c.spool.exists()
    except StatementError as exc:
        return Outcome("refused", line_no=exc.line_no, field=exc.field, message=str(exc)[:200])
    return Outcome("accepted", c.line_count, day=c.business_date)


def whole(s: Sample, data: bytes, day: date | None = None) -> Outcome:
    try:
        st = read_statement(data, channel=s.channel, fmt=s.fmt, file_name=s.name)
        policy = Policies()[s.channel]
        validate(st, policy, bd := derive_date(st, policy, day))
    except StatementError as exc:
        return Outcome("refused", line_no=exc.line_no, field=exc.field, message=str(exc)[:200])
    return Outcome("accepted", len(st.lines), day=bd)


@pytest.mark.parametrize("s", STATEMENTS, ids=lambda s: s.fmt)
def test_mutants_get_the_same_outcome_streamed(s: Sample) -> None:
    refused = 0
    for _name, data in mutants(s, 300, seed=11):
        expected = outcome(s, data, Policies())
        assert streamed(s, data) == expected, data[:300]
        refused += expected.status == "refused"
    assert refused > 50


def big_csv(n: int) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "psp.csv"
        write_csv(path, n)
        return path.read_bytes()


def test_several_problems_the_first_in_validate_order_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(spool, "BUCKET_KEYS", 500)  # several key files
    s = Sample("psp-2026-11-24.csv", "statement", "csv", "psp", big_csv(300_000))
    lines = s.data.splitlines(keepends=True)
    assert len(lines) > 3000
    dup = lines[100].replace(b",payment,", b",refund,")
    late = lines[200].replace(b"2026-11-24T", b"2026-11-27T")
    bad_kind = lines[300].replace(b",payment,", b",gift,")
    cases = {
        "duplicate first": {150: lines[120], 250: late},
        "late first": {150: late, 250: lines[120]},
        "kind first": {150: bad_kind, 250: late, 260: lines[3]},
        "same line, late and duplicate": {150: lines[120].replace(b"2026-11-24T", b"2026-11-28T")},
        "refund is not a duplicate of its payment": {150: dup},
        "duplicate across key files": {2900: lines[1]},
        "bad amount after a duplicate": {
            150: lines[120],
            2800: lines[5].replace(b"CNY,", b"CNY,x"),
        },
    }
    for name, edits in cases.items():
        data = b"".join(edits.get(i, x) for i, x in enumerate(lines))
        assert streamed(s, data) == whole(s, data), name
        assert streamed(s, data, DAY) == whole(s, data, DAY), name
    assert streamed(s, s.data, date(2026, 11, 25)) == whole(s, s.data, date(2026, 11, 25))


STREAMED = [s for s in STATEMENTS if s.fmt in ("csv", "wechat", "alipay")]  # a line at a time


@pytest.mark.parametrize("s", STREAMED, ids=lambda s: s.fmt)
def test_encodings_and_ends_as_the_whole_file_decoder(s: Sample) -> None:
    text = s.data
    gbk = text[:200] + "单".encode("gbk") + text[200:]
    cases = [
        b"",
        b"\xef\xbb\xbf",
        b"\xef\xbb\xbf" + text,
        text[:-1],
        text.replace(b"\n", b"\r\n"),
        text.replace(b"\n", b"\r\n", 2),
        text.replace(b"\n", b"\r\r\n", 1),
        gbk,
        text + b"\xff\n",
        text[:40] + b"\xe4\xb8" + text[40:],
        text + b"abc",
        text + b"\n",
        text + b"\x81\n",
        text.decode(s.encoding).encode("utf-8"),
        text.decode(s.encoding).encode("utf-8").replace(b"\n", b"\xff\n", 1),
        text.split(b"\n", 1)[0] + b"\r",
        generic_csv.HEADER.encode() + b"\r",
    ]
    for data in cases:
        assert streamed(s, data) == whole(s, data), data[:80]
    if s.fmt == "csv":
        assert "it looks like GBK" in streamed(s, gbk).message


@pytest.mark.parametrize("s", STREAMED, ids=lambda s: s.fmt)
def test_random_line_ends_and_bytes(s: Sample) -> None:
    rng = random.Random(5)
    pieces = [b"\n", b"\r\n", b"\r", b"\xef\xbb\xbf", b"\xff", b",", b"\xe4\xb8\xad", b"\t"]
    for _ in range(300):
        data = bytearray(s.data)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data) + 1) :][:0] = rng.choice(pieces)
        assert streamed(s, bytes(data)) == whole(s, bytes(data)), bytes(data)


def test_memory_does_not_grow_with_the_file(tmp_path: Path) -> None:
    """Checked in a child process under a 1 GB address-space cap: peak RSS for a 32 MB
    file within 12 MB of that for an 8 MB one (whole, it was 14x the file: +340 MB)."""
    path = tmp_path / "psp-2026-11-24.csv"
    runs: list[dict[str, Any]] = []
    for mb in (8, 32):
        n = write_csv(path, mb << 20)
        r = measure(path, 1 << 30)
        assert "error" not in r and r["exit"] == 0, r
        assert (r["lines"], r["business_date"]) == (n, "2026-11-24")
        runs.append(r)
    small, big = (r["peak_rss_bytes"] for r in runs)
    assert big - small < 12 << 20, runs
    assert big < 256 << 20, runs


@pytest.mark.clickhouse
def test_load_path_stores_what_load_file_stores(
    db: Backend, settings: Settings, tmp_path: Path
) -> None:
    name = "psp-2026-11-24.csv"
    data = (DATA / name).read_bytes()
    r = load_path(db, settings, DATA / name, channel="psp", loaded_by="t")
    assert (r.status, r.file_name, r.line_count, r.delivery) == ("loaded", name, 3, 1)
    assert load_file(db, settings, data, channel="psp", file_name=name).status == "already_loaded"
    rows = db.query("SELECT * FROM {db}.statement_lines FINAL ORDER BY line_no")
    parsed = read_statement(data, channel="psp", file_name=name).lines
    assert [(x["line_no"], x["raw"], x["amount"], x["fee"]) for x in rows] == [
        (x.line_no, x.raw, x.amount, x.fee) for x in parsed
    ]
    # a refused file on disk writes nothing
    bad = tmp_path / name
    bad.write_bytes(data.replace(b"#total,3,89.59", b"#total,3,89.60"))
    with pytest.raises(StatementError, match=r"line 5, field #total amount"):
        load_path(db, settings, bad, channel="psp2")
    n = db.query("SELECT count() AS n FROM {db}.statement_lines WHERE channel_id = 'psp2'")
    assert int(n[0]["n"]) == 0


CAMT = [s for s in STATEMENTS if s.fmt == "camt053"]


@pytest.mark.parametrize("chunk", [1 << 20, 7])
def test_camt053_read_a_chunk_at_a_time_as_the_whole_document(
    chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Line ends, no line ends, UTF-16, DTDs, encodings and random tags, cut into
    chunks of 7 bytes too (a tag or a CRLF across two chunks)."""
    monkeypatch.setattr(camt053.X, "CHUNK", chunk)
    rng = random.Random(9)
    for s in CAMT:
        text = s.data.decode().replace('"UTF-8"', '"UTF-16"')
        decl = s.data.find(b"?>") + 2
        dtd = s.data[:decl] + b'<!DOCTYPE Document [<!ENTITY x "X9">]>' + s.data[decl:]
        cases = [
            s.data,
            s.data.replace(b">\n", b">").replace(b"\n", b""),
            s.data.replace(b"\n", b"\r"),
            s.data.replace(b"\n", b"\r\n"),
            text.encode("utf-16"),
            text.encode("utf-16-le"),
            dtd,
            dtd.decode().replace('"UTF-8"', '"UTF-16"').encode("utf-16"),
            s.data.replace(b'encoding="UTF-8"', b'encoding="EUC-JP"', 1),
            s.data[: len(s.data) // 2],
        ]
        pieces = [b"\n", b"\r\n", b"\r", b"<Ntry>", b"</Ntry>", b"<a:Ntry ", b"\xff", b"<"]
        for _ in range(60):
            buf = bytearray(s.data)
            for _ in range(rng.randint(1, 3)):
                buf[rng.randrange(len(buf) + 1) :][:0] = rng.choice(pieces)
            cases.append(bytes(buf))
        for data in cases:
            assert streamed(s, data) == whole(s, data), data[:200]


def big_camt(path: Path, n: int) -> None:
    """A valid camt.053 of `n` entries, the sample's repeated with distinct ids."""
    s = CAMT[0]
    st = read_statement(s.data, channel=s.channel, fmt="camt053", file_name=s.name)
    base = st.lines
    st.lines = [
        dataclasses.replace(base[i % len(base)], line_no=i + 1, channel_txn_id=f"B{i:09d}")
        for i in range(n)
    ]
    path.write_bytes(camt053.write(st))


CHILD = """
import json, sys, tempfile
from pathlib import Path
from recon.statements import spool
from tally.chaos.bigfile import _rss
from tally.core.policy import Policies
import resource
path, channel = Path(sys.argv[1]), sys.argv[2]
with path.open("rb") as f, tempfile.TemporaryDirectory() as work:
    checksum, estimate = spool.checksum(f)
    env, lines = spool.open_statement(
        f, channel=channel, fmt="camt053", file_name=path.name, checksum=checksum
    )
    policy = lambda: Policies()[channel]
    c = spool.check_file(env, lines, policy, None, Path(work), estimate=estimate)
print(json.dumps({"lines": c.line_count, "peak": _rss(resource.RUSAGE_SELF)}))
"""


def test_camt053_memory_does_not_grow_with_the_file(tmp_path: Path) -> None:
    """Checked in a child process under a 1 GB address-space cap: peak RSS for 80,000
    entries (34 MB) within 12 MB of that for 20,000 (given whole to `scan`, with every
    entry's span and emptied element kept: 64 MB, then 108 MB)."""
    peaks = []
    for n in (20_000, 80_000):
        path = tmp_path / f"camt-{n}.xml"
        big_camt(path, n)
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(path), CAMT[0].channel],
            capture_output=True,
            text=True,
            cwd=ROOT,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)),
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        assert r["lines"] == n
        peaks.append(r["peak"])
    assert peaks[1] - peaks[0] < 12 << 20, peaks
