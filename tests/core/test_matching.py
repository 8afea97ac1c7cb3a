"""Matching beyond exact ids (issue 10): the pure rules and scoring of
`tally.core.matching`, then every case through the CLI on chDB and clickhouse-server 18.16:
a fee rounded by a cent within a 1-cent tolerance, partial refunds over two days, a
refund total above its payment, a combined line over three orders, a truncated MT940
reference a few minutes off matched by score, a tie left proposed, accept / reject
recorded append-only, a dry run that stores nothing."""

from __future__ import annotations

import json
from decimal import Decimal as D
from typing import Any

from click.testing import CliRunner

from sinks.schema import migrate
from tally.cli import main
from tally.core.eod import classify
from tally.core.matching import (
    Candidate,
    Decision,
    Decisions,
    Group,
    Rules,
    find_links,
    refund_excess,
    score,
    tokens,
)
from tests.clickhouse import connect_to, env_of
from tests.recon.test_run import CTX, DAY, PREV, insert_orders, insert_statement, line, order

T0 = CTX.end_cutoff_ms - 5 * 3600_000  # the time of the helpers' orders and lines
LONG = "PAY20261124000000000042"  # an order id longer than MT940's 16 characters


# ------------------------------------------------------------------ pure


def test_tolerances_absolute_or_basis_points_whichever_is_larger() -> None:
    exact = Rules()
    assert exact.amount_ok(D("100"), D("100")) and not exact.amount_ok(D("100"), D("100.01"))
    cent = Rules(amount_tol=D("0.01"))
    assert cent.amount_ok(D("100"), D("99.99")) and not cent.amount_ok(D("100"), D("99.98"))
    bps = Rules(amount_tol=D("0.01"), amount_bps=10)  # 10 bp of 100.00 = 0.10
    assert bps.amount_ok(D("100"), D("100.10")) and not bps.amount_ok(D("100"), D("100.11"))
    assert bps.amount_ok(D("1"), D("1.01"))  # the absolute tolerance is larger here
    fee = Rules(fee_tol=D("0.01"))
    assert fee.fee_ok(D("0.60"), D("-0.61")) and not fee.fee_ok(D("0.60"), D("0.62"))


def test_score_formula() -> None:
    rules = Rules(window_ms=600_000)
    it = order(LONG, created_at_ms=T0)
    ln = line(1, LONG[:16], occurred_at_ms=T0 + 240_000)
    # amount 40 + time 20 * (600 - 240) / 600 = 12 + reference 40
    assert score(ln, it, rules, tokens(ln)) == 92
    assert score(line(1, "", occurred_at_ms=T0), it, rules, []) == 60  # no reference
    off = line(1, "", amount=D("100.01"), occurred_at_ms=T0)
    assert score(off, it, rules, []) is None  # beyond the (zero) tolerance
    assert score(off, it, Rules(window_ms=600_000, amount_tol=D("0.01")), []) == 50
    late = line(1, "", occurred_at_ms=T0 + 600_001)
    assert score(late, it, rules, []) is None  # outside the window
    usd = line(1, "", currency="USD", occurred_at_ms=T0)
    assert score(usd, it, rules, []) is None


def test_find_links_threshold_tie_and_free_text() -> None:
    rules = Rules(window_ms=600_000)
    a = order("ORDER-AAAA-0001", created_at_ms=T0)
    b = order("ORDER-BBBB-0002", created_at_ms=T0)
    cut = line(1, "ORDER-AAAA", channel_txn_id="", occurred_at_ms=T0)
    links = find_links([cut], [a, b], [], rules)
    assert links[1].method == "scored" and links[1].members == (a.txn_id,)
    assert links[1].score == 100
    tie = line(2, "", channel_txn_id="", occurred_at_ms=T0)
    links = find_links([tie], [a, b], [], rules)
    assert links[2].method == "proposed" and links[2].members == ()
    assert links[2].candidates == (Candidate(a.txn_id, 60), Candidate(b.txn_id, 60))
    text = line(3, "", channel_txn_id="", raw=f":86:/EREF/{b.txn_id}/REMI/goods")
    links = find_links([text], [a, b], [], rules)
    assert (links[3].method, links[3].members) == ("reference", (b.txn_id,))
    # a person's decisions: accepted wins; a rejected candidate is no longer offered
    d = Decisions.of([Decision("line:2", "reject", a.txn_id)])
    assert find_links([tie], [a, b], [], rules, d)[2].candidates == (Candidate(b.txn_id, 60),)
    d = Decisions.of([Decision("line:2", "accept", a.txn_id)])
    assert find_links([tie], [a, b], [], rules, d)[2].method == "accepted"
    # an order goes to one line only; without a window nothing is searched
    two = find_links([cut, line(4, "ORDER-AAAA", channel_txn_id="")], [a], [], rules)
    assert two[1].method == "scored" and two[4].method == "proposed"
    assert find_links([cut], [a, b], [], Rules()) == {}


def test_combined_group_needs_one_line_and_the_sum() -> None:
    ms = tuple(order(t, channel_txn_id="CMB", amount=D(a)) for t, a in (("A", 10), ("B", 20)))
    ln = line(1, "", channel_txn_id="CMB", amount=D("30"))
    rules = Rules(combined=True)
    [link] = find_links([], [], [Group("CMB", ms, (ln,), False)], rules).values()
    assert (link.method, link.members, link.group_amount) == ("combined", ("A", "B"), D(30))
    assert find_links([], [], [Group("CMB", ms, (ln,), True)], rules) == {}  # B is quoted
    assert find_links([], [], [Group("CMB", ms, (ln, ln), False)], rules) == {}
    wrong = line(1, "", channel_txn_id="CMB", amount=D("31"))
    assert find_links([], [], [Group("CMB", ms, (wrong,), False)], rules) == {}


def test_refund_excess_counts_refunds_up_to_the_day() -> None:
    p = order("P", amount=D("100"), business_date=PREV)
    r1 = order("R1", type="refund", amount=D("60"), original_txn_id="P", business_date=PREV)
    r2 = order("R2", type="refund", amount=D("50"), original_txn_id="P")
    known = {o.txn_id: o for o in (p, r1, r2)}
    assert refund_excess(r1, known, PREV) is None
    assert refund_excess(r2, known, DAY) == (D("110"), D("100"))


def test_defaults_are_exact_matching() -> None:
    """Without rules a NONREF line stays long and its order short, as before."""
    rs = classify(CTX, [order("A")], [line(1, "", channel_txn_id="", raw="NONREF")])
    assert {r.item_key: r.cls for r in rs} == {"A": "short", "line:1": "long"}


# ------------------------------------------------------------------- CLI


def _cli(env: dict[str, str], *args: str) -> Any:
    r = CliRunner().invoke(main, list(args), env=env)
    assert r.exit_code == 0, r.output
    return r


def _results(env: dict[str, str], channel: str, day: str = DAY.isoformat()) -> dict[str, Any]:
    r = _cli(env, "recon", "results", "--date", day, "--channel", channel, "--format", "json")
    return {x["item_key"]: x for x in json.loads(r.stdout)}


def test_cli_every_matching_case(storage: dict[str, Any]) -> None:
    db = connect_to(storage)
    migrate(db)
    base = {"cutoff": "23:00", "carry_window_seconds": 180}
    channels = {
        "fee": {**base, "fee_tolerance_minor": 1},
        "ref": {**base, "match_window_seconds": 600},
        "cmb": {**base, "combined_payments": True},
        "rf": base,
    }
    _insert_fee_and_reference_cases(db)
    _insert_combined_and_refund_cases(db)
    db.close()
    env = {**env_of(storage), "TALLY_CHANNELS": json.dumps(channels)}
    day = DAY.isoformat()

    # dry run first: a report, no run stored
    r = _cli(env, "recon", "run", "--date", day, "--channel", "fee", "--dry-run")
    assert "dry run: nothing stored" in r.stdout
    runs = json.loads(_cli(env, "recon", "runs", "--format", "json").stdout)
    assert runs == []

    r = _cli(env, "recon", "run", "--date", day, "--channel", "fee")
    assert (
        "matched within tolerance (CNY): 1 items, amount differences 0.00, fee differences 0.01"
        in r.stdout
    )
    f1 = _results(env, "fee")["F1"]
    assert (f1["class"], f1["match_method"], f1["fee_difference"]) == ("matched", "id", "0.01")

    _check_reference_cases(env, day)
    _check_decisions(env, day, storage)
    _check_combined_and_refund_cases(env, day)


def _insert_fee_and_reference_cases(db: Any) -> None:
    # a fee rounded by a cent
    insert_orders(db, "fee", [order("F1", fee=D("0.60"))])
    insert_statement(db, "fee", DAY, [line(1, "F1", fee=D("0.61"))])
    # a truncated MT940 reference four minutes off; a NONREF line with two equal
    # candidates; an id only in the :86: free text
    insert_orders(
        db,
        "ref",
        [
            order(LONG, created_at_ms=T0, channel_txn_id=""),
            order("TIE-1", amount=D("7"), created_at_ms=T0, channel_txn_id=""),
            order("TIE-2", amount=D("7"), created_at_ms=T0, channel_txn_id=""),
            order("TXT-0000001", amount=D("9"), created_at_ms=T0, channel_txn_id=""),
        ],
    )
    insert_statement(
        db,
        "ref",
        DAY,
        [
            line(1, LONG[:16], channel_txn_id="", occurred_at_ms=T0 + 240_000),
            line(2, "", channel_txn_id="", amount=D("7"), raw="NONREF"),
            line(3, "", channel_txn_id="", amount=D("9"), raw=":86:/EREF/TXT-0000001/"),
        ],
    )


def _insert_combined_and_refund_cases(db: Any) -> None:
    # a combined line over three orders
    insert_orders(
        db,
        "cmb",
        [
            order(t, channel_txn_id="CMB-9", amount=D(a))
            for t, a in (("C1", 10), ("C2", 20), ("C3", 30))
        ],
    )
    insert_statement(
        db, "cmb", DAY, [line(1, "", channel_txn_id="CMB-9", amount=D("60"), fee=D("1.80"))]
    )
    # partial refunds of P over two days; refunds of Q above Q
    refunds = [
        order("P", business_date=PREV),
        order(
            "P-R1", type="refund", amount=D("40"), fee=None, original_txn_id="P", business_date=PREV
        ),
        order("P-R2", type="refund", amount=D("50"), fee=None, original_txn_id="P"),
        order("Q", business_date=PREV),
        order("Q-R1", type="refund", amount=D("60"), fee=None, original_txn_id="Q"),
        order("Q-R2", type="refund", amount=D("50"), fee=None, original_txn_id="Q"),
    ]
    insert_orders(db, "rf", refunds)
    rl = dict(kind="refund", fee=None, channel_txn_id="")
    insert_statement(
        db,
        "rf",
        PREV,
        [line(1, "P", fee=None), line(2, "P-R1", amount=D("40"), **rl), line(3, "Q", fee=None)],
    )
    insert_statement(
        db,
        "rf",
        DAY,
        [
            line(1, "P-R2", amount=D("50"), **rl),
            line(2, "Q-R1", amount=D("60"), **rl),
            line(3, "Q-R2", amount=D("50"), **rl),
        ],
    )


def _check_reference_cases(env: dict[str, str], day: str) -> None:
    doc = json.loads(_cli(env, "recon", "run", "--date", day, "--channel", "ref", "--json").stdout)
    assert doc["runs"][0]["counts"]["proposed"] == 1
    got = _results(env, "ref")
    assert (got[LONG]["class"], got[LONG]["match_method"], got[LONG]["score"]) == (
        "matched",
        "scored",
        92,
    )
    assert (got["TXT-0000001"]["class"], got["TXT-0000001"]["match_method"]) == (
        "matched",
        "reference",
    )
    assert got["line:2"]["class"] == "proposed"
    assert got["line:2"]["detail"] == "proposed: TIE-1 (60), TIE-2 (60)"
    assert got["TIE-1"]["class"] == got["TIE-2"]["class"] == "short"


def _check_decisions(env: dict[str, str], day: str, storage: dict[str, Any]) -> None:
    # accept / reject, append-only; the next run applies them
    r = CliRunner().invoke(
        main, ["recon", "accept", "line:2", "--by", "ann", "--reason", "x"], env=env
    )
    assert r.exit_code == 1 and "name one with --candidate" in r.output
    _cli(
        env,
        "recon",
        "reject",
        "line:2",
        "--candidate",
        "TIE-1",
        "--by",
        "ann",
        "--reason",
        "wrong shop",
    )
    _cli(
        env,
        "recon",
        "accept",
        "line:2",
        "--candidate",
        "TIE-2",
        "--by",
        "bob",
        "--reason",
        "bank ok",
    )
    r = _cli(env, "recon", "run", "--date", day, "--channel", "ref")
    got = _results(env, "ref")
    assert (got["TIE-2"]["class"], got["TIE-2"]["match_method"]) == ("matched", "accepted")
    assert got["TIE-1"]["class"] == "short" and "line:2" not in got
    db = connect_to(storage)
    hist = db.query("SELECT action, txn_id, actor FROM {db}.recon_decisions ORDER BY at_ms, action")
    db.close()
    assert [(h["action"], h["txn_id"], h["actor"]) for h in hist] == [
        ("reject", "TIE-1", "ann"),
        ("accept", "TIE-2", "bob"),
    ]
    r = CliRunner().invoke(
        main, ["recon", "accept", "line:2", "--by", "a", "--reason", "x"], env=env
    )
    assert r.exit_code == 1 and "no proposed item" in r.output


def _check_combined_and_refund_cases(env: dict[str, str], day: str) -> None:
    _cli(env, "recon", "run", "--date", day, "--channel", "cmb")
    got = _results(env, "cmb")
    for t in ("C1", "C2", "C3"):
        assert (got[t]["class"], got[t]["match_method"]) == ("matched", "combined"), got[t]
        assert got[t]["detail"] == "combined line: C1 + C2 + C3"
        assert got[t]["statement_line"] == 1

    _cli(env, "recon", "run", "--date", PREV.isoformat(), "--channel", "rf")
    prev = _results(env, "rf", PREV.isoformat())
    assert prev["P-R1"]["class"] == "matched"
    _cli(env, "recon", "run", "--date", day, "--channel", "rf")
    got = _results(env, "rf")
    assert got["P-R2"]["class"] == "matched"  # 40 + 50 of 100
    assert got["Q-R1"]["class"] == got["Q-R2"]["class"] == "refund_excess"
    assert got["Q-R2"]["detail"] == "refunds of Q exceed the payment"
