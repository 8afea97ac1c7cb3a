"""The suspense rules (tally/core/suspense.py), without ClickHouse: one entry per item,
what a sighting changes, the state from the actions, clearing and reopening by runs,
and which write-offs are refused."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from decimal import Decimal as D

import pytest

from tally.core import suspense as S

DAY = date(2026, 11, 24)


BASE = S.Sighting("up", "X", "X", "", "m1", "short", "b1", "CNY", D("5"), DAY)


def sighting(
    kind: str = "short", break_id: str = "b1", key: str = "X", channel_txn_id: str = ""
) -> S.Sighting:
    return replace(
        BASE, kind=kind, break_id=break_id, item_key=key, txn_id=key, channel_txn_id=channel_txn_id
    )


def act(entry: S.Entry, name: str, at: int) -> S.Action:
    return S.Action(f"a{at}", entry.entry_id, name, "r", "me", "", at)


def test_attach_and_state_are_pure() -> None:
    ev = S.Sighting("up", "X", "X", "", "m1", "short", "b1", "CNY", D("5"), DAY)
    e = S.attach(None, ev, 1)
    assert e.version == 1 and e.kinds == ("short",) and e.entry_id == S.entry_id("up", "X")
    assert S.attach(e, ev, 2) is e  # nothing new
    e2 = S.attach(
        e, S.Sighting("up", "X", "X", "CX", "", "amount_mismatch", "b2", "", D(7), DAY), 3
    )
    assert e2.version == 2 and e2.kinds == ("amount_mismatch", "short") and e2.amount == D(7)
    assert e2.channel_txn_id == "CX" and e2.merchant_id == "m1" and e2.updated_at_ms == 3
    assert S.state([]).open
    assert not S.state([act(e, "refunded", 1)]).open
    assert S.state([act(e, S.CLEARED, 1), act(e, S.REOPENED, 2)]).open
    st = S.state([act(e, S.REOPENED, 3), act(e, S.CLEARED, 1), act(e, "loss_accepted", 4)])
    assert not st.open and st.closed_by is not None and st.closed_by.action == "loss_accepted"


def test_a_new_entry_is_posted_to_the_day_given_and_rows_keep_the_stored_columns() -> None:
    later = date(2026, 11, 26)
    e = S.attach(None, sighting(), 10, post_to=later)
    assert e.business_date == later and e.opened_at_ms == e.updated_at_ms == 10
    assert len(e.row()) == len(S.ENTRY_COLUMNS) and e.row()[0] == e.entry_id
    a = act(e, "refunded", 1)
    assert dict(zip(S.ACTION_COLUMNS, a.row(), strict=True))["action"] == "refunded"
    assert S.eod_break_id("up", DAY, "short", "X") == "eod:up:2026-11-24:short:X"
    assert S.age_seconds(e, 10 + 65_432) == 65 and S.age_seconds(e, 0) == 0


def test_update_opens_clears_and_reopens_once_per_run() -> None:
    u = S.SuspenseUpdate({}, {}, now_ms=100)
    u.add(sighting(), None, "run r1")
    (e,) = u.written
    assert u.counts["opened"] == 1 and u.entries[e.entry_id] is e
    u.clear(e, "r2", "matched")
    u.clear(e, "r2", "matched")  # already closed: nothing more
    assert [a.action for a in u.appended] == [S.CLEARED] and u.counts["cleared"] == 1
    # the same break again from a run: reopened, though the entry did not change
    u.now_ms = 200
    u.add(sighting(), None, "run r3")
    assert [a.action for a in u.appended] == [S.CLEARED, S.REOPENED]
    assert u.counts == {"opened": 1, "updated": 0, "cleared": 1, "reopened": 1}
    # a real-time break seen again does not reopen; a new kind on the entry does
    u.now_ms = 300
    u.clear(u.entries[e.entry_id], "r4", "carried")
    u.add(sighting(), None, "break b1")
    assert u.counts["reopened"] == 1
    u.now_ms = 400
    u.add(sighting("amount_mismatch", "b2"), None, "break b2")
    assert u.counts == {"opened": 1, "updated": 1, "cleared": 2, "reopened": 2}
    # the actions a run appends have the same id on a re-run
    again = S.auto_action(e, S.CLEARED, "r2", "x", 999)
    assert again.action_id == u.appended[0].action_id


def test_write_off_checks() -> None:
    assert S.write_off_problems("refunded", "paid back", "ops", None) == []
    fields = [f for f, _ in S.write_off_problems("deleted", " ", "", "other")]
    assert fields == ["action", "reason", "by"]
    (p,) = S.write_off_problems("linked", "dup", "ops", None)
    assert p[0] == "link" and "--link OTHER" in p[1]
    (p,) = S.write_off_problems("refunded", "r", "ops", "other", cli=False)
    assert p == ("link", "column link goes only with column action linked")


def test_closed_entries_and_links() -> None:
    a = S.attach(None, sighting(), 1)
    b = S.attach(None, sighting(key="Y", channel_txn_id="CY", break_id="b2"), 1)
    assert S.closed_problem(a, []) is None
    msg = S.closed_problem(a, [act(a, "channel_confirmed", 0)])
    assert msg is not None and "already closed: channel_confirmed by me at 1970-01-01" in msg
    index = S.EntryIndex({a.entry_id: a, b.entry_id: b})
    assert index.find("CY") is b and index.find("b1") is a
    assert S.link_target(index, a, b.entry_id) == b.entry_id
    with pytest.raises(S.SuspenseError, match="to itself"):
        S.link_target(index, a, "X")
    with pytest.raises(S.SuspenseError, match="no such suspense entry"):
        S.link_target(index, a, "nope")
    w = S.write_off_action(a, "linked", " dup ", " ops ", b.entry_id, 7)
    assert (w.reason, w.actor, w.linked_to, w.at_ms) == ("dup", "ops", b.entry_id, 7)
    assert "no suspense entry 'Q'" in S.unknown_entry("Q")


def test_an_ident_naming_several_entries_is_refused() -> None:
    a = S.attach(None, sighting(break_id="shared"), 1)
    b = S.attach(None, sighting(key="Y", break_id="shared"), 1)
    index = S.EntryIndex({a.entry_id: a, b.entry_id: b})
    with pytest.raises(S.SuspenseError, match="names 2 suspense entries"):
        index.find("shared")
    assert index.find(a.entry_id) is a and index.find("Y") is b and index.find("Z") is None
