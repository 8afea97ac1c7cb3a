"""The simulator's funds side (issue 11, part 6): for the days of a `StatementDay`, the
platform's bank statements (MT940 and camt.053) with the channels' settlement credits
and the merchant payout debits, the payout batch files, the injected anomalies and the
class every item must get (the oracle, by construction, not by running the matcher).

Settlement. Each channel day's net is taken from its statement as delivered (gross =
payments collected, refunds, fees netted or invoiced by the channel's policy); days due
on the same date are one settlement. Every settlement is credited in full on its due
date (`settled`) except the injected ones:

    short_credit      credited less than owed            settlement_short
    missing_credit    never credited                     settlement_missing
    weekend_rollover  a settlement whose due date rolled over a weekend or holiday,
                      its business days in one credit    settled
    unexpected_credit a credit no channel's pattern claims  unexpected_credit

Merchant payouts. For each business date, every merchant with a positive payable is
paid it (value date: the next weekday) in the payout file and as a bank debit with
the payout reference `PO-YYYYMMDD-MERCHANT`; `payout_matched` for all but the injected

    short_payout      one merchant paid less             payout_short

The payable holds back the payments with a real-time break (`held`, by default the
txn ids of the stream's breaks: what `tally settle` holds back once the breaks are
parked, before any end-of-day run parks more).

`run_as_of` is the first date past every grace period, so a missing credit is missing
and nothing is late.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from recon.funds.bank import BankStatement, statement_of, write_camt053, write_mt940
from recon.funds.payouts import Payout, payout_ref, write_payouts
from recon.funds.settlement import (
    DayTotals,
    Expected,
    due_date,
    expected_settlements,
    grace_end,
    reference_pattern,
)
from tally.core.clearing import SettleItem, settlement
from tally.core.messages import order_snapshot
from tally.core.money import to_decimal, to_minor
from tally.core.orders import view
from tally.core.policy import Policies
from tally.sim.day import StatementDay
from tally.sim.statements import last_time

ACCOUNT = "6222021001112223334"
OPENING = Decimal("5000000.00")
UNEXPECTED_TEXT = "INCOMING TRANSFER SUPPLIER REBATE 2026"
SETTLEMENT_CAUSES = ("short_credit", "missing_credit", "weekend_rollover", "unexpected_credit")


_WRITERS = (("mt940", "sta", write_mt940), ("camt053", "xml", write_camt053))


@dataclass
class FundsSim:
    account: str
    expected: list[Expected]
    statements: list[BankStatement]  # one per bank day with entries
    payouts: dict[date, list[Payout]]  # business date -> the payout file
    classes: dict[str, str]  # item key -> the class it must get
    causes: dict[str, str]  # item key -> the anomaly injected on it
    run_as_of: date
    window_days: int
    skipped: dict[str, str] = field(default_factory=dict)  # anomaly -> why not injected

    def write_files(self, directory: str | Path) -> dict[str, Any]:
        """DIR/bank/mt940/bank-<date>.sta, DIR/bank/camt053/bank-<date>.xml (the same
        statements in both formats), DIR/payouts/payouts-<date>.csv and the answer in
        DIR/expected-funds.json."""
        root = Path(directory)
        files: dict[str, list[str]] = {"mt940": [], "camt053": [], "payouts": []}
        for st in self.statements:
            for fmt, ext, write in (
                ("mt940", "sta", write_mt940),
                ("camt053", "xml", write_camt053),
            ):
                name = f"bank/{fmt}/bank-{st.statement_date}.{ext}"
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                (root / name).write_bytes(write(st))
                files[fmt].append(name)
        for d, payouts in sorted(self.payouts.items()):
            name = f"payouts/payouts-{d}.csv"
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(write_payouts(payouts))
            files["payouts"].append(name)
        doc = self.to_json(files)
        root.mkdir(parents=True, exist_ok=True)
        (root / "expected-funds.json").write_text(json.dumps(doc, indent=1) + "\n")
        return doc

    def to_json(self, files: dict[str, list[str]]) -> dict[str, Any]:
        return {
            "account": self.account,
            "files": files,
            "run": {
                "settlements": f"tally recon settlements --date {self.run_as_of} "
                f"--window {self.window_days}",
                "merchants": [f"tally recon merchants --date {d}" for d in sorted(self.payouts)],
            },
            "injected": dict(sorted(self.causes.items())),
            "skipped": self.skipped,
            "items": [
                {"item_key": k, "class": c, "cause": self.causes.get(k, "")}
                for k, c in sorted(self.classes.items())
            ],
        }


def day_totals(day: StatementDay) -> list[DayTotals]:
    """Each channel day's totals from its statement as delivered (the same sums as
    `recon.funds.credits.statement_totals` over the loaded file)."""
    sums: dict[tuple[str, date, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for (ch, d), lines in day.statements.items():
        for ln in lines:
            s = sums[(ch, d, ln.currency)]
            pay = ln.kind == "payment" and ln.status in ("success", "refunded")
            ref = ln.kind == "refund" and ln.status == "success"
            if pay:
                s[0] += ln.amount
            if ref:
                s[1] += ln.amount
            if (pay or ref) and ln.fee is not None:
                s[2] += ln.fee
    return [
        DayTotals(
            ch, d, cur, to_decimal(g, cur), to_decimal(r, cur), to_decimal(f, cur), "statement"
        )
        for (ch, d, cur), (g, r, f) in sorted(sums.items())
    ]


def settle_items(day: StatementDay) -> dict[date, list[SettleItem]]:
    """The confirmed payments and refunds per business date, as `tally settle` reads
    them from `order_states`."""
    out: dict[date, list[SettleItem]] = defaultdict(list)
    for s in day.pipeline.orders.values():
        ch = s.channel_id or (s.evidence[0].channel_id if s.evidence else "")
        snap = order_snapshot(s, view(s, day.policies[ch]), last_time(s))
        if not (
            snap["known"]
            and snap["standing"] == "confirmed"
            and snap["type"] in ("payment", "refund")
            and snap["business_date"]
        ):
            continue
        cur, pay = snap["currency"], snap["type"] == "payment"
        out[date.fromisoformat(snap["business_date"])].append(
            SettleItem(
                txn_id=snap["txn_id"],
                merchant_id=snap["merchant_id"],
                channel_id=ch,
                currency=cur,
                kind=snap["type"],
                amount=to_minor(snap["amount"], cur),
                coupon=to_minor(snap["coupon_amount"] or "0", cur) if pay else 0,
                fee=to_minor(snap["fee"] or "0", cur) if pay else 0,
            )
        )
    return dict(out)


def _next_weekday(d: date) -> date:
    d += timedelta(days=1)
    while d.weekday() >= 5:
        d += timedelta(days=1)
    return d


def _rolled(e: Expected, policies: Policies) -> bool:
    p = policies[e.channel_id]
    return any(
        due_date(b, p) != b + timedelta(days=p.settlement_lag_days) for b in e.business_dates
    )


def simulate_funds(
    day: StatementDay,
    *,
    seed: int = 11,
    account: str = ACCOUNT,
    held: Iterable[str] | None = None,
) -> FundsSim:
    """The bank statements and payout files of the simulated days (module doc)."""
    rng = random.Random(seed)
    policies = day.policies
    totals = day_totals(day)
    if {t.currency for t in totals} - {"CNY"}:
        raise ValueError("the simulated bank account holds CNY only: simulate CNY traffic")
    exp = [e for e in expected_settlements(totals, lambda ch: policies[ch]) if e.amount > 0]
    classes: dict[str, str] = {}
    causes: dict[str, str] = {}
    skipped: dict[str, str] = {}
    pick = _pick_settlements(exp, policies, rng, skipped)
    entries = _credits(exp, pick, policies, account, classes, causes, skipped)
    payouts = _payouts(day, held, rng, classes, causes, skipped)
    for ps in payouts.values():
        for p in ps:
            text = f"PAYOUT TO MERCHANT {p.merchant_id} {p.ref}"
            entries[p.value_date].append(
                ("D", to_decimal(p.amount, p.currency), p.value_date, f"B{p.ref}", text)
            )
    statements, balance = [], OPENING
    for d in sorted(entries):
        st = statement_of(account, d, entries[d], opening=balance)
        balance = st.closing
        statements.append(st)
    last = max((grace_end(e.due_date, policies[e.channel_id]) for e in exp), default=None)
    as_of = (last + timedelta(days=1)) if last else max(entries, default=date.today())
    start = min(entries, default=as_of)
    return FundsSim(
        account=account,
        expected=exp,
        statements=statements,
        payouts=payouts,
        classes=classes,
        causes=causes,
        run_as_of=as_of,
        window_days=max(1, (as_of - start).days),
        skipped=skipped,
    )


def _pick_settlements(
    exp: list[Expected], policies: Policies, rng: random.Random, skipped: dict[str, str]
) -> dict[str, Expected]:
    """The settlement each settlement anomaly is injected on (cause -> settlement)."""
    rolled = [e for e in exp if _rolled(e, policies)]
    plain = [e for e in exp if not _rolled(e, policies)]
    rng.shuffle(rolled)
    rolled.sort(key=lambda e: len(e.business_dates))  # the last: most days in one credit
    rng.shuffle(plain)
    pick: dict[str, Expected] = {}
    if rolled:
        pick["weekend_rollover"] = rolled.pop()
    else:
        skipped["weekend_rollover"] = "no simulated day's settlement rolls over a weekend"
    pool = plain + rolled
    for cause in ("short_credit", "missing_credit"):
        if pool:
            pick[cause] = pool.pop()
        else:
            skipped[cause] = "fewer channel settlements than anomalies"
    return pick


BankEntry = tuple[str, Decimal, date, str, str]  # (C/D, amount, value date, ref, text)


def _credits(
    exp: list[Expected],
    pick: dict[str, Expected],
    policies: Policies,
    account: str,
    classes: dict[str, str],
    causes: dict[str, str],
    skipped: dict[str, str],
) -> dict[date, list[BankEntry]]:
    """The channels' settlement credits per bank date, with the anomalies picked, and
    one credit that no channel claims."""
    by_key = {e.key: c for c, e in pick.items()}
    entries: dict[date, list[BankEntry]] = defaultdict(list)
    patterns = {ch: reference_pattern(ch, policies[ch]) for ch in {e.channel_id for e in exp}}
    for i, e in enumerate(sorted(exp, key=lambda e: e.key), start=1):
        cause = by_key.get(e.key, "")
        text = f"{e.channel_id.upper()} SETTLEMENT " + "/".join(
            f"{b:%Y%m%d}" for b in e.business_dates
        )
        if not patterns[e.channel_id].search(text):
            raise ValueError(
                f"{e.channel_id}'s settlement_reference does not match {text!r}: the "
                "simulator writes the channel id in upper case"
            )
        if cause:
            causes[e.key] = cause
        if cause == "missing_credit":
            classes[e.key] = "settlement_missing"
            continue
        amount = e.amount
        if cause == "short_credit":
            cut = min(Decimal("12.34"), (amount / 2).quantize(Decimal("0.01")))
            amount -= max(cut, Decimal("0.01"))
            classes[e.key] = "settlement_short"
        else:
            classes[e.key] = "settled"
        entries[e.due_date].append(("C", amount, e.due_date, f"S{i:05d}", text))
    if exp:
        first = min(e.due_date for e in exp)
        if any(p.search(UNEXPECTED_TEXT) for p in patterns.values()):
            skipped["unexpected_credit"] = "a channel's reference pattern claims the text"
        else:
            entries[first].append(("C", Decimal("777.00"), first, "X00001", UNEXPECTED_TEXT))
            key = f"credit:{account}:X00001"
            classes[key], causes[key] = "unexpected_credit", "unexpected_credit"
    else:
        skipped["unexpected_credit"] = "no settlement in the simulated days"
    return entries


def _payouts(
    day: StatementDay,
    held: Iterable[str] | None,
    rng: random.Random,
    classes: dict[str, str],
    causes: dict[str, str],
    skipped: dict[str, str],
) -> dict[date, list[Payout]]:
    held_ids = set(held) if held is not None else {b.txn_id for b in day.pipeline.breaks.values()}
    out: dict[date, list[Payout]] = {}
    owed: list[tuple[date, str, str]] = []
    rows_of: dict[date, list[Any]] = {}
    for d, items in sorted(settle_items(day).items()):
        rows_of[d] = settlement(items, held_ids)
        owed += [(d, m.merchant_id, m.currency) for m in rows_of[d] if m.payable > 100]
    short = rng.choice(sorted(owed)) if owed else None
    if short is None:
        skipped["short_payout"] = "no merchant is owed anything"
    for d, rows in rows_of.items():
        ps = []
        for m in rows:
            key = f"po:{m.merchant_id}:{m.currency}:{d.isoformat()}"
            classes[key] = "payout_matched"
            if m.payable <= 0:
                continue
            amount = m.payable
            if (d, m.merchant_id, m.currency) == short:
                amount -= min(1234, m.payable // 2)
                classes[key], causes[key] = "payout_short", "short_payout"
            value = _next_weekday(d)
            ps.append(
                Payout(m.merchant_id, m.currency, amount, value, payout_ref(d, m.merchant_id))
            )
        out[d] = ps
    return out
