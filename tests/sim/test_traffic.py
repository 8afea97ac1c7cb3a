"""The traffic simulator against the in-memory pipeline: the simulator's oracle
(`Simulation.expected`) must equal the breaks the pipeline raises, exactly."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from datetime import UTC, datetime, time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tally.core.breaks import BreakKind
from tally.core.events import parse_timestamp
from tally.core.pipeline import CALLBACKS, TRANSACTIONS, Envelope, LocalPipeline
from tally.core.policy import ChannelPolicy, Mode, Policies
from tally.sim.traffic import (
    ANOMALIES,
    MALFORMED_VARIANTS,
    SimConfig,
    Simulation,
    generate,
    live_stream,
    read_jsonl,
    write_jsonl,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
START = datetime(2026, 3, 14, 23, 58, 0, tzinfo=SHANGHAI)  # fixed: runs do not depend on today
LATE = datetime(2026, 3, 14, 23, 59, 15, tzinfo=SHANGHAI)  # short streams still cross midnight

MIXED = Policies(
    {
        "unionpay": ChannelPolicy(cutoff=time(23, 0), query_before_final_success=True),
        "alipay": ChannelPolicy(
            mode=Mode.OPTIMISTIC, sla_seconds=20, max_queries=2, query_interval_seconds=10
        ),
        "wechat": ChannelPolicy(
            query_before_final_success=True, mode=Mode.OPTIMISTIC, orphan_grace_seconds=5
        ),
        "icbc": ChannelPolicy(
            timezone="Europe/London",
            cutoff=time(16, 0),
            sla_seconds=12,
            query_interval_seconds=5,
            max_queries=4,
            orphan_grace_seconds=0,
        ),
    }
)
TIGHT = Policies(
    default=ChannelPolicy(
        sla_seconds=5,
        query_interval_seconds=3,
        max_queries=1,
        orphan_grace_seconds=2,
        refund_sla_seconds=60,
    )
)


def run(sim: Simulation, policies: Policies, partitions: int = 4, **kw: int) -> LocalPipeline:
    p = LocalPipeline(policies, partitions=partitions, clock=lambda: 0, **kw)
    p.feed_all(sim.envelopes)
    return p


def assert_exact(p: LocalPipeline, sim: Simulation) -> None:
    """Precision and recall 1.0; on failure, say which breaks differ and why."""
    got = p.break_set()
    missing = sorted(sim.expected - got)
    extra = sorted(got - sim.expected)
    if missing or extra:
        lines = [f"expected {sim.expected_by_kind()}", f"got      {p.breaks_by_kind()}"]
        lines += [f"  missing {k} {t}" for k, t in missing[:20]]
        for b in sorted(p.breaks.values(), key=lambda b: (b.kind, b.txn_id)):
            if (b.kind, b.txn_id) in extra[:20]:
                lines.append(f"  extra   {b.kind} {b.txn_id}: {b.detail}")
        pytest.fail("\n".join(lines))
    assert len(p.dead_letters) == sim.malformed
    assert p.duplicates == sim.duplicates
    p.book.check()


def balances(p: LocalPipeline) -> dict[str, dict[str, int]]:
    return {k: {c: v for c, v in b.amounts.items() if v} for k, b in p.book.balances.items()}


# ---------------------------------------------------------------- 100k default


@pytest.fixture(scope="module")
def default_run() -> tuple[Simulation, LocalPipeline]:
    sim = generate(SimConfig(events=100_000, seed=0, start=START), Policies())
    return sim, run(sim, Policies())


def test_default_100k_exact(default_run: tuple[Simulation, LocalPipeline]) -> None:
    sim, p = default_run
    assert len(sim.envelopes) == 100_000
    assert_exact(p, sim)


def test_default_rates_produce_every_break_kind(
    default_run: tuple[Simulation, LocalPipeline],
) -> None:
    sim, p = default_run
    by_kind = sim.expected_by_kind()
    assert set(by_kind) == {k.value for k in BreakKind}
    assert min(by_kind.values()) >= 20, by_kind  # dozens of each
    for anomaly in ANOMALIES:
        assert sim.counts[anomaly] >= 20, (anomaly, sim.counts)
    # every malformed code, and each dead letter's code as injected
    codes = Counter(d.code for d in p.dead_letters)
    assert codes == {
        k.split(":", 1)[1]: v for k, v in sim.counts.items() if k.startswith("malformed:")
    }
    assert set(codes) == {code for _, code in MALFORMED_VARIANTS}


def test_default_stream_crosses_midnight_cutoff(
    default_run: tuple[Simulation, LocalPipeline],
) -> None:
    sim, p = default_run
    midnight = int(datetime(2026, 3, 15, tzinfo=SHANGHAI).timestamp() * 1000)
    assert sim.start_ms < midnight < sim.end_ms
    dates = {s.business_date for s in p.orders.values() if s.business_date}
    assert dates == {"2026-03-14", "2026-03-15"}
    assert sim.counts["compressed_before_cutoff"] > 0  # ordinary orders kept their day


def test_default_ordinary_traffic_is_realistic(
    default_run: tuple[Simulation, LocalPipeline],
) -> None:
    sim, p = default_run
    for kind in ("coupon", "refund", "reversal", "reversal_resent", "query_resolved", "async"):
        assert sim.counts[kind] > 20, kind
    values = [e.value for e in sim.envelopes if isinstance(e.value, dict)]
    txns = [v for v in values if "type" in v]
    cbs = [v for v in values if "source" in v]
    assert {v["currency"] for v in txns} == {"CNY", "USD", "HKD", "JPY"}
    assert all("." not in v["amount"] for v in txns if v["currency"] == "JPY")
    assert {v["type"] for v in txns} == {"payment", "refund", "reversal"}
    assert {v["source"] for v in cbs} == {"sync", "notify", "query"}
    assert all(v["terminal_id"] for v in txns if v["channel_id"] == "unionpay")
    assert all(v["original_txn_id"] for v in txns if v["type"] != "payment")
    # S11: a coupon order's channel evidence is the amount less the coupon
    coupon = next(v for v in txns if "coupon_amount" in v and v["txn_id"] not in _flagged(sim))
    evidence = [v for v in cbs if v["txn_id"] == coupon["txn_id"]]
    assert evidence
    order = p.orders[coupon["txn_id"]]
    assert {e.amount for e in order.evidence} == {order.amount - order.coupon_amount}
    # fees only on success evidence
    assert all(v["fee"] is None for v in cbs if v["status"] in ("failed", "pending"))
    # the stream runs in event time; only deliberately late deliveries lag (< 15 s)
    latest, lags = 0, 0
    for v in values:
        at = parse_timestamp(v["occurred_at"], "occurred_at")
        if at < latest:
            lags += 1
            assert latest - at < 15_000
        latest = max(latest, at)
    assert lags < len(values) * 0.05


def _flagged(sim: Simulation) -> set[str]:
    return {t for _, t in sim.expected}


def test_shared_channel_txn_break_is_on_the_second_order(
    default_run: tuple[Simulation, LocalPipeline],
) -> None:
    sim, p = default_run
    first_success: dict[tuple[str, str], str] = {}
    for e in sim.envelopes:
        v = e.value
        if isinstance(v, dict) and e.topic == CALLBACKS and v["status"] == "success":
            first_success.setdefault((v["channel_id"], v["channel_txn_id"]), v["txn_id"])
    # the cross-order break (one channel_txn_id, two orders) carries no order amount
    shared = [b for b in p.breaks.values() if b.kind == "duplicate_success" and b.amount is None]
    assert len(shared) == sim.counts["shared_channel_txn"]
    for b in shared:
        first = b.evidence[0]["txn_id"]
        assert b.txn_id != first
        assert first in first_success.values()
        assert ("duplicate_success", b.txn_id) in sim.expected


# --------------------------------------------------------- seeds and policies


@pytest.mark.parametrize(
    ("seed", "events", "ops", "policies", "partitions", "start"),
    [
        (1, 15_000, 40, Policies(), 4, LATE),
        (2, 12_000, 10, MIXED, 4, datetime(2026, 3, 14, 22, 57, 30, tzinfo=SHANGHAI)),
        (3, 12_000, 40, MIXED, 16, LATE),
        (4, 10_000, 20, TIGHT, 1, LATE),
    ],
    ids=["default-policy", "mixed-unionpay-23h", "mixed-16-partitions", "tight-sla"],
)
def test_exact_for_seeds_and_policies(
    seed: int, events: int, ops: int, policies: Policies, partitions: int, start: datetime
) -> None:
    sim = generate(
        SimConfig(events=events, seed=seed, orders_per_second=ops, start=start), policies
    )
    p = run(sim, policies, partitions)
    assert_exact(p, sim)
    assert {"status_conflict", "amount_mismatch", "late_callback"} <= set(sim.expected_by_kind())
    # every ordinary order is resolved: idling a day raises nothing more
    before = p.break_set()
    p.tick(86_400_000)
    assert p.break_set() == before


def test_ordinary_traffic_raises_no_break() -> None:
    cfg = SimConfig(
        events=8000,
        seed=5,
        start=LATE,
        rates=dict.fromkeys(ANOMALIES, 0.0),
        malformed_rate=0,
    )
    for policies in (Policies(), MIXED, TIGHT):
        sim = generate(cfg, policies)
        assert sim.expected == set() and sim.malformed == 0
        p = run(sim, policies)
        p.tick(86_400_000)
        assert p.breaks_by_kind() == {}
        assert p.dead_letters == []
        p.book.check()


def test_timed_anomalies_fire_without_a_tick() -> None:
    sim = generate(
        SimConfig(
            events=10_000,
            seed=6,
            start=START,
            orders_per_second=10,  # ~4 minutes of event time: room for 75 s timeouts
            rates={"pending_timeout": 0.03, "orphan_callback": 0.03},
        )
    )
    p = run(sim, Policies())
    assert_exact(p, sim)
    assert sim.expected_by_kind()["pending_timeout"] >= 20
    assert sim.expected_by_kind()["orphan_callback"] >= 20


# -------------------------------------------------------------- determinism


def test_deterministic_for_a_seed() -> None:
    cfg = SimConfig(events=5000, seed=42, start=START)
    a, b = generate(cfg), generate(cfg)
    assert [e.to_line() for e in a.envelopes] == [e.to_line() for e in b.envelopes]
    assert a.expected == b.expected
    assert a.counts == b.counts
    c = generate(SimConfig(events=5000, seed=43, start=START))
    assert [e.to_line() for e in c.envelopes] != [e.to_line() for e in a.envelopes]


def test_default_start_is_yesterday_late_and_resolved_once() -> None:
    cfg = SimConfig(events=100_000)
    assert cfg.start is not None
    local = cfg.start.astimezone(SHANGHAI)
    assert local.hour == 23 and local.minute >= 40
    assert generate(SimConfig(events=2000, seed=1, start=cfg.start)).start_ms == int(
        cfg.start.timestamp() * 1000
    )


# -------------------------------------------------- idempotence, re-delivery


@pytest.fixture(scope="module")
def small() -> Simulation:
    return generate(SimConfig(events=8000, seed=7, start=LATE))


def test_feeding_everything_twice_changes_nothing(small: Simulation) -> None:
    once = run(small, Policies())
    twice = LocalPipeline(Policies(), partitions=4, clock=lambda: 0)
    twice.feed_all(small.envelopes)
    twice.feed_all(small.envelopes)
    each_twice = LocalPipeline(Policies(), partitions=4, clock=lambda: 0)
    for e in small.envelopes:
        each_twice.feed_envelope(e)
        each_twice.feed_envelope(e)
    for p in (twice, each_twice):
        assert p.break_set() == once.break_set() == small.expected
        assert balances(p) == balances(once)
        assert len(p.postings) == len(once.postings)
        assert len(p.dead_letters) == 2 * small.malformed
        p.book.check()


def test_duplicate_deliveries_are_identical_messages(small: Simulation) -> None:
    lines = Counter(e.to_line() for e in small.envelopes if isinstance(e.value, dict))
    assert sum(n - 1 for n in lines.values()) == small.duplicates > 0


# ------------------------------------------------------------------ JSONL


def test_jsonl_round_trip(small: Simulation, tmp_path: Path) -> None:
    path = tmp_path / "sim.jsonl"
    assert write_jsonl(small, path) == len(small.envelopes)
    back = list(read_jsonl(path))
    assert len(back) == len(small.envelopes)
    for a, b in zip(small.envelopes, back, strict=True):
        assert (b.topic, b.key) == (a.topic, a.key)
        assert b.value == a.value  # raw bytes too, exactly (value_b64)
    p = LocalPipeline(Policies(), partitions=4, clock=lambda: 0)
    p.feed_all(back)
    assert_exact(p, small)


def test_read_jsonl_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    good = Envelope(TRANSACTIONS, "k", {"a": 1}).to_line()
    path.write_text(f"{good}\n\n{good}\n{{not json\n", encoding="utf-8")
    it = read_jsonl(path)
    assert next(it).value == {"a": 1}
    assert next(it).key == "k"
    with pytest.raises(ValueError, match="line 4"):
        next(it)


# --------------------------------------------------------------- malformed


def test_malformed_size_limit_follows_the_pipeline() -> None:
    mib = 1024 * 1024
    sim = generate(
        SimConfig(events=4000, seed=8, start=START, malformed_rate=0.02, max_message_bytes=mib)
    )
    big = [e for e in sim.envelopes if len(e.value_bytes()) > 64 * 1024]
    assert big and all(len(e.value_bytes()) > mib for e in big)
    p = run(sim, Policies(), max_message_bytes=mib)
    assert_exact(p, sim)
    too_large = [d for d in p.dead_letters if d.code == "too_large"]
    assert len(too_large) == len(big)
    assert all(d.value_size > mib for d in too_large)


def test_malformed_values_are_raw_and_every_variant_is_used() -> None:
    sim = generate(SimConfig(events=8000, seed=9, start=START, malformed_rate=0.01))
    raw = [e for e in sim.envelopes if not isinstance(e.value, dict)]
    assert len(raw) == sim.malformed == 80
    assert any(isinstance(e.value, bytes) for e in raw)
    assert any(e.key is None for e in raw)
    # amounts never travel as JSON numbers in well-formed messages
    for e in sim.envelopes:
        if isinstance(e.value, dict):
            assert isinstance(e.value["amount"], str)
    codes = Counter(k for k in sim.counts if k.startswith("malformed:"))
    assert len(codes) == len({c for _, c in MALFORMED_VARIANTS})
    p = run(sim, Policies())
    assert {d.topic for d in p.dead_letters} == {TRANSACTIONS, CALLBACKS}
    assert_exact(p, sim)


# ------------------------------------------------------------------ config


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="unknown anomalies"):
        SimConfig(rates={"chargeback": 0.1})
    with pytest.raises(ValueError, match="timezone-aware"):
        SimConfig(start=datetime(2026, 3, 14, 23, 40))
    with pytest.raises(ValueError, match="more than 1"):
        SimConfig(failed_rate=0.9, refund_rate=0.2)
    with pytest.raises(ValueError, match="currency"):
        SimConfig(currencies={"RMB": 1})
    cfg = SimConfig(rates={"pending_timeout": 0.01})
    assert cfg.rates["pending_timeout"] == 0.01
    assert cfg.rates["status_conflict"] > 0  # partial dicts merge with the defaults


def test_currency_mismatches_only_on_the_channels_named() -> None:
    """`tally demo`: currency mismatches on WeChat only (Alipay's bill, MT940 and
    camt.053 hold one currency); the pipeline finds exactly what was injected."""
    with pytest.raises(ValueError, match="currency_mismatch_channels"):
        SimConfig(currency_mismatch_channels=["paypal"])
    cfg = SimConfig(
        events=20_000,
        seed=2,
        start=LATE,
        currencies={"CNY": 1},
        rates={"currency_mismatch": 0.01},
        currency_mismatch_channels=["wechat"],
    )
    sim = generate(cfg, Policies())
    channel = {
        e.value["txn_id"]: e.value["channel_id"]
        for e in sim.envelopes
        if e.topic == TRANSACTIONS and isinstance(e.value, dict) and "channel_id" in e.value
    }
    mismatched = {t for k, t in sim.expected if k == "currency_mismatch"}
    assert len(mismatched) > 20
    assert {channel[t] for t in mismatched} == {"wechat"}
    assert_exact(run(sim, Policies()), sim)


def test_envelope_keys_are_txn_ids(small: Simulation) -> None:
    for e in small.envelopes:
        if isinstance(e.value, dict):
            assert e.key == e.value["txn_id"]
            assert e.topic == (TRANSACTIONS if "type" in e.value else CALLBACKS)
            json.dumps(e.value)  # JSON-ready, no floats or datetimes
            assert not any(isinstance(v, float) for v in e.value.values())


# --------------------------------------------------------------------- live


def test_live_stream_keeps_pace_and_raises_only_expected_breaks() -> None:
    start = datetime(2026, 3, 14, 15, 55, tzinfo=UTC)  # 23:55 in Shanghai
    stream = live_stream(60, Policies(), seed=3, start=start)
    envelopes = list(itertools.islice(stream, 30_000))
    p = LocalPipeline(Policies(), partitions=4, clock=lambda: 0)
    p.feed_all(envelopes)
    first: dict[str, int] = {}
    for e in envelopes:
        if isinstance(e.value, dict) and e.key is not None:
            first.setdefault(e.key, parse_timestamp(e.value["occurred_at"], "occurred_at"))
    last = max(first.values())
    span_s = (last - int(start.timestamp() * 1000)) / 1000
    assert 450 < span_s < 550  # 30,000 messages at 60/s: event time follows the clock
    got = p.break_set()
    assert got <= stream.expected  # no false break, even though the stream is cut anywhere
    settled = {x for x in stream.expected if x[1] in first and first[x[1]] <= last - 200_000}
    assert settled <= got
    assert {k for k, _ in settled} == {k.value for k in BreakKind}
    assert len(p.dead_letters) == sum(not isinstance(e.value, dict) for e in envelopes) > 0
    assert p.duplicates > 0
    prefix = f"L{int(start.timestamp()):x}-"  # ids unique per run: no clash with earlier runs
    values = [e.value for e in envelopes if isinstance(e.value, dict)]
    assert all(v["txn_id"].startswith(prefix) for v in values)
    callbacks = [v for v in values if "source" in v]
    assert all(prefix in v["channel_txn_id"] for v in callbacks)
    p.book.check()
