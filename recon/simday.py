"""A simulated business day with its channel statements and the reconciliation's answer.

`simulate_day(sim_config, policies, anomalies)`:

1. generates the day's traffic (`tally.sim.traffic.generate`) and runs the pure stream
   topology over it (`tally.core.pipeline.LocalPipeline`): the order states, breaks,
   postings and balances the stream would store in ClickHouse (`SimDay.rows()` gives
   them as the sink writes them, `SimDay.store(db)` inserts them);
2. derives each channel's **truthful statement** for each business day, what the
   channel actually processed:
     * a payment whose channel's final word is success (or refunded) and that was not
       reversed: one `payment` line with the channel txn id, currency, amount and fee
       of the channel's latest success witness, dated by that witness (S11: the
       amount is what the channel collected, order amount less a platform coupon);
     * a refund the channel completed: one `refund` line for the refunded amount;
     * evidence of success for an order we never received (an orphan): a payment line;
     * nothing for failed, closed, pending, reversed orders and for reversal orders
       (a reversed sale and its reversal net to nothing on a statement);
     * an order charged twice (duplicate_success) shows one line, the final charge:
       the duplicate is the stream's break to resolve (S1), not the statement's;
3. injects **statement-side anomalies** at the rates of `StatementAnomalies` (seeded),
   each on a distinct item that the truthful statement matches:
     * missing line                       -> short
     * extra line (an order we never had,
       or one we hold as failed/closed)    -> long
     * changed amount                     -> amount_mismatch
     * changed fee                        -> fee_mismatch (formats that state fees)
     * payment shown as refund or refund
       as payment                         -> status_mismatch
     * line moved across the cutoff to the neighbouring day, within the carry
       window                             -> carried (on both days)
   Missing and extra lines are placed farther than the carry window from any cutoff
   (near it they could be carried); a line moved across the cutoff is one of an item
   within the window, and it stays within the window on the other side.
4. records the **oracle**: the expected class of every item of every (channel, day)
   (`SimDay.expected`). Real-time anomalies are kept in the day (the stream finds
   them; they are not removed), and their end-of-day class is derived from the
   truthful statement: e.g. ours success / channel failed -> short, an orphan's
   success -> long, a late callback (S12: final answer just after the cutoff) ->
   carried on both days. The derivation (`expected_classes`) is written here from
   the rules in docs/reconciliation.md, independently of recon's SQL; every injected
   item's derived class is checked against the class its injection was meant to
   cause when the day is built.

Formats that do not state a fee per line turn a changed fee into `matched`:
`SimDay.expected_for(fee_stated=False)` gives the oracle for those.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from tally.core.events import iso_ms
from tally.core.ledger import BalanceBook
from tally.core.messages import balance_snapshot, order_snapshot
from tally.core.money import format_minor, to_decimal
from tally.core.orders import SUCCESS_LIKE, Evidence, OrderState, view
from tally.core.pipeline import LocalPipeline, partition_for
from tally.core.policy import Policies
from tally.sim.traffic import SimConfig, Simulation, generate

__all__ = [
    "CLASSES",
    "LedgerItem",
    "Line",
    "SimDay",
    "StatementAnomalies",
    "expected_classes",
    "simulate_day",
]

CLASSES = (
    "matched",
    "long",
    "short",
    "amount_mismatch",
    "fee_mismatch",
    "status_mismatch",
    "carried",
)

Key = tuple[str, str, str]  # (channel, business date ISO, item key)


@dataclass(frozen=True, slots=True)
class LedgerItem:
    """An order the end-of-day comparison counts: payment or refund, ours success, not
    reversed. `amount` is comparable (payment: amount - coupon), minor units."""

    channel_id: str
    business_date: date
    txn_id: str
    channel_txn_id: str
    merchant_id: str
    kind: str
    currency: str
    amount: int
    fee: int
    at_ms: int  # created (what business_date derives from)


@dataclass(frozen=True, slots=True)
class Line:
    """A statement line (the columns of `statement_lines`), money in minor units."""

    channel_id: str
    business_date: date
    txn_id: str
    channel_txn_id: str
    kind: str  # payment | refund
    status: str  # success
    currency: str
    amount: int
    fee: int | None
    occurred_at_ms: int
    merchant_ref: str = ""
    original_txn_id: str = ""
    coupon_amount: int | None = None

    @property
    def key(self) -> str:
        return self.txn_id or self.channel_txn_id

    def to_json(self) -> dict[str, Any]:
        c = self.currency
        return {
            "channel_id": self.channel_id,
            "business_date": self.business_date.isoformat(),
            "txn_id": self.txn_id,
            "channel_txn_id": self.channel_txn_id,
            "original_txn_id": self.original_txn_id,
            "kind": self.kind,
            "status": self.status,
            "currency": c,
            "amount": format_minor(self.amount, c),
            "fee": None if self.fee is None else format_minor(self.fee, c),
            "coupon_amount": None
            if self.coupon_amount is None
            else format_minor(self.coupon_amount, c),
            "merchant_ref": self.merchant_ref,
            "occurred_at": iso_ms(self.occurred_at_ms),
        }


@dataclass
class StatementAnomalies:
    """Statement-side anomalies, as fractions of the items a statement matches (at
    least one of each kind with a non-zero rate, where an item qualifies)."""

    missing: float = 0.02
    extra: float = 0.02  # extra lines, as a fraction of the day's lines
    amount: float = 0.02
    fee: float = 0.02
    status: float = 0.01
    carried: float = 0.02  # moved across the cutoff: items within the carry window only
    seed: int = 0

    def __post_init__(self) -> None:
        for k in ("missing", "extra", "amount", "fee", "status", "carried"):
            v = getattr(self, k)
            if not 0 <= v <= 1:
                raise ValueError(f"{k}: a fraction between 0 and 1, got {v}")
        if self.missing + self.amount + self.fee + self.status > 1:
            raise ValueError("missing + amount + fee + status add up to more than 1")


# ------------------------------------------------------------- the ledger


def _last_time(state: OrderState) -> int:
    times = [state.our_status_at_ms, state.created_at_ms or 0]
    times += [e.occurred_at_ms for e in state.evidence]
    return max(times)


def ledger_items(orders: Iterable[OrderState], policies: Policies) -> list[LedgerItem]:
    out = []
    for s in orders:
        if not s.known or s.type not in ("payment", "refund") or s.our_status != "success":
            continue
        assert s.channel_id and s.currency and s.merchant_id and s.business_date
        v = view(s, policies[s.channel_id])
        if v.reversed:
            continue
        final = s.channel_final()
        ctid = (
            final.channel_txn_id
            if final is not None
            else (s.evidence[-1].channel_txn_id if s.evidence else "")
        )
        out.append(
            LedgerItem(
                channel_id=s.channel_id,
                business_date=date.fromisoformat(s.business_date),
                txn_id=s.txn_id,
                channel_txn_id=ctid,
                merchant_id=s.merchant_id,
                kind=s.type,
                currency=s.currency,
                amount=s.amount - s.coupon_amount if s.type == "payment" else s.amount,
                fee=v.fee,
                at_ms=s.created_at_ms or 0,
            )
        )
    return out


def _success_witness(state: OrderState) -> Evidence | None:
    """The channel's latest `success` witness (event time, then arrival)."""
    best: Evidence | None = None
    for ev in state.evidence:
        if ev.status == "success" and (
            best is None or (ev.occurred_at_ms, ev.seq) >= (best.occurred_at_ms, best.seq)
        ):
            best = ev
    return best


def truthful_lines(orders: Iterable[OrderState], policies: Policies) -> list[Line]:
    """What the channels processed (see the module docstring)."""
    out = []
    for s in orders:
        if not s.evidence:
            continue
        kind = s.type if s.known else "payment"
        if kind not in ("payment", "refund"):
            continue
        channel = s.channel_id or s.evidence[0].channel_id
        pol = policies[channel]
        v = view(s, pol)
        final = s.channel_final()
        if v.reversed or final is None or final.status not in SUCCESS_LIKE:
            continue
        w = _success_witness(s)
        if w is None:
            continue
        out.append(
            Line(
                channel_id=channel,
                business_date=pol.business_date(w.occurred_at_ms),
                txn_id=s.txn_id,
                channel_txn_id=w.channel_txn_id,
                kind=kind,
                status="success",
                currency=w.currency,
                amount=w.amount,
                fee=v.fee,
                occurred_at_ms=w.occurred_at_ms,
                merchant_ref=s.merchant_id or "",
                original_txn_id=s.original_txn_id or "",
                coupon_amount=(s.coupon_amount or None) if kind == "payment" else None,
            )
        )
    # one channel transaction is one line: a channel txn id that two of our orders
    # claim (shared_channel_txn) was charged once, for the earlier claim
    out.sort(key=lambda x: (x.occurred_at_ms, x.txn_id))
    seen: set[tuple[str, str, str]] = set()
    unique = []
    for ln in out:
        k = (ln.channel_id, ln.kind, ln.channel_txn_id)
        if k not in seen:
            seen.add(k)
            unique.append(ln)
    return unique


# ------------------------------------------------------------- the oracle


def expected_classes(
    ledger: Iterable[LedgerItem],
    statements: dict[tuple[str, date], list[Line]],
    policies: Policies,
) -> dict[Key, str]:
    """The class of every item of every loaded (channel, day), by the rules of
    docs/reconciliation.md: an item and the line quoting its txn_id (else its channel
    txn id) are compared: kind/status, then amount and currency, then the fee where
    the line states one; an item alone is short, a success line alone long, unless
    it is within the channel's carry window of a cutoff of its day and its
    counterpart is on the neighbouring day (or, for a ledger item, that day's
    statement is not loaded): carried."""
    by_day: dict[tuple[str, date], list[LedgerItem]] = defaultdict(list)
    for it in ledger:
        by_day[(it.channel_id, it.business_date)].append(it)

    def quotes(ln: Line, it: LedgerItem) -> bool:
        return bool(
            (ln.txn_id and ln.txn_id == it.txn_id)
            or (ln.channel_txn_id and ln.channel_txn_id == it.channel_txn_id)
        )

    out: dict[Key, str] = {}
    for (ch, d), lines in statements.items():
        pol = policies[ch]
        w = pol.carry_window_seconds * 1000
        start, end = pol.cutoff_ms(d - timedelta(days=1)), pol.cutoff_ms(d)
        items = {it.txn_id: it for it in by_day.get((ch, d), [])}
        by_ctid: dict[str, str] = {}
        for it in sorted(items.values(), key=lambda x: x.txn_id):
            if it.channel_txn_id:
                by_ctid.setdefault(it.channel_txn_id, it.txn_id)
        paired: dict[str, Line] = {}
        alone: list[Line] = []
        for ln in lines:
            k = (
                ln.txn_id
                if ln.txn_id in items
                else by_ctid.get(ln.channel_txn_id)
                if ln.channel_txn_id
                else None
            )
            if k is None:
                alone.append(ln)
            elif k in paired:
                raise ValueError(f"two lines for {k} on {ch} {d}: the simulator makes one")
            else:
                paired[k] = ln
        for k, it in items.items():
            pl = paired.get(k)
            if pl is not None:
                if pl.status != "success" or pl.kind != it.kind:
                    cls = "status_mismatch"
                elif pl.currency != it.currency or pl.amount != it.amount:
                    cls = "amount_mismatch"
                elif pl.fee is not None and pl.fee != it.fee:
                    cls = "fee_mismatch"
                else:
                    cls = "matched"
            else:
                cls = "short"
                for cut, other in ((end, d + timedelta(days=1)), (start, d - timedelta(days=1))):
                    if abs(it.at_ms - cut) <= w:
                        nxt = statements.get((ch, other))
                        if nxt is None or any(x.status == "success" and quotes(x, it) for x in nxt):
                            cls = "carried"
                            break
            out[(ch, d.isoformat(), k)] = cls
        for ln in alone:
            if ln.status != "success":
                continue
            cls = "long"
            for cut, other in ((end, d + timedelta(days=1)), (start, d - timedelta(days=1))):
                if abs(ln.occurred_at_ms - cut) <= w and any(
                    quotes(ln, it) for it in by_day.get((ch, other), [])
                ):
                    cls = "carried"
                    break
            key = (ch, d.isoformat(), ln.key)
            if key in out:
                raise ValueError(f"two results for {key}: the simulator makes one")
            out[key] = cls
    return out


# ----------------------------------------------------------- the simulated day


@dataclass
class SimDay:
    sim: Simulation
    policies: Policies
    pipeline: LocalPipeline
    ledger: list[LedgerItem]
    truthful: dict[tuple[str, date], list[Line]]
    statements: dict[tuple[str, date], list[Line]]
    injected: dict[Key, str]  # item -> the anomaly injected on it
    expected: dict[Key, str]
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def days(self) -> list[tuple[str, date]]:
        return sorted(self.statements)

    def expected_for(self, fee_stated: bool = True) -> dict[Key, str]:
        """The oracle for a statement format; without fees a changed fee is invisible."""
        if fee_stated:
            return dict(self.expected)
        plain = {k: [replace(ln, fee=None) for ln in v] for k, v in self.statements.items()}
        return expected_classes(self.ledger, plain, self.policies)

    def expected_set(self, fee_stated: bool = True) -> set[tuple[str, str, str, str]]:
        """(channel, business date, item key, class) for every item."""
        return {(*k, c) for k, c in self.expected_for(fee_stated).items()}

    def breaks(self, fee_stated: bool = True) -> set[tuple[str, str, str, str]]:
        return {x for x in self.expected_set(fee_stated) if x[3] != "matched"}

    # ------------------------------------------------------------ ClickHouse

    def rows(self) -> dict[str, tuple[tuple[str, ...], list[tuple[Any, ...]]]]:
        """The stream's results as the sink stores them: table -> (columns, rows)."""
        from sinks import rows as R

        pipe = self.pipeline

        def rows_of(table: R.Table, docs: Iterable[tuple[dict[str, Any], int]]) -> list[Any]:
            out: list[Any] = []
            for d, partition in docs:
                raw = json.dumps(d, separators=(",", ":")).encode()
                out.extend(R.rows_for(table, None, raw, partition))
            return out

        def orders() -> Iterator[tuple[dict[str, Any], int]]:
            for s in pipe.orders.values():
                ch = s.channel_id or (s.evidence[0].channel_id if s.evidence else "")
                v = view(s, self.policies[ch])
                yield order_snapshot(s, v, _last_time(s)), partition_for(s.txn_id, pipe.partitions)

        book = BalanceBook()
        book.apply_all(pipe.postings)
        return {
            "order_states": (R.ORDER_STATES.columns, rows_of(R.ORDER_STATES, orders())),
            "breaks": (
                R.BREAKS.columns,
                rows_of(R.BREAKS, ((b.to_json(), 0) for b in pipe.breaks.values())),
            ),
            "postings": (
                R.POSTINGS.columns,
                rows_of(R.POSTINGS, ((p.to_json(), 0) for p in pipe.postings)),
            ),
            "balances": (
                R.BALANCES.columns,
                rows_of(
                    R.BALANCES,
                    ((balance_snapshot(k, b, 0), 0) for k, b in sorted(book.balances.items())),
                ),
            ),
            "status_queries": (
                R.STATUS_QUERIES.columns,
                rows_of(R.STATUS_QUERIES, ((q.to_json(), 0) for q in pipe.queries)),
            ),
        }

    def store(self, db: Any, batch: int = 5000) -> dict[str, int]:
        """Insert the ledger into ClickHouse (schema migrated first); idempotent."""
        from sinks.schema import migrate

        migrate(db)
        n = {}
        for table, (cols, rows) in self.rows().items():
            for i in range(0, len(rows), batch):
                db.insert(table, cols, rows[i : i + batch])
            n[table] = len(rows)
        return n

    # ------------------------------------------------------------ files

    def statement(self, channel: str, day: date, fmt: str) -> Any:
        """The (channel, day) statement as a `recon.statements.Statement` in `fmt`."""
        from recon.statements import Statement, StatementLine

        pol = self.policies[channel]
        lines = [
            StatementLine(
                line_no=i,
                txn_id=ln.txn_id,
                channel_txn_id=ln.channel_txn_id,
                original_txn_id=ln.original_txn_id,
                kind=ln.kind,
                status=ln.status,
                currency=ln.currency,
                amount=to_decimal(ln.amount, ln.currency),
                fee=None if ln.fee is None else to_decimal(ln.fee, ln.currency),
                coupon_amount=None
                if ln.coupon_amount is None
                else to_decimal(ln.coupon_amount, ln.currency),
                merchant_ref=ln.merchant_ref,
                occurred_at_ms=ln.occurred_at_ms,
            )
            for i, ln in enumerate(self.statements[(channel, day)], start=1)
        ]
        return Statement(
            channel_id=channel,
            business_date=day,
            format=fmt,
            lines=lines,
            file_name=file_name(channel, day, fmt),
            meta={"cutoff": pol.cutoff.strftime("%H:%M"), "currency": "CNY"},
        )

    def files(self, fmt: str) -> list[tuple[str, date, str, bytes]]:
        """(channel, day, file name, bytes) of every statement in format `fmt`.
        Formats that hold one currency (alipay: CNY; mt940, camt053: one per file)
        raise ValueError for a statement with another / several currencies."""
        from recon.statements import write

        out = []
        for ch, d in self.days:
            st = self.statement(ch, d, fmt)
            out.append((ch, d, st.file_name, write(st)))
        return out

    def write_files(self, directory: str | Path, formats: Iterable[str]) -> dict[str, Any]:
        """`<directory>/<format>/<channel>-<date>.<ext>` for every statement and format,
        and `<directory>/expected-recon.json` (the oracle; see `expected_json`).
        A format that cannot hold the day (several currencies in one file) is skipped
        and named under "skipped" with the reason."""
        root = Path(directory)
        written: dict[str, list[str]] = {}
        skipped: dict[str, str] = {}
        for fmt in formats:
            try:
                files = self.files(fmt)
            except ValueError as exc:
                skipped[fmt] = str(exc)
                continue
            (root / fmt).mkdir(parents=True, exist_ok=True)
            for _, _, name, data in files:
                (root / fmt / name).write_bytes(data)
            written[fmt] = [f"{fmt}/{name}" for _, _, name, _ in files]
        doc = {"files": written, "skipped": skipped, **self.expected_json()}
        root.mkdir(parents=True, exist_ok=True)
        (root / "expected-recon.json").write_text(
            json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        return doc

    # ------------------------------------------------------------ the answer

    def expected_json(self, fee_stated: bool = True) -> dict[str, Any]:
        exp = self.expected_for(fee_stated)
        by_class = Counter(exp.values())
        return {
            "simulation": {
                "events": len(self.sim.envelopes),
                "seed": self.sim.config.seed,
                "start": iso_ms(self.sim.start_ms),
                "end": iso_ms(self.sim.end_ms),
            },
            "injected": self.counts,
            "statements": [
                {"channel": ch, "business_date": d.isoformat(), "lines": len(v)}
                for (ch, d), v in sorted(self.statements.items())
            ],
            "fee_stated": fee_stated,
            "counts": {c: by_class.get(c, 0) for c in CLASSES},
            "items": [
                {
                    "channel": ch,
                    "business_date": d,
                    "item_key": k,
                    "class": cls,
                    "cause": self.injected.get((ch, d, k), ""),
                }
                for (ch, d, k), cls in sorted(exp.items())
            ],
        }


EXTENSIONS = {"wechat": "csv", "alipay": "csv", "mt940": "sta", "camt053": "xml", "csv": "csv"}


def file_name(channel: str, day: date, fmt: str) -> str:
    return f"{channel}-{day.isoformat()}.{EXTENSIONS.get(fmt, 'txt')}"


def _cutoffs(policies: Policies, ch: str, d: date) -> tuple[int, int]:
    pol = policies[ch]
    return pol.cutoff_ms(d - timedelta(days=1)), pol.cutoff_ms(d)


def simulate_day(
    config: SimConfig,
    policies: Policies | None = None,
    anomalies: StatementAnomalies | None = None,
    partitions: int = 4,
    sim: Simulation | None = None,
) -> SimDay:
    """Simulate, run the stream in memory, write truthful statements, inject anomalies,
    record the oracle (see the module docstring). `sim`: the traffic of `config`
    already generated (`generate(config, policies)`), so as not to generate it twice."""
    policies = policies or Policies()
    anomalies = anomalies or StatementAnomalies(seed=config.seed)
    sim = generate(config, policies) if sim is None else sim
    pipe = LocalPipeline(
        policies=policies,
        partitions=partitions,
        allowed_lateness_ms=config.allowed_lateness_ms,
        clock=lambda: int(time.time() * 1000),
    )
    pipe.feed_all(sim.envelopes)
    orders = list(pipe.orders.values())
    ledger = ledger_items(orders, policies)
    truthful: dict[tuple[str, date], list[Line]] = defaultdict(list)
    for ln in truthful_lines(orders, policies):
        truthful[(ln.channel_id, ln.business_date)].append(ln)
    for it in ledger:  # a day with orders but no line still has a (empty) statement
        truthful.setdefault((it.channel_id, it.business_date), [])
    truthful = {k: sorted(v, key=lambda x: (x.occurred_at_ms, x.key)) for k, v in truthful.items()}
    base = expected_classes(ledger, truthful, policies)

    rng = random.Random(anomalies.seed)
    statements = {k: list(v) for k, v in truthful.items()}
    injected: dict[Key, str] = {}
    intended: dict[Key, str] = {}
    items = {(it.channel_id, it.business_date.isoformat(), it.txn_id): it for it in ledger}
    line_of = {
        (ch, d.isoformat(), ln.txn_id): (ch, d, i)
        for (ch, d), lines in truthful.items()
        for i, ln in enumerate(lines)
        if ln.txn_id
    }
    days = sorted(statements)

    cutoffs: dict[tuple[str, date], tuple[int, int]] = {}

    def bounds(ch: str, d: date) -> tuple[int, int]:
        b = cutoffs.get((ch, d))
        if b is None:
            b = cutoffs[(ch, d)] = _cutoffs(policies, ch, d)
        return b

    def far(ch: str, d: date, *times: int) -> bool:
        start, end = bounds(ch, d)
        w = policies[ch].carry_window_seconds * 1000
        return all(abs(t - start) > w and abs(t - end) > w for t in times)

    # matched pairs: the candidates
    matched = sorted(k for k, c in base.items() if c == "matched" and k in items and k in line_of)
    rng.shuffle(matched)
    far_pairs, near_pairs = [], []
    for k in matched:
        ch, d, i = line_of[k]
        ln = statements[(ch, d)][i]
        if far(ch, d, items[k].at_ms, ln.occurred_at_ms):
            far_pairs.append(k)
        else:
            near_pairs.append(k)

    def take(pool: list[Key], rate: float) -> list[Key]:
        n = min(len(pool), max(1, round(rate * len(matched)))) if rate > 0 else 0
        out, pool[:] = pool[:n], pool[n:]
        return out

    removed: set[tuple[str, date, int]] = set()
    # a missing line must be far from the cutoffs (else it may be carried)
    for k in take(far_pairs, anomalies.missing):
        removed.add(line_of[k])
        injected[k], intended[k] = "missing_line", "short"

    # carried: lines of items near the cutoff between two simulated days move across it
    moved: list[tuple[Key, Line]] = []
    movable = []
    # a channel txn id on two orders (e.g. a retried sale, S1) would pair the moved
    # line with the other order on the neighbouring day: such items stay in place
    ctids = Counter(it.channel_txn_id for it in ledger if it.channel_txn_id)
    for k in near_pairs:
        if ctids[items[k].channel_txn_id] > 1:
            continue
        ch, d, i = line_of[k]
        it, ln = items[k], statements[(ch, d)][i]
        w = policies[ch].carry_window_seconds * 1000
        start, end = _cutoffs(policies, ch, d)
        nxt, prv = (ch, d + timedelta(days=1)), (ch, d - timedelta(days=1))
        if nxt in statements and abs(it.at_ms - end) <= w and abs(ln.occurred_at_ms - end) <= w:
            movable.append((k, nxt, end + rng.randint(0, max(0, w - 1))))
        elif prv in statements and abs(it.at_ms - start) <= w:
            movable.append((k, prv, start - 1 - rng.randint(0, max(0, w - 1))))
    n_carry = (
        min(len(movable), max(1, round(anomalies.carried * len(matched))))
        if anomalies.carried > 0
        else 0
    )
    for k, (ch, other), at in movable[:n_carry]:
        near_pairs.remove(k)
        src = line_of[k]
        ln = statements[(src[0], src[1])][src[2]]
        removed.add(src)
        moved.append((k, replace(ln, business_date=other, occurred_at_ms=at)))
        injected[k], intended[k] = "moved_across_cutoff", "carried"
        k2 = (ch, other.isoformat(), ln.key)
        injected[k2], intended[k2] = "moved_across_cutoff", "carried"

    # changed lines: an item on both sides is compared wherever it is in the day
    rest = far_pairs + near_pairs
    rng.shuffle(rest)
    for k in take(rest, anomalies.amount):
        ch, d, i = line_of[k]
        ln = statements[(ch, d)][i]
        delta = rng.randint(1, max(1, min(500, ln.amount // 10)))
        down = ln.amount > delta and rng.random() < 0.5
        statements[(ch, d)][i] = replace(
            ln, amount=ln.amount - delta if down else ln.amount + delta
        )
        injected[k], intended[k] = "changed_amount", "amount_mismatch"
    fee_pool = [k for k in rest if items[k].kind == "payment"]
    for k in take(fee_pool, anomalies.fee):
        rest.remove(k)
        ch, d, i = line_of[k]
        ln = statements[(ch, d)][i]
        fee = ln.fee or 0
        delta = rng.randint(1, max(1, min(100, fee // 5 + 1)))
        fee = fee - delta if fee > delta and rng.random() < 0.5 else fee + delta
        statements[(ch, d)][i] = replace(ln, fee=fee)
        injected[k], intended[k] = "changed_fee", "fee_mismatch"
    for k in take(rest, anomalies.status):
        ch, d, i = line_of[k]
        ln = statements[(ch, d)][i]
        if ln.kind == "payment":
            statements[(ch, d)][i] = replace(ln, kind="refund", coupon_amount=None)
        else:
            statements[(ch, d)][i] = replace(ln, kind="payment", original_txn_id="")
        injected[k], intended[k] = "wrong_kind", "status_mismatch"

    statements = {
        (ch, d): [ln for i, ln in enumerate(lines) if (ch, d, i) not in removed]
        for (ch, d), lines in statements.items()
    }
    for _, ln in moved:
        statements[(ln.channel_id, ln.business_date)].append(ln)

    # extra lines: orders we never had, or hold as failed/closed
    serial = 0
    failed = [
        s
        for s in orders
        if s.known
        and s.type == "payment"
        and s.our_status in ("failed", "closed")
        and not any(e.status in SUCCESS_LIKE for e in s.evidence)
    ]
    rng.shuffle(failed)
    lines_total = sum(len(v) for v in statements.values())
    n_extra = max(1, round(anomalies.extra * lines_total)) if anomalies.extra > 0 else 0
    # the times of a statement's lines far from the cutoffs (extra lines go among them);
    # kept as lines are added, in the order of the lines
    far_times: dict[tuple[str, date], list[int]] = {}
    for j in range(n_extra):
        ch, d = days[j % len(days)]
        lines = statements[(ch, d)]
        start, end = bounds(ch, d)
        times = far_times.get((ch, d))
        if times is None:
            times = far_times[(ch, d)] = [
                ln.occurred_at_ms for ln in lines if far(ch, d, ln.occurred_at_ms)
            ]
        own = [
            s
            for s in failed
            if s.channel_id == ch
            and s.business_date == d.isoformat()
            and far(ch, d, s.created_at_ms or 0)
        ]
        if own and rng.random() < 0.5:
            s = own[0]
            failed.remove(s)
            assert s.currency is not None
            ln = Line(
                channel_id=ch,
                business_date=d,
                txn_id=s.txn_id,
                channel_txn_id=s.evidence[-1].channel_txn_id
                if s.evidence
                else f"{ch[:2].upper()}-{sim.config.id_prefix or ''}F{len(injected):09d}",
                kind="payment",
                status="success",
                currency=s.currency,
                amount=s.amount - s.coupon_amount,
                fee=None if not lines or lines[0].fee is None else s.amount // 200,
                occurred_at_ms=(s.created_at_ms or 0) + rng.randint(300, 3000),
                merchant_ref=s.merchant_id or "",
            )
        else:
            if not times:
                continue
            serial += 1
            tag = sim.config.id_prefix or ""
            cur = lines[0].currency if lines else "CNY"
            amount = rng.randint(100, 100_000)
            ln = Line(
                channel_id=ch,
                business_date=d,
                txn_id=f"{tag}Z{serial:08d}" if rng.random() < 0.5 else "",
                channel_txn_id=f"{ch[:2].upper()}-{tag}X{serial:09d}",
                kind="payment",
                status="success",
                currency=cur,
                amount=amount,
                fee=amount * 6 // 1000,
                occurred_at_ms=rng.choice(times) + rng.randint(1, 999),
                merchant_ref="",
            )
        if not far(ch, d, ln.occurred_at_ms) or not (start <= ln.occurred_at_ms < end):
            continue
        lines.append(ln)
        times.append(ln.occurred_at_ms)
        k = (ch, d.isoformat(), ln.key)
        injected[k], intended[k] = "extra_line", "long"

    statements = {
        k: sorted(v, key=lambda x: (x.occurred_at_ms, x.key)) for k, v in statements.items()
    }
    expected = expected_classes(ledger, statements, policies)
    wrong = {k: (c, expected.get(k)) for k, c in intended.items() if expected.get(k) != c}
    if wrong:
        raise AssertionError(f"injected anomalies not classed as intended: {wrong}")
    counts = Counter(injected.values())
    return SimDay(
        sim=sim,
        policies=policies,
        pipeline=pipe,
        ledger=ledger,
        truthful=truthful,
        statements=statements,
        injected=injected,
        expected=expected,
        counts=dict(sorted(counts.items())),
    )
