"""A simulated business day with its channel statements and the reconciliation's
answer, pure: `simulate_statements(sim_config, policies, anomalies)`

1. generates the day's traffic (`tally.sim.traffic.generate`) and runs the pure stream
   topology over it (`tally.core.pipeline.LocalPipeline`): the order states, breaks,
   postings and balances the stream would store in ClickHouse;
2. derives each channel's truthful statement for each business day
   (`tally.sim.statements.truthful_lines`);
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
4. records the oracle: the expected class of every item of every (channel, day)
   (`StatementDay.expected`, by `tally.sim.statements.expected_classes`); every
   injected item's derived class is checked against the class its injection was
   meant to cause when the day is built.

Formats that do not state a fee per line turn a changed fee into `matched`:
`StatementDay.expected_for(fee_stated=False)` gives the oracle for those.
`recon.simday.SimDay` is the same day with its statement files and its ClickHouse rows.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from typing import Any

from tally.core.eod import EodClass
from tally.core.events import iso_ms
from tally.core.orders import SUCCESS_LIKE, OrderState
from tally.core.pipeline import LocalPipeline
from tally.core.policy import Policies
from tally.sim.config import SimConfig, Simulation
from tally.sim.statements import (
    CLASSES,
    Key,
    LedgerItem,
    Line,
    StatementAnomalies,
    expected_classes,
    ledger_items,
    truthful_lines,
)
from tally.sim.traffic import generate

__all__ = ["StatementDay", "simulate_statements"]


@dataclass
class StatementDay:
    """The simulated day: the stream's result, the statements and the oracle."""

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
        return {x for x in self.expected_set(fee_stated) if x[3] != EodClass.MATCHED}

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


def _cutoffs(policies: Policies, ch: str, d: date) -> tuple[int, int]:
    pol = policies[ch]
    return pol.cutoff_ms(d - timedelta(days=1)), pol.cutoff_ms(d)


def simulate_statements(
    config: SimConfig,
    policies: Policies | None = None,
    anomalies: StatementAnomalies | None = None,
    partitions: int = 4,
    sim: Simulation | None = None,
    *,
    clock: Callable[[], int],
) -> StatementDay:
    """Simulate, run the stream in memory, write truthful statements, inject anomalies,
    record the oracle (see the module docstring). `sim`: the traffic of `config`
    already generated (`generate(config, policies)`), so as not to generate it twice.
    `clock`: the wall clock (epoch ms) the pipeline stamps dead letters with."""
    policies = policies or Policies()
    anomalies = anomalies or StatementAnomalies(seed=config.seed)
    sim = generate(config, policies) if sim is None else sim
    pipe = LocalPipeline(
        policies=policies,
        partitions=partitions,
        allowed_lateness_ms=config.allowed_lateness_ms,
        clock=clock,
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
    inj = _Injector(ledger, truthful, policies, anomalies)
    inj.missing()
    inj.carried()
    inj.changed()
    inj.apply_moves()
    inj.extra(orders, sim.config.id_prefix or "")
    statements = {
        k: sorted(v, key=lambda x: (x.occurred_at_ms, x.key)) for k, v in inj.statements.items()
    }
    expected = expected_classes(ledger, statements, policies)
    wrong = {k: (c, expected.get(k)) for k, c in inj.intended.items() if expected.get(k) != c}
    if wrong:
        raise AssertionError(f"injected anomalies not classed as intended: {wrong}")
    counts = Counter(inj.injected.values())
    return StatementDay(
        sim=sim,
        policies=policies,
        pipeline=pipe,
        ledger=ledger,
        truthful=truthful,
        statements=statements,
        injected=inj.injected,
        expected=expected,
        counts=dict(sorted(counts.items())),
    )


class _Injector:
    """Statement-side anomalies on the truthful statements, each on a distinct item
    that they match, in one seeded order: missing, carried, changed, extra lines."""

    def __init__(
        self,
        ledger: list[LedgerItem],
        truthful: dict[tuple[str, date], list[Line]],
        policies: Policies,
        anomalies: StatementAnomalies,
    ) -> None:
        self.ledger = ledger
        self.policies = policies
        self.anomalies = anomalies
        self.rng = random.Random(anomalies.seed)
        self.statements = {k: list(v) for k, v in truthful.items()}
        self.injected: dict[Key, str] = {}
        self.intended: dict[Key, str] = {}
        self.items = {(it.channel_id, it.business_date.isoformat(), it.txn_id): it for it in ledger}
        self.line_of = {
            (ch, d.isoformat(), ln.txn_id): (ch, d, i)
            for (ch, d), lines in truthful.items()
            for i, ln in enumerate(lines)
            if ln.txn_id
        }
        self.days = sorted(self.statements)
        self._cutoffs: dict[tuple[str, date], tuple[int, int]] = {}
        self.removed: set[tuple[str, date, int]] = set()
        self.moved: list[tuple[Key, Line]] = []
        # matched pairs: the candidates
        base = expected_classes(ledger, truthful, policies)
        matched = sorted(
            k
            for k, c in base.items()
            if c == EodClass.MATCHED and k in self.items and k in self.line_of
        )
        self.rng.shuffle(matched)
        self.n_matched = len(matched)
        self.far_pairs: list[Key] = []
        self.near_pairs: list[Key] = []
        for k in matched:
            ch, d, i = self.line_of[k]
            ln = self.statements[(ch, d)][i]
            if self.far(ch, d, self.items[k].at_ms, ln.occurred_at_ms):
                self.far_pairs.append(k)
            else:
                self.near_pairs.append(k)

    def bounds(self, ch: str, d: date) -> tuple[int, int]:
        b = self._cutoffs.get((ch, d))
        if b is None:
            b = self._cutoffs[(ch, d)] = _cutoffs(self.policies, ch, d)
        return b

    def far(self, ch: str, d: date, *times: int) -> bool:
        start, end = self.bounds(ch, d)
        w = self.policies[ch].carry_window_seconds * 1000
        return all(abs(t - start) > w and abs(t - end) > w for t in times)

    def take(self, pool: list[Key], rate: float) -> list[Key]:
        n = min(len(pool), max(1, round(rate * self.n_matched))) if rate > 0 else 0
        out, pool[:] = pool[:n], pool[n:]
        return out

    def inject(self, k: Key, cause: str, cls: str) -> None:
        self.injected[k], self.intended[k] = cause, cls

    def missing(self) -> None:
        """A missing line must be far from the cutoffs (else it may be carried)."""
        for k in self.take(self.far_pairs, self.anomalies.missing):
            self.removed.add(self.line_of[k])
            self.inject(k, "missing_line", EodClass.SHORT)

    def carried(self) -> None:
        """Lines of items near the cutoff between two simulated days move across it."""
        rng, statements = self.rng, self.statements
        movable = []
        # a channel txn id on two orders (e.g. a retried sale, S1) would pair the moved
        # line with the other order on the neighbouring day: such items stay in place
        ctids = Counter(it.channel_txn_id for it in self.ledger if it.channel_txn_id)
        for k in self.near_pairs:
            if ctids[self.items[k].channel_txn_id] > 1:
                continue
            ch, d, i = self.line_of[k]
            it, ln = self.items[k], statements[(ch, d)][i]
            w = self.policies[ch].carry_window_seconds * 1000
            start, end = _cutoffs(self.policies, ch, d)
            nxt, prv = (ch, d + timedelta(days=1)), (ch, d - timedelta(days=1))
            if nxt in statements and abs(it.at_ms - end) <= w and abs(ln.occurred_at_ms - end) <= w:
                movable.append((k, nxt, end + rng.randint(0, max(0, w - 1))))
            elif prv in statements and abs(it.at_ms - start) <= w:
                movable.append((k, prv, start - 1 - rng.randint(0, max(0, w - 1))))
        rate = self.anomalies.carried
        n_carry = min(len(movable), max(1, round(rate * self.n_matched))) if rate > 0 else 0
        for k, (ch, other), at in movable[:n_carry]:
            self.near_pairs.remove(k)
            src = self.line_of[k]
            ln = statements[(src[0], src[1])][src[2]]
            self.removed.add(src)
            self.moved.append((k, replace(ln, business_date=other, occurred_at_ms=at)))
            self.inject(k, "moved_across_cutoff", EodClass.CARRIED)
            self.inject((ch, other.isoformat(), ln.key), "moved_across_cutoff", EodClass.CARRIED)

    def changed(self) -> None:
        """Changed lines: an item on both sides is compared wherever it is in the day."""
        rng, statements, a = self.rng, self.statements, self.anomalies
        rest = self.far_pairs + self.near_pairs
        rng.shuffle(rest)
        for k in self.take(rest, a.amount):
            ch, d, i = self.line_of[k]
            ln = statements[(ch, d)][i]
            delta = rng.randint(1, max(1, min(500, ln.amount // 10)))
            down = ln.amount > delta and rng.random() < 0.5
            statements[(ch, d)][i] = replace(
                ln, amount=ln.amount - delta if down else ln.amount + delta
            )
            self.inject(k, "changed_amount", EodClass.AMOUNT_MISMATCH)
        fee_pool = [k for k in rest if self.items[k].kind == "payment"]
        for k in self.take(fee_pool, a.fee):
            rest.remove(k)
            ch, d, i = self.line_of[k]
            ln = statements[(ch, d)][i]
            fee = ln.fee or 0
            delta = rng.randint(1, max(1, min(100, fee // 5 + 1)))
            fee = fee - delta if fee > delta and rng.random() < 0.5 else fee + delta
            statements[(ch, d)][i] = replace(ln, fee=fee)
            self.inject(k, "changed_fee", EodClass.FEE_MISMATCH)
        for k in self.take(rest, a.status):
            ch, d, i = self.line_of[k]
            ln = statements[(ch, d)][i]
            if ln.kind == "payment":
                statements[(ch, d)][i] = replace(ln, kind="refund", coupon_amount=None)
            else:
                statements[(ch, d)][i] = replace(ln, kind="payment", original_txn_id="")
            self.inject(k, "wrong_kind", EodClass.STATUS_MISMATCH)

    def apply_moves(self) -> None:
        """Drop the removed lines, add the moved ones on their new day."""
        self.statements = {
            (ch, d): [ln for i, ln in enumerate(lines) if (ch, d, i) not in self.removed]
            for (ch, d), lines in self.statements.items()
        }
        for _, ln in self.moved:
            self.statements[(ln.channel_id, ln.business_date)].append(ln)

    def extra(self, orders: list[OrderState], tag: str) -> None:
        """Extra lines: orders we never had, or hold as failed/closed."""
        rng = self.rng
        failed = [
            s
            for s in orders
            if s.known
            and s.type == "payment"
            and s.our_status in ("failed", "closed")
            and not any(e.status in SUCCESS_LIKE for e in s.evidence)
        ]
        rng.shuffle(failed)
        lines_total = sum(len(v) for v in self.statements.values())
        rate = self.anomalies.extra
        n_extra = max(1, round(rate * lines_total)) if rate > 0 else 0
        # the times of a statement's lines far from the cutoffs (extra lines go among them);
        # kept as lines are added, in the order of the lines
        far_times: dict[tuple[str, date], list[int]] = {}
        serial = 0
        for j in range(n_extra):
            ch, d = self.days[j % len(self.days)]
            lines = self.statements[(ch, d)]
            start, end = self.bounds(ch, d)
            times = far_times.get((ch, d))
            if times is None:
                times = far_times[(ch, d)] = [
                    ln.occurred_at_ms for ln in lines if self.far(ch, d, ln.occurred_at_ms)
                ]
            own = [
                s
                for s in failed
                if s.channel_id == ch
                and s.business_date == d.isoformat()
                and self.far(ch, d, s.created_at_ms or 0)
            ]
            if own and rng.random() < 0.5:
                failed.remove(own[0])
                ln = self._failed_line(own[0], ch, d, lines, tag)
            else:
                if not times:
                    continue
                serial += 1
                ln = self._invented_line(ch, d, lines, times, serial, tag)
            if not self.far(ch, d, ln.occurred_at_ms) or not (start <= ln.occurred_at_ms < end):
                continue
            lines.append(ln)
            times.append(ln.occurred_at_ms)
            self.inject((ch, d.isoformat(), ln.key), "extra_line", EodClass.LONG)

    def _failed_line(self, s: OrderState, ch: str, d: date, lines: list[Line], tag: str) -> Line:
        """A success line for an order we hold as failed or closed."""
        assert s.currency is not None
        return Line(
            channel_id=ch,
            business_date=d,
            txn_id=s.txn_id,
            channel_txn_id=s.evidence[-1].channel_txn_id
            if s.evidence
            else f"{ch[:2].upper()}-{tag}F{len(self.injected):09d}",
            kind="payment",
            status="success",
            currency=s.currency,
            amount=s.amount - s.coupon_amount,
            fee=None if not lines or lines[0].fee is None else s.amount // 200,
            occurred_at_ms=(s.created_at_ms or 0) + self.rng.randint(300, 3000),
            merchant_ref=s.merchant_id or "",
        )

    def _invented_line(
        self, ch: str, d: date, lines: list[Line], times: list[int], serial: int, tag: str
    ) -> Line:
        """A success line for an order we never had, among the day's far lines."""
        rng = self.rng
        cur = lines[0].currency if lines else "CNY"
        amount = rng.randint(100, 100_000)
        return Line(
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
