"""Two runs' results compared after the fact, through ClickHouse.

Each run's output topics are stored by the sink (`sinks.runner.SinkRunner`) into a
database of its own; `read_stored` reads what ClickHouse holds after the sink's
de-duplication (FINAL), as sets or maps by id; `differences` compares two of them.

Compared (`COMPARED`), because they must not depend on how the input was read:

- breaks: (break_id, kind, txn_id);
- order states, the latest per txn_id: our status, the channel's status, standing,
  resolved, breaks;
- positions: each order's final position, the sum of its postings' legs per account,
  bucket, component and currency; and legs: those sums over all postings;
- balances per account (the sum of its shards): every figure but the count of
  postings; an account whose figures are all zero counts as no balance;
- dead letters (dead_letter_id = topic:partition:offset of the input).

Not compared, because two *uninterrupted* runs of the same pre-fed input differ in
them: posting ids (an order's postings are the steps of its position, and how many
steps depends on whether its transaction or its callback was read first, which the
two input topics do not fix), status queries (whether a pending order's query timer
fires before its evidence is read depends on how far the partition's event time
got: the same interleaving), the `reversed` flag of closed/failed orders, an order's
version and a balance's count of postings (both count steps), and whether an account
whose position was stepped up and back down has a (zero) balance at all. Their counts are
reported.

Also checked per run: no two rows of one identity after FINAL, every posting whole
(its legs sum to zero per bucket and currency), and every fed input accounted for
(`account`): dead-lettered (its topic:partition:offset is a dead letter's id) or
applied (its event id is among the event ids its order's stored state has applied,
re-deliveries of an event included).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sinks import queries
from sinks.backend import Backend, connect
from sinks.runner import SinkRunner
from tally.config import Settings
from tally.core.pipeline import Envelope

if TYPE_CHECKING:
    from tally.chaos.storm import Kill

# table -> the identity its ReplacingMergeTree collapses on (ORDER BY)
IDENTITY = {
    "breaks": "break_id",
    "postings": "(posting_id, account, bucket, component)",
    "order_states": "txn_id",
    "balances": "(account, currency, shard)",
    "status_queries": "query_id",
    "dead_letters": "dead_letter_id",
}
BALANCE_FIGURES = ("provisional", "confirmed", "gross", "refunds", "fees", "coupon_funding", "net")
COMPARED = ("breaks", "orders", "positions", "legs", "balances", "dead_letters")


async def sink_into(settings: Settings, timeout: float = 300.0) -> None:
    """Everything on the output topics into ClickHouse through the sink (`settings`
    name the broker and the database)."""
    sink = SinkRunner(settings.model_copy(update={"metrics_port": 0}))
    await sink.start()
    try:
        await sink.wait_caught_up(timeout)
    finally:
        await sink.stop()


async def stored_results_of(settings: Settings) -> dict[str, Any]:
    """Sink a run's output topics into the database of `settings` and read it back."""
    await sink_into(settings)
    db = connect(settings)
    try:
        return read_stored(db)
    finally:
        db.close()


def read_stored(db: Backend) -> dict[str, Any]:
    """A run's results as ClickHouse sees them after the sink's de-duplication."""
    return {
        "breaks": {
            (r["break_id"], r["kind"], r["txn_id"])
            for r in db.query("SELECT break_id, kind, txn_id FROM {db}.breaks FINAL")
        },
        **_postings(db),
        "orders": _orders(db),
        "balances": _balances(db),
        "queries": {
            r["query_id"] for r in db.query("SELECT query_id FROM {db}.status_queries FINAL")
        },
        "dead_letters": {
            r["dead_letter_id"]
            for r in db.query("SELECT dead_letter_id FROM {db}.dead_letters FINAL")
        },
        "applied": _applied(db),
        **_rows(db),
    }


def _postings(db: Backend) -> dict[str, Any]:
    # an order's final position: the sum of its postings' legs
    positions: dict[str, set[tuple[Any, ...]]] = {}
    for r in db.query(
        "SELECT txn_id, account, bucket, component, currency, sum(amount_minor) AS n "
        "FROM {db}.postings FINAL GROUP BY txn_id, account, bucket, component, currency"
    ):
        if int(r["n"]):
            positions.setdefault(r["txn_id"], set()).add(
                (r["account"], r["bucket"], r["component"], r["currency"], int(r["n"]))
            )
    # every stored leg, by order, to show what differs
    rows: dict[str, list[tuple[Any, ...]]] = {}
    for r in db.query(
        "SELECT txn_id, posting_id, account, bucket, component, amount_minor "
        "FROM {db}.postings FINAL ORDER BY posting_id, account, bucket, component"
    ):
        rows.setdefault(r["txn_id"], []).append(
            (r["posting_id"], r["account"], r["bucket"], r["component"], int(r["amount_minor"]))
        )
    legs: dict[tuple[str, str, str, str], int] = {}
    for r in db.query(
        "SELECT account, bucket, component, currency, sum(amount_minor) AS n "
        "FROM {db}.postings FINAL GROUP BY account, bucket, component, currency"
    ):
        if int(r["n"]):
            legs[(r["account"], r["bucket"], r["component"], r["currency"])] = int(r["n"])
    # every posting whole: its legs sum to zero per bucket and currency
    unbalanced = {
        r["posting_id"]
        for r in db.query(
            "SELECT posting_id, bucket, currency, sum(amount_minor) AS n FROM {db}.postings "
            "FINAL GROUP BY posting_id, bucket, currency HAVING n != 0"
        )
    }
    ids = {r["posting_id"] for r in db.query("SELECT DISTINCT posting_id FROM {db}.postings FINAL")}
    return {
        "positions": positions,
        "legs": legs,
        "postings": ids,
        "unbalanced_postings": unbalanced,
        "posting_rows": rows,
    }


def _orders(db: Backend) -> dict[str, tuple[Any, ...]]:
    return {
        r["txn_id"]: (
            r["our_status"],
            r["channel_status"],
            r["standing"],
            int(r["resolved"]),
            tuple(sorted(r["breaks"])),
        )
        for r in db.query(
            "SELECT txn_id, our_status, channel_status, standing, resolved, breaks "
            "FROM {db}.order_states FINAL"
        )
    }


def _balances(db: Backend) -> dict[tuple[str, str], tuple[str, ...]]:
    """Every account's figures; an account whose figures are all zero is left out, as
    no balance: whether a position was stepped up and back down again (a reversed
    step) depends on how the two input topics interleaved, like the posting ids."""
    out = {}
    for r in queries.balances(db):
        figures = tuple(str(r[k]) for k in BALANCE_FIGURES)
        if any(Decimal(f) for f in figures):
            out[(r["account"], r["currency"])] = figures
    return out


def _applied(db: Backend) -> dict[str, set[str]]:
    """txn_id -> the event ids its latest stored state has applied (`OrderState.seen`)."""
    return {
        r["txn_id"]: set(r["seen"])
        for r in db.query(
            "SELECT txn_id, JSONExtract(state, 'seen', 'Array(String)') AS seen "
            "FROM {db}.order_states FINAL"
        )
    }


def _rows(db: Backend) -> dict[str, dict[str, int]]:
    duplicates = {}
    raw_rows = {}
    for table, key in IDENTITY.items():
        (r,) = db.query(f"SELECT count() AS n, uniqExact({key}) AS u FROM {{db}}.{table} FINAL")
        duplicates[table] = int(r["n"]) - int(r["u"])
        (r,) = db.query(f"SELECT count() AS n FROM {{db}}.{table}")
        raw_rows[table] = int(r["n"])
    return {"duplicates": duplicates, "raw_rows": raw_rows}


def differences(a: Any, b: Any) -> tuple[int, Any]:
    """(number of ids that differ, a few examples) between two id-keyed results."""
    if isinstance(a, dict):
        keys = sorted((k for k in set(a) | set(b) if a.get(k) != b.get(k)), key=str)
        return len(keys), {k: (a.get(k), b.get(k)) for k in keys[:3]}
    only_a, only_b = sorted(a - b, key=str), sorted(b - a, key=str)
    return len(only_a) + len(only_b), {
        "only_reference": only_a[:3],
        "only_crashed": only_b[:3],
        "counts": (len(only_a), len(only_b)),
    }


@dataclass
class Accounting:
    """What became of every fed input message."""

    fed: int = 0
    applied: int = 0  # its event id is in its order's stored state
    redelivered: int = 0  # of those, a re-delivery of an event fed before
    dead_lettered: int = 0  # its topic:partition:offset is a stored dead letter
    missing: list[str] = field(default_factory=list)  # neither (positions)
    stray_dead_letters: list[str] = field(default_factory=list)  # of no fed message

    @property
    def accounted(self) -> int:
        return self.applied + self.dead_lettered

    @property
    def ok(self) -> bool:
        return self.accounted == self.fed and not self.missing and not self.stray_dead_letters


def account(
    envelopes: list[Envelope], positions: list[tuple[str, int, int]], stored: dict[str, Any]
) -> Accounting:
    """Every fed message: dead-lettered or applied to its order (`read_stored`)."""
    out = Accounting(fed=len(envelopes))
    dead = stored["dead_letters"]
    applied = stored["applied"]
    fed_ids = set()
    seen: defaultdict[str, set[str]] = defaultdict(set)
    for e, (topic, partition, offset) in zip(envelopes, positions, strict=True):
        where = f"{topic}:{partition}:{offset}"
        fed_ids.add(where)
        if where in dead:
            out.dead_lettered += 1
            continue
        value = e.value if isinstance(e.value, dict) else {}
        txn, event = value.get("txn_id"), value.get("event_id")
        if isinstance(txn, str) and isinstance(event, str) and event in applied.get(txn, ()):
            out.applied += 1
            out.redelivered += event in seen[txn]
            seen[txn].add(event)
        else:
            out.missing.append(where)
    out.stray_dead_letters = sorted(dead - fed_ids)
    return out


@dataclass
class Figures:
    """One run's figures, from ClickHouse and the broker."""

    stored: dict[str, Any]
    accounting: Accounting
    offsets: tuple[int, int, dict[Any, Any]]  # at their end, input partitions, the others


@dataclass
class Report:
    seed: int
    events: int  # fed input messages
    kills: list[Kill]
    incidents: list[str]  # workers that stopped working by themselves
    planned: list[str]  # the kinds of kill planned
    reference: Figures
    crashed: Figures
    known_breaks: tuple[int, Any]  # the reference's breaks vs the simulator's answer
    seconds: dict[str, float]
    workdir: Path
    ran_out: int = 0  # busy kills not done: the input ran out first

    @property
    def diffs(self) -> dict[str, tuple[int, Any]]:
        a, b = self.reference.stored, self.crashed.stored
        return {k: differences(a[k], b[k]) for k in COMPARED}

    def problems(self) -> list[str]:
        out = [f"{k} differ in {n:,} ids: {ex}" for k, (n, ex) in self.diffs.items() if n]
        for name, f in (("reference", self.reference), ("crashed", self.crashed)):
            dup = {k: n for k, n in f.stored["duplicates"].items() if n}
            if dup:
                out.append(f"{name}: duplicate rows after FINAL: {dup}")
            if f.stored["unbalanced_postings"]:
                out.append(
                    f"{name}: unbalanced postings {sorted(f.stored['unbalanced_postings'])[:5]}"
                )
            at_end, parts, behind = f.offsets
            if at_end != parts:
                out.append(f"{name}: input offsets not at their log end: {behind}")
            acc = f.accounting
            if not acc.ok:
                out.append(
                    f"{name}: inputs not accounted for: {acc.fed - acc.accounted:,} of {acc.fed:,} "
                    f"(missing {acc.missing[:5]}, stray dead letters {acc.stray_dead_letters[:5]})"
                )
        out += [f"worker failed by itself: {i}" for i in self.incidents]
        if self.known_breaks[0]:
            out.append(f"reference breaks differ from the simulator's: {self.known_breaks[1]}")
        kinds = self.kinds()
        short = {k: n for k in set(self.planned) if (n := self.planned.count(k)) > kinds[k]}
        if self.ran_out:  # busy kills the input ran out for are not a difference
            short.pop("busy", None)
        if short or len(self.kills) + self.ran_out < len(self.planned):
            out.append(f"kills planned {short or len(self.planned)}, done {kinds}")
        return out

    @property
    def ok(self) -> bool:
        return not self.problems()

    def kinds(self) -> dict[str, int]:
        out = {"busy": 0, "recovery": 0, "takeover": 0}
        for k in self.kills:
            out[k.kind] = out.get(k.kind, 0) + 1
        return out

    def line(self) -> str:
        ref, got = self.reference.stored, self.crashed.stored
        kinds = self.kinds()
        compared = " ".join(f"{k.replace('_', '-')} {len(ref[k]):,}" for k in COMPARED)
        n_diff = sum(n for n, _ in self.diffs.values())
        dups = sum(got["duplicates"].values()) + sum(ref["duplicates"].values())
        at_end, parts, _ = self.crashed.offsets
        acc = self.crashed.accounting
        return (
            f"chaos seed={self.seed} events={self.events} kills={len(self.kills)} "
            + (f"({self.ran_out} not done: the input ran out) " if self.ran_out else "")
            + f"(busy {kinds['busy']}, recovery {kinds['recovery']}, takeover {kinds['takeover']}"
            + "".join(
                f", {k} {n}" for k, n in kinds.items() if k not in ("busy", "recovery", "takeover")
            )
            + f") compared: {compared}; differences {n_diff}; duplicates {dups}; "
            f"unbalanced postings {len(got['unbalanced_postings'])}; "
            f"workers failed by themselves {len(self.incidents)}; "
            f"offsets at log end {at_end}/{parts} partitions; inputs {acc.accounted:,}/"
            f"{acc.fed:,} accounted ({acc.applied:,} applied incl. {acc.redelivered:,} "
            f"re-deliveries, {acc.dead_lettered:,} dead-lettered); breaks as simulated "
            f"{'yes' if not self.known_breaks[0] else 'NO'}; not compared: posting ids "
            f"{len(ref['postings']):,} vs {len(got['postings']):,}, status queries "
            f"{len(ref['queries']):,} vs {len(got['queries']):,}; storm "
            f"{self.seconds['storm']:.0f} s, reference {self.seconds['reference']:.0f} s, "
            f"total {self.seconds['total']:.0f} s"
        )

    def to_json(self) -> dict[str, Any]:
        ref, got = self.reference.stored, self.crashed.stored
        return {
            "seed": self.seed,
            "events": self.events,
            "kills": [vars(k) for k in self.kills],
            "kinds": self.kinds(),
            "incidents": self.incidents,
            "compared": {k: len(ref[k]) for k in COMPARED},
            "differences": {k: n for k, (n, _) in self.diffs.items()},
            "duplicates": {"reference": ref["duplicates"], "crashed": got["duplicates"]},
            "offsets_at_end": {
                "reference": self.reference.offsets[:2],
                "crashed": self.crashed.offsets[:2],
            },
            "inputs": {
                name: {k: v for k, v in vars(f.accounting).items() if not isinstance(v, list)}
                for name, f in (("reference", self.reference), ("crashed", self.crashed))
            },
            "not_compared": {
                "posting_ids": [len(ref["postings"]), len(got["postings"])],
                "status_queries": [len(ref["queries"]), len(got["queries"])],
            },
            "seconds": {k: round(v, 1) for k, v in self.seconds.items()},
            "problems": self.problems(),
            "ok": self.ok,
        }
