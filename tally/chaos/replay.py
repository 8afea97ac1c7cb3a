"""Replay: the whole input log again, from offset 0, into a fresh worker.

A simulated day through a worker, then a fresh one (new app id: consumer group,
empty tables, its own output topics) reads the same input topics from offset 0; both
on event time only. Their outputs are compared as canonical JSON per id, less
`VARIES` (`outputs_of`, `differ`), and as outcomes (`outcomes`). Also: the shape of
results from topics or ClickHouse (`topic_shape`, `stored_shape`), and the settings
helpers the other runs share (`isolated`, `settings_env`, `retarget`).
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from sinks.backend import Backend
from sinks.rows import order_version
from streams.app import create_app
from streams.broker import ensure_topics
from streams.offsets import read_to_end
from streams.produce import produce
from streams.worker import WorkerRunner
from tally.config import Settings
from tally.core.pipeline import TRANSACTIONS, Envelope
from tally.sim.traffic import SimConfig, generate

NO_TICKS = 10 * 24 * 3600.0  # idle_tick_seconds: no wall-clock ticks during a run

TOPICS = (
    "transactions",
    "callbacks",
    "breaks",
    "postings",
    "status_queries",
    "dead_letter",
    "order_states",
    "balances",
)


def isolated(s: Settings, tag: str, **update: Any) -> Settings:
    """Fresh topics and consumer groups (app id, hence table prefix), so that runs do
    not see each other's data; no web endpoint, no metrics exporter."""
    run = uuid.uuid4().hex[:6]
    values: dict[str, Any] = {
        "app_id": f"tally-{tag}-{run}",
        "web_port": 0,
        "metrics_port": 0,
    }
    for t in TOPICS:
        values[f"topic_{t}"] = f"{tag}{run}.{t.replace('_', '-')}"
    values.update(update)
    return s.model_copy(update=values)


def settings_env(s: Settings) -> dict[str, str]:
    """The settings a child `python -m tally ...` needs, as TALLY_* variables."""
    keys = [
        "app_id",
        "partitions",
        "data_dir",
        "clickhouse_database",
        "sink_batch_size",
        "sink_batch_seconds",
        "sink_retry_max_seconds",
        "log_level",
        "web_port",
        "metrics_port",
        *(f"topic_{t}" for t in TOPICS),
    ]
    env = {f"TALLY_{k.upper()}": str(getattr(s, k)) for k in keys}
    env["TALLY_BROKER"] = s.broker_url()
    url: Any = s.clickhouse_url  # a SecretStr, or a str put in by model_copy
    if url:
        env["TALLY_CLICKHOUSE_URL"] = url.get_secret_value() if isinstance(url, SecretStr) else url
    return env


def retarget(envelopes: Iterable[Envelope], s: Settings) -> list[Envelope]:
    """Point envelopes written for the default topic names at `s`'s topics."""
    return [
        Envelope(
            s.topic_transactions if e.topic == TRANSACTIONS else s.topic_callbacks, e.key, e.value
        )
        for e in envelopes
    ]


# ------------------------------------------------------------------- the replay

# fields that may differ between two runs of the same log, and why
VARIES: dict[str, dict[str, str]] = {
    "breaks": {"detected_at": "wall clock when the worker detected the break"},
    "dead_letters": {"dead_at": "wall clock when the worker refused the message"},
    "order_states": {
        "outbox": "the facts of the order's last batch, kept for a recovering worker: "
        "which facts share a batch depends on where batches were cut (wall-clock "
        "batch timeouts, fetch sizes)",
        "outbox_seq": "the sequence number of the batch that wrote the record (its "
        "checkpoint's, not an event-time value)",
    },
}
# what two runs of one log must agree on, whatever order the worker read its two input
# topics in: the outcome, not the steps (see `outcomes`)
OUTCOMES = ("breaks", "positions", "orders", "balances", "status_queries", "dead_letters")
OUTPUTS = ("breaks", "postings", "order_states", "balances", "status_queries", "dead_letters")


@dataclass
class Difference:
    only_first: int  # ids only the first run sent
    only_second: int
    changed: int  # same id, other content
    examples: list[str]  # a few ids of each
    fields: dict[str, int]  # of the changed ids: how many differ in each field

    @property
    def count(self) -> int:
        return self.only_first + self.only_second + self.changed


@dataclass
class ReplayResult:
    events: int
    first_seconds: float
    replay_seconds: float
    counts: dict[str, int]  # distinct ids per output, first run
    differences: dict[str, Difference]  # the outputs as sent (less VARIES)
    outcome_differences: dict[str, Difference]  # the outcomes (`outcomes`)
    duplicates: dict[str, int]  # ids sent more than once (identical content), per run

    @property
    def identical(self) -> bool:
        """Every output the same, byte for byte (less VARIES)."""
        return all(d.count == 0 for d in self.differences.values())

    @property
    def same_outcome(self) -> bool:
        return all(d.count == 0 for d in self.outcome_differences.values())

    def line(self) -> str:
        diffs = ", ".join(f"{k} {d.count}" for k, d in self.differences.items())
        outcome = ", ".join(f"{k} {d.count}" for k, d in self.outcome_differences.items())
        return (
            f"replay: {self.events:,} events; first run {self.first_seconds:.1f}s, replay "
            f"{self.replay_seconds:.1f}s; "
            + ", ".join(f"{v:,} {k}" for k, v in self.counts.items())
            + f"; outputs differing: {diffs} "
            + f"({'byte-identical' if self.identical else 'not byte-identical'}); "
            + f"outcomes differing: {outcome} "
            + f"({'SAME OUTCOME' if self.same_outcome else 'DIFFERENT OUTCOME'})"
        )


def _canonical(kind: str, value: dict[str, Any]) -> str:
    drop = VARIES.get(kind, {})
    return json.dumps(
        {k: v for k, v in value.items() if k not in drop}, sort_keys=True, separators=(",", ":")
    )


def _identity(kind: str, d: dict[str, Any]) -> tuple[str, int]:
    """(id, version): the latest version of an id is the one compared."""
    if kind == "order_states":
        return d["txn_id"], order_version(d["version"], d["queries_sent"], len(d["breaks"]))
    if kind == "balances":
        return d["key"], int(d["version"])
    field_ = {
        "breaks": "break_id",
        "postings": "posting_id",
        "status_queries": "query_id",
        "dead_letters": "dead_letter_id",
    }[kind]
    return str(d[field_]), 0


def _topic(s: Settings, kind: str) -> str:
    return str(getattr(s, {"dead_letters": "topic_dead_letter"}.get(kind, f"topic_{kind}")))


async def outputs_of(s: Settings) -> tuple[dict[str, dict[str, str]], dict[str, int]]:
    """Per output: id -> canonical JSON of its latest version; and, per output, how
    many ids were sent more than once with the same content."""
    out: dict[str, dict[str, str]] = {}
    repeats: dict[str, int] = {}
    for kind in OUTPUTS:
        latest: dict[str, tuple[int, str]] = {}
        seen: dict[str, int] = {}
        for m in await read_to_end(s.bootstrap_servers(), _topic(s, kind)):
            d = json.loads(m.value)
            ident, version = _identity(kind, d)
            seen[ident] = seen.get(ident, 0) + 1
            if ident not in latest or version >= latest[ident][0]:
                latest[ident] = (version, _canonical(kind, d))
        out[kind] = {k: v for k, (_, v) in latest.items()}
        repeats[kind] = sum(1 for n in seen.values() if n > 1)
    return out, repeats


def differ(a: dict[str, str], b: dict[str, str], keep: int = 3) -> Difference:
    first, second = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    changed = [k for k in sorted(set(a) & set(b)) if a[k] != b[k]]
    fields: Counter[str] = Counter()
    for k in changed:
        fields.update(_changed_fields(_json(a[k]), _json(b[k])))
    return Difference(
        len(first),
        len(second),
        len(changed),
        first[:keep] + second[:keep] + changed[:keep],
        dict(fields.most_common()),
    )


def _json(v: str) -> Any:
    try:
        return json.loads(v)
    except ValueError:
        return v  # a shape's plain value ("kind|txn_id")


def _changed_fields(x: Any, y: Any, prefix: str = "") -> list[str]:
    """The (dotted) fields in which two JSON objects differ, two levels deep."""
    if not (isinstance(x, dict) and isinstance(y, dict)) or prefix.count(".") >= 1:
        return [prefix.rstrip(".") or "(value)"] if x != y else []
    out: list[str] = []
    for k in sorted(set(x) | set(y)):
        out += _changed_fields(x.get(k), y.get(k), f"{prefix}{k}.")
    return out


def outcomes(out: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """What the outputs amount to, independent of the steps taken:

    - breaks: every field but the evidence trail (the witnesses the order had when
      the break was raised: which ones had arrived depends on the interleaving);
    - positions: per order, the sum of its postings' legs per account, bucket,
      component and currency (how many postings it took is a step);
    - orders: the latest order state's fields, without `version` (a count of steps)
      and the worker's internal `state` (posting_seq counts postings);
    - balances: each shard's non-zero amounts, without `version` (its count of
      postings); a shard with none is no shard;
    - status queries, dead letters: as sent.
    """
    res: dict[str, dict[str, str]] = {
        "status_queries": out["status_queries"],
        "dead_letters": out["dead_letters"],
    }
    res["breaks"] = {
        k: _dumps(_without(json.loads(v), "evidence")) for k, v in out["breaks"].items()
    }
    res["positions"] = _positions(json.loads(v) for v in out["postings"].values())
    res["orders"] = {
        k: _dumps(_without(json.loads(v), "version", "state"))
        for k, v in out["order_states"].items()
    }
    shards = {k: _shard(json.loads(v)) for k, v in out["balances"].items()}
    res["balances"] = {k: _dumps(d) for k, d in shards.items() if d["amounts_minor"]}
    return res


def _shard(d: dict[str, Any]) -> dict[str, Any]:
    """A balance shard less its count of postings and its zero amounts (a shard that
    went provisional and back keeps a 0 entry the other run may never have made)."""
    amounts = {k: v for k, v in d["amounts_minor"].items() if v}
    return {**_without(d, "version"), "amounts_minor": amounts}


def _dumps(d: Any) -> str:
    return json.dumps(d, sort_keys=True, separators=(",", ":"))


def _without(d: dict[str, Any], *fields: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in fields}


async def run_log(s: Settings, envelopes: list[Envelope] | None = None) -> float:
    """A worker over `s`'s input topics (first feeding `envelopes`, all of them, before
    it starts) until they are drained; returns the processing seconds."""
    if envelopes:
        await ensure_topics(
            s.bootstrap_servers(), [s.topic_transactions, s.topic_callbacks], s.partitions
        )
        await produce(s.bootstrap_servers(), envelopes)
    worker = WorkerRunner(create_app(s))
    await worker.start()
    t0 = time.monotonic()
    try:
        await worker.wait_idle(3.0)
        return max(worker.tally.stats.last_activity - t0, 0.0)
    finally:
        await worker.stop()


async def replay(s: Settings, events: int, seed: int = 7) -> ReplayResult:
    """A simulated day through a worker, then the same log from offset 0 through a
    fresh one; their outputs compared (see the module doc)."""
    first = isolated(s, "day", idle_tick_seconds=NO_TICKS)
    cfg = SimConfig(events=events, seed=seed, id_prefix=f"R{uuid.uuid4().hex[:6]}-")
    envelopes = retarget(generate(cfg, first.policies()).envelopes, first)
    first_seconds = await run_log(first, envelopes)
    second = isolated(
        s,
        "replay",
        idle_tick_seconds=NO_TICKS,
        topic_transactions=first.topic_transactions,
        topic_callbacks=first.topic_callbacks,
    )
    replay_seconds = await run_log(second)
    a, rep_a = await outputs_of(first)
    b, rep_b = await outputs_of(second)
    oa, ob = outcomes(a), outcomes(b)
    return ReplayResult(
        events=len(envelopes),
        first_seconds=first_seconds,
        replay_seconds=replay_seconds,
        counts={k: len(v) for k, v in a.items()},
        differences={k: differ(a[k], b[k]) for k in OUTPUTS},
        outcome_differences={k: differ(oa[k], ob[k]) for k in OUTCOMES},
        duplicates={f"{k} (first)": rep_a[k] for k in OUTPUTS}
        | {f"{k} (replay)": rep_b[k] for k in OUTPUTS},
    )


# ------------------------------------------ the same shape from topics or ClickHouse

# what a result amounts to, keyed by identity; read from output topics (`topic_shape`)
# or from ClickHouse with FINAL (`stored_shape`), so that either can be compared with
# either. An order's position is the sum of its postings' legs (see `outcomes`).
SHAPES = ("breaks", "positions", "orders", "balances", "status_queries", "dead_letters")


@dataclass
class Compared:
    differences: dict[str, Difference]

    @property
    def missing(self) -> int:
        return sum(d.only_first for d in self.differences.values())

    @property
    def extra(self) -> int:
        return sum(d.only_second for d in self.differences.values())

    @property
    def changed(self) -> int:
        return sum(d.changed for d in self.differences.values())

    @property
    def count(self) -> int:
        return self.missing + self.extra + self.changed

    def brief(self) -> str:
        return ", ".join(
            f"{k}: -{d.only_first} +{d.only_second} ~{d.changed}"
            for k, d in self.differences.items()
            if d.count
        )


def compare_shapes(
    expected: dict[str, dict[str, str]],
    got: dict[str, dict[str, str]],
    kinds: tuple[str, ...] = SHAPES,
) -> Compared:
    """`only_first` counts what is missing from `got`, `only_second` what is extra."""
    return Compared({k: differ(expected[k], got[k]) for k in kinds})


def _legs(rows: Iterable[tuple[str, str, int]]) -> dict[str, str]:
    by: dict[str, Counter[str]] = {}
    for txn, leg, n in rows:
        by.setdefault(txn, Counter())[leg] += n
    # an order whose legs net to zero has no position (it went provisional and back)
    return {k: _dumps({a: n for a, n in c.items() if n}) for k, c in by.items() if any(c.values())}


def _positions(postings: Iterable[dict[str, Any]]) -> dict[str, str]:
    return _legs(
        (
            p["txn_id"],
            f"{x['account']}|{x['bucket']}|{x['component']}|{p['currency']}",
            int(x["amount_minor"]),
        )
        for p in postings
        for x in p["legs"]
    )


def _balances(rows: Iterable[tuple[str, dict[str, int]]]) -> dict[str, str]:
    by: dict[str, Counter[str]] = {}
    for acct, amounts in rows:
        by.setdefault(acct, Counter()).update({k: int(v) for k, v in amounts.items()})
    return {k: _dumps({a: n for a, n in c.items() if n}) for k, c in by.items()}


def _input(dead_letter_id: str) -> str:
    """topic:partition:offset less the run's topic prefix ("day1a2b3c.callbacks:0:30"
    -> "callbacks:0:30"), so that runs on other topics compare."""
    return dead_letter_id.split(".", 1)[-1]


def _order(d: dict[str, Any]) -> str:
    return f"{d['our_status']}|{d['channel_status']}|{d['standing']}|{int(d['resolved'])}"


def topic_shape(out: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """The shape of the outputs `outputs_of` read from the topics."""
    breaks = {k: json.loads(v) for k, v in out["breaks"].items()}
    shards = [json.loads(v) for v in out["balances"].values()]
    return {
        "breaks": {k: f"{d['kind']}|{d['txn_id']}" for k, d in breaks.items()},
        "positions": _positions(json.loads(v) for v in out["postings"].values()),
        "orders": {k: _order(json.loads(v)) for k, v in out["order_states"].items()},
        "balances": _balances(
            (f"{d['account']}|{d['currency']}", d["amounts_minor"]) for d in shards
        ),
        "status_queries": dict.fromkeys(out["status_queries"], ""),
        "dead_letters": {_input(k): "" for k in out["dead_letters"]},
    }


def stored_shape(db: Backend) -> dict[str, dict[str, str]]:
    """The same shape from ClickHouse, read with FINAL as every query of tally does."""
    q = db.query
    legs = q(
        "SELECT txn_id, account, bucket, component, currency, sum(amount_minor) AS n "
        "FROM {db}.postings FINAL GROUP BY txn_id, account, bucket, component, currency"
    )
    return {
        "breaks": {
            r["break_id"]: f"{r['kind']}|{r['txn_id']}"
            for r in q("SELECT break_id, kind, txn_id FROM {db}.breaks FINAL")
        },
        "positions": _legs(
            (
                r["txn_id"],
                f"{r['account']}|{r['bucket']}|{r['component']}|{r['currency']}",
                int(r["n"]),
            )
            for r in legs
        ),
        "orders": {
            r["txn_id"]: _order(r)
            for r in q(
                "SELECT txn_id, our_status, channel_status, standing, resolved "
                "FROM {db}.order_states FINAL"
            )
        },
        "balances": _balances(
            (f"{r['account']}|{r['currency']}", json.loads(r["amounts_minor"]))
            for r in q("SELECT account, currency, amounts_minor FROM {db}.balances FINAL")
        ),
        "status_queries": {
            r["query_id"]: "" for r in q("SELECT query_id FROM {db}.status_queries FINAL")
        },
        "dead_letters": {
            _input(r["dead_letter_id"]): ""
            for r in q("SELECT dead_letter_id FROM {db}.dead_letters FINAL")
        },
    }


# table -> the identity its ReplacingMergeTree collapses on (its ORDER BY)
IDENTITY = {
    "order_states": "txn_id",
    "breaks": "break_id",
    "postings": "posting_id, account, bucket, component",
    "balances": "account, currency, shard",
    "status_queries": "query_id",
    "dead_letters": "dead_letter_id",
}


def stored_duplicates(db: Backend) -> dict[str, int]:
    """Per table: rows a FINAL query returns beyond one per identity (must be 0); and
    the raw rows beyond that (replayed inserts not merged yet: FINAL hides them)."""
    out: dict[str, int] = {}
    for table, ident in IDENTITY.items():
        r = db.query(f"SELECT count() AS n, uniqExact({ident}) AS u FROM {{db}}.{table} FINAL")[0]
        out[table] = int(r["n"]) - int(r["u"])
    return out


def raw_replayed(db: Backend) -> int:
    """Rows stored more than once (a batch written again after a retry), before
    ClickHouse merged them: count() without FINAL minus with."""
    n = 0
    for table in IDENTITY:
        raw = int(db.query(f"SELECT count() AS n FROM {{db}}.{table}")[0]["n"])
        final = int(db.query(f"SELECT count() AS n FROM {{db}}.{table} FINAL")[0]["n"])
        n += raw - final
    return n
