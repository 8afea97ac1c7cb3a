"""Every ClickHouse query of the dashboards (panels and variables) runs, on chDB and on
the real clickhouse-server 18.16, against a seeded day, with the Grafana ClickHouse
plugin's macros and the dashboard variables expanded as Grafana and the plugin expand
them, and returns the columns and types its panel expects.

Expansion (checked against the plugin's source, grafana/clickhouse-datasource
pkg/macros/macros.go and src/data/CHDatasource.ts):
  $__timeFilter(c)   -> c >= toDateTime(<from s>) AND c <= toDateTime(<to s>)
  $__dateFilter(c)   -> c >= toDate('<from date>') AND c <= toDate('<to date>')
  $__timeInterval(c) -> toStartOfInterval(toDateTime(c), INTERVAL <interval s> second)
  $__interval_s      -> <interval s>
  $__fromTime, $__toTime -> toDateTime(<s>)
  $__conditionalAll(cond, $v) -> cond, or 1=1 when All is picked (frontend)
  ${v:singlequote}   -> 'a','b' (Grafana's template service)
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from dashboards import balances, eod, realtime
from dashboards.build import DASHBOARDS, build, panels
from dashboards.common import ClickHouseQuery, SqlVariable
from recon.run import RESULT_COLUMNS, RUN_COLUMNS
from recon.statements.insert import LINE_COLUMNS
from recon.statements.load import VERSION_COLUMNS
from recon.suspense import ACTION_COLUMNS, ENTRY_COLUMNS
from sinks import rows as R
from sinks.schema import migrate
from tally.core.messages import balance_snapshot, order_snapshot
from tally.core.orders import view
from tally.core.pipeline import LocalPipeline
from tally.core.policy import Policies
from tally.sim.traffic import SimConfig, generate

START = datetime(2026, 11, 24, 15, 40, tzinfo=UTC)  # 23:40 in Shanghai: crosses the cutoff
FROM = START - timedelta(hours=1)
TO = START + timedelta(hours=3)
DAY = date(2026, 11, 24)
INTERVAL_S = 60


# --------------------------------------------------------------------- expansion


def _conditional_all(sql: str, picked: dict[str, list[str] | None]) -> str:
    macro = "$__conditionalAll("
    while (i := sql.rfind(macro)) != -1:
        depth, j, args, start = 0, i + len(macro), [], i + len(macro)
        while True:
            ch = sql[j]
            if ch == "(":
                depth += 1
            elif ch == ")":
                if depth == 0:
                    args.append(sql[start:j])
                    break
                depth -= 1
            elif ch == "," and depth == 0:
                args.append(sql[start:j])
                start = j + 1
            j += 1
        cond, var = ",".join(args[:-1]).strip(), args[-1].strip().lstrip("$")
        phrase = "1=1" if picked.get(var) is None else cond
        sql = sql[:i] + phrase + sql[j + 1 :]
    return sql


def expand(sql: str, db: str, picked: dict[str, list[str] | None]) -> str:
    f, t = int(FROM.timestamp()), int(TO.timestamp())
    sql = sql.replace("${database}", db)
    sql = _conditional_all(sql, picked)
    for name, values in picked.items():
        vals = values or []
        sql = sql.replace(f"${{{name}:singlequote}}", ",".join(f"'{v}'" for v in vals))
        sql = sql.replace(f"${{{name}}}", ",".join(vals)).replace(f"${name}", ",".join(vals))
    sql = re.sub(
        r"\$__timeFilter\(([^)]*)\)",
        lambda m: f"{m[1]} >= toDateTime({f}) AND {m[1]} <= toDateTime({t})",
        sql,
    )
    sql = re.sub(
        r"\$__dateFilter\(([^)]*)\)",
        lambda m: f"{m[1]} >= toDate('{FROM.date()}') AND {m[1]} <= toDate('{TO.date()}')",
        sql,
    )
    sql = re.sub(
        r"\$__timeInterval\(([^)]*)\)",
        lambda m: f"toStartOfInterval(toDateTime({m[1]}), INTERVAL {INTERVAL_S} second)",
        sql,
    )
    sql = sql.replace("$__interval_s", str(INTERVAL_S))
    sql = sql.replace("$__fromTime", f"toDateTime({f})").replace("$__toTime", f"toDateTime({t})")
    assert "$" not in sql, f"unexpanded: {sql}"
    return sql


def family(ctype: str) -> str:
    """Decimal(38, 4) -> Decimal, DateTime('UTC') -> DateTime, Nullable kept."""
    if ctype.startswith("Nullable("):
        return f"Nullable({family(ctype[9:-1])})"
    return ctype.split("(", 1)[0]


def run_typed(db: Any, sql: str) -> tuple[list[tuple[str, str]], list[Any]]:
    """Column names and types, and the rows, of a query on either backend."""
    if db.name == "chdb":
        res = db._run(sql, "JSONCompact")
        raw = res.bytes() if hasattr(res, "bytes") else bytes(res)
        doc = json.loads(raw) if raw.strip() else {"meta": [], "data": []}
        return [(m["name"], m["type"]) for m in doc["meta"]], doc["data"]
    rows, types = db._call(lambda c: c.execute(sql, with_column_types=True))
    return list(types), rows


# ------------------------------------------------------------------------- seed


def seed(db: Any) -> dict[str, Any]:
    """A simulated stretch of traffic around a cutoff through the in-memory pipeline,
    stored as the sink stores it, plus a reconciled business day (statements, runs,
    results, suspense) built from it."""
    migrate(db)
    p = _seed_stream(db)
    # the end of day, for DAY: per channel two statement deliveries, two runs (the
    # later in force), results by class, suspense entries with write-offs and a reopen
    known = [s for s in p.orders.values() if s.known and s.business_date == DAY.isoformat()]
    channels = sorted({s.channel_id for s in known if s.channel_id})
    assert len(channels) >= 3
    day_ms = int(datetime(DAY.year, DAY.month, DAY.day, tzinfo=UTC).timestamp() * 1000)
    versions, lines, runs, results, entries, actions = [], [], [], [], [], []
    for ci, ch in enumerate(channels):
        mine = [s for s in known if s.channel_id == ch]
        v, ls = _statements(ch, mine, day_ms)
        versions += v
        lines += ls
        for r, finished in enumerate((day_ms + 31 * 3600_000, day_ms + 35 * 3600_000)):
            run_id = f"run-{ch}-{r}"
            runs.append(
                (
                    run_id,
                    ch,
                    DAY,
                    2,
                    f"sha-{ch}-2",
                    len(mine),
                    len(mine),
                    "{}",
                    finished - 60_000,
                    finished,
                )
            )
            for n, s in enumerate(mine):
                cls = _CLASSES[(n + ci + r) % len(_CLASSES)]
                results.append(_result(run_id, ch, n, s, cls))
                if r == 1 and cls not in ("matched", "carried"):
                    e, acts = _suspense(ch, n, s, cls, day_ms)
                    entries.append(e)
                    actions += acts
    db.insert("statement_versions", VERSION_COLUMNS, versions)
    db.insert("statement_lines", LINE_COLUMNS, lines)
    db.insert("recon_runs", RUN_COLUMNS, runs)
    db.insert("recon_results", RESULT_COLUMNS, results)
    db.insert("suspense_entries", ENTRY_COLUMNS, entries)
    db.insert("suspense_actions", ACTION_COLUMNS, actions)
    merchant = next(s.merchant_id for s in known if s.merchant_id and s.channel_id == channels[0])
    _seed_funds(db, channels, merchant, day_ms)
    return {"channels": channels, "merchant": merchant}


_CLASSES = ("matched",) * 6 + (
    "long",
    "short",
    "amount_mismatch",
    "fee_mismatch",
    "status_mismatch",
    "carried",
)


def _seed_stream(db: Any) -> Any:
    """The simulated traffic through the in-memory pipeline, its outputs stored as the
    sink stores them; the pipeline."""
    policies = Policies()
    sim = generate(SimConfig(events=3000, seed=11, start=START), policies)
    p = LocalPipeline(policies, partitions=2, clock=lambda: 0)
    p.feed_all(sim.envelopes)

    def rows(table: R.Table, values: list[dict[str, Any]], partition: int = 0) -> None:
        out = []
        for v in values:
            out += R.rows_for(table, None, json.dumps(v).encode(), partition)
        db.insert(table.name, table.columns, out)

    rows(R.BREAKS, [b.to_json() for b in p.breaks.values()])
    rows(R.POSTINGS, [x.to_json() for x in p.postings])
    # dead letters are stamped with the wall clock: move them into the seeded stretch
    dead = [
        {**d.to_json(), "dead_at": (START + timedelta(minutes=i)).isoformat()}
        for i, d in enumerate(p.dead_letters)
    ]
    assert dead
    rows(R.DEAD_LETTERS, dead)
    rows(R.STATUS_QUERIES, [q.to_json() for q in p.queries])
    states = []
    for s in p.orders.values():
        channel = s.channel_id or (s.evidence[0].channel_id if s.evidence else "")
        at = max([s.our_status_at_ms] + [e.occurred_at_ms for e in s.evidence])
        states.append(order_snapshot(s, view(s, policies[channel]), at))
    rows(R.ORDER_STATES, states)
    rows(R.BALANCES, [balance_snapshot(f"{k}|0", b, 0) for k, b in p.book.balances.items()])
    return p


def _statements(ch: str, mine: list[Any], day_ms: int) -> tuple[list[Any], list[Any]]:
    """Two deliveries of the channel's statement for DAY: version rows and line rows."""
    versions, lines = [], []
    for delivery in (1, 2):
        loaded = day_ms + (26 + delivery * 4) * 3600_000
        versions.append(
            (
                ch,
                DAY,
                delivery,
                f"sha-{ch}-{delivery}",
                "generic_csv",
                f"{ch}.csv",
                len(mine),
                Decimal("1000.50") * delivery,
                Decimal("3.25"),
                loaded,
                "test",
            )
        )
        for n, s in enumerate(mine[:20], 1):
            lines.append(
                (
                    ch,
                    DAY,
                    delivery,
                    n,
                    s.txn_id,
                    f"c-{s.txn_id}",
                    "",
                    "payment",
                    "success",
                    s.currency or "CNY",
                    Decimal("12.34"),
                    Decimal("0.05"),
                    None,
                    s.merchant_id or "",
                    s.created_at_ms or day_ms,
                    "{}",
                )
            )
    return versions, lines


def _result(run_id: str, ch: str, n: int, s: Any, cls: str) -> tuple[Any, ...]:
    return (
        run_id,
        ch,
        DAY,
        s.txn_id,
        cls,
        s.txn_id,
        f"c-{s.txn_id}",
        s.merchant_id or "",
        s.type or "payment",
        s.currency or "CNY",
        Decimal("12.34"),
        None if cls == "long" else Decimal("12.30"),
        Decimal("0.05"),
        Decimal("0.05"),
        "success",
        "success",
        n,
        "",
        Decimal(0) if cls == "long" else Decimal("0.04"),
        Decimal(0),
        "exact",
        100,
    )


def _suspense(
    ch: str, n: int, s: Any, cls: str, day_ms: int
) -> tuple[tuple[Any, ...], list[tuple[Any, ...]]]:
    """A suspense entry of a break, with a write-off (every third) and a reopen (every
    sixth)."""
    entry = f"e-{ch}-{s.txn_id}"
    opened = day_ms + 31 * 3600_000 - n * 86_400_000 // 3
    row = (
        entry,
        1,
        ch,
        s.merchant_id or "",
        s.txn_id,
        "",
        DAY,
        [cls],
        [],
        s.currency or "CNY",
        Decimal("12.34"),
        opened,
        opened,
    )
    actions = []
    if n % 3 == 0:
        actions.append(
            (f"a-{entry}", entry, "refunded", "refund issued", "ops", "", opened + 3600_000)
        )
    if n % 6 == 0:
        actions.append(
            (f"b-{entry}", entry, "reopened_by_rerun", "again", "tally", "", opened + 7200_000)
        )
    return row, actions


def _seed_funds(db: Any, channels: list[str], merchant: str, day_ms: int) -> None:
    """Two settlement runs and two merchant payout runs of DAY (the later in force)."""
    from recon.funds import merchants as M
    from recon.funds import store as F

    srows: list[tuple[Any, ...]] = []
    mrows: list[tuple[Any, ...]] = []
    sruns, mruns = [], []
    before = DAY - timedelta(days=1)
    for r in range(2):
        sid, mid, at = f"stl-{r}", f"po-{r}", day_ms + (40 + r) * 3600_000
        sruns.append((sid, DAY, DAY - timedelta(days=10), "{}", "{}", at, at))
        mruns.append((mid, DAY, "file", "{}", "{}", at, at))
        for i, ch in enumerate(channels):
            cls = ("settled", "settlement_short", "settlement_missing")[(i + r) % 3]
            exp = Decimal("1000.00") + i
            got = {"settled": exp, "settlement_short": exp - 4}.get(cls)
            diff = Decimal(0) if got is None else got - exp
            refs = [f"A:{i}"] if got else []
            key = f"stl:{ch}:CNY:{DAY}"
            srows.append(
                (sid, DAY, key, cls, ch, "CNY", DAY, [before], exp, got, diff, refs, [DAY], [], "")
            )
        srows.append(
            (sid, DAY, "credit:A:X", "unexpected_credit", "", "CNY", None, [], None,
             Decimal("77.00"), Decimal(0), ["A:X"], [DAY], [], "")
        )  # fmt: skip
        paid = Decimal("94.43") - r  # the first run: matched, the second: short
        mrows += [
            (mid, DAY, f"po:{merchant}:CNY:{DAY}", "payout_matched" if r == 0 else "payout_short",
             merchant, "CNY", Decimal("99.40"), Decimal("4.97"), ["t1"], Decimal("94.43"), paid,
             paid - Decimal("94.43"), ["PO-1"], [DAY], ""),
            (mid, DAY, f"po:M99999:CNY:{DAY}", "unexpected_payout", "M99999", "CNY", Decimal(0),
             Decimal(0), [], None, Decimal("12.00"), Decimal(0), ["PO-2"], [DAY], ""),
        ]  # fmt: skip
    db.insert("settlement_runs", F.RUN_COLUMNS, sruns)
    db.insert("settlement_results", F.RESULT_COLUMNS, srows)
    db.insert("merchant_recon_runs", M.RUN_COLUMNS, mruns)
    db.insert("merchant_recon_results", M.RESULT_COLUMNS, mrows)


# ------------------------------------------------------------------------ cases


def ch_queries() -> list[tuple[str, str, ClickHouseQuery | SqlVariable]]:
    out: list[tuple[str, str, ClickHouseQuery | SqlVariable]] = []
    for uid in DASHBOARDS:
        for p in panels(build(uid)):
            for t in getattr(p, "targets", None) or []:
                if isinstance(t, ClickHouseQuery):
                    out.append((uid, str(p.title), t))
    for mod in (realtime, balances, eod):
        for v in vars(mod).values():
            if isinstance(v, SqlVariable):
                out.append((mod.UID, f"variable ${v.name}", v))
    return out


def test_every_clickhouse_panel_declares_its_columns() -> None:
    qs = ch_queries()
    assert len([q for q in qs if isinstance(q[2], ClickHouseQuery)]) >= 12
    for uid, title, q in qs:
        cols = q.columns or {"value": "String"}
        assert cols, f"{uid} / {title}"
        if isinstance(q, ClickHouseQuery) and q.kind == "timeseries":
            assert next(iter(cols)) == "time", f"{uid} / {title}: a time series starts with time"


@pytest.mark.clickhouse
def test_every_clickhouse_query_runs_on_a_seeded_day(backend: Any) -> None:
    seeded = seed(backend)
    pick_all: dict[str, list[str] | None] = {"channel": None, "merchant": None, "currency": ["CNY"]}
    pick_one: dict[str, list[str] | None] = {
        "channel": seeded["channels"][:2],
        "merchant": [seeded["merchant"]],
        "currency": ["CNY"],
    }
    empty_with_all = []
    for uid, title, q in ch_queries():
        expected = q.columns or {"value": "String"}
        for picked in (pick_all, pick_one):
            sql = expand(q.sql, backend.database, picked)
            try:
                cols, data = run_typed(backend, sql)
            except Exception as exc:
                raise AssertionError(f"{uid} / {title} on {backend.name}: {exc}\n{sql}") from None
            got = {name: family(t) for name, t in cols}
            assert got == expected, f"{uid} / {title} on {backend.name}: {got} != {expected}"
            if picked is pick_all and not data:
                empty_with_all.append(f"{uid} / {title}")
    # the seeded day has something for every panel and variable
    assert not empty_with_all, f"no rows on the seeded day: {empty_with_all}"
