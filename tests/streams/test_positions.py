"""`streams.positions.InputPositions`: a partition's messages are processed in offset
order from the committed offset, each once in a row; a hole is never stepped over
unless the log holds nothing there."""

from __future__ import annotations

import pytest

from streams.positions import Admit, InputPositions

TP = ("payments.transactions", 0)


def test_the_first_message_must_be_at_the_committed_offset() -> None:
    p = InputPositions({TP: 100}.get)
    assert p.admit(TP, 101) is Admit.HOLE  # 100 never arrived
    assert p.admit(TP, 99) is Admit.SEEN
    assert p.admit(TP, 100) is Admit.NEXT
    assert p.admit(TP, 101) is Admit.NEXT
    assert p.expected(TP) == 102


def test_nothing_committed_the_first_message_read_starts_the_partition() -> None:
    p = InputPositions({}.get)
    assert p.expected(TP) is None
    assert p.admit(TP, 7) is Admit.NEXT
    assert p.admit(TP, 9) is Admit.HOLE
    assert p.admit(TP, 8) is Admit.NEXT


def test_messages_read_again_after_a_seek_are_dropped_until_the_next_one() -> None:
    p = InputPositions({TP: 0}.get)
    for offset in range(5):
        assert p.admit(TP, offset) is Admit.NEXT
    # the same partition sought back to 2 (Faust's seek to committed racing the fetch)
    assert [p.admit(TP, o) for o in (2, 3, 4, 5)] == [Admit.SEEN] * 3 + [Admit.NEXT]


def test_a_reassignment_starts_again_at_the_committed_offset() -> None:
    committed = {TP: 3}
    p = InputPositions(committed.get)
    assert p.admit(TP, 3) is Admit.NEXT
    assert p.admit(TP, 4) is Admit.NEXT
    committed[TP] = 10  # another worker processed up to 10 meanwhile
    p.reset()
    assert p.admit(TP, 5) is Admit.SEEN
    assert p.admit(TP, 10) is Admit.NEXT


def test_a_hole_the_log_really_has_is_stepped_over() -> None:
    p = InputPositions({TP: 0}.get)
    assert p.admit(TP, 0) is Admit.NEXT
    assert p.admit(TP, 2) is Admit.HOLE  # offset 1: a transaction marker
    p.step_over(TP, 2)
    assert p.admit(TP, 2) is Admit.NEXT
    with pytest.raises(AssertionError):
        p.step_over(TP, 3)  # only forward past the next offset
