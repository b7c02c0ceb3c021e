"""Exactly-once admission of updates across rounds."""

from __future__ import annotations

import pytest

from hypergpu.round.book import LatePolicy, RoundBook, Verdict


def test_each_update_is_taken_once_and_duplicates_counted():
    book = RoundBook(quorum=0.5)
    book.open(1, {1, 2, 3})
    assert book.offer(1, 1).verdict is Verdict.ACCEPT
    assert book.offer(1, 1).verdict is Verdict.DUPLICATE
    assert book.offer(1, 1).verdict is Verdict.DUPLICATE
    assert book.refusals["duplicate"] == 2
    assert book.reported == {1}


def test_quorum_and_completion():
    book = RoundBook(quorum=0.6)
    book.open(1, {1, 2, 3, 4, 5})
    assert book.quorum_count == 3
    for n in (1, 2):
        book.offer(n, 1)
    assert not book.has_quorum()
    book.offer(3, 1)
    assert book.has_quorum() and not book.complete()
    book.offer(4, 1)
    book.offer(5, 1)
    assert book.complete()


def test_optional_participants_are_not_counted_on_for_the_quorum():
    book = RoundBook(quorum=0.6)
    book.open(1, {1, 2, 3, 4, 5}, optional={4, 5})
    assert book.quorum_count == 2  # 60 % of the three it counts on
    book.offer(4, 1)
    book.offer(5, 1)
    assert not book.has_quorum()  # optional answers are taken, but make no quorum
    assert book.reported == {4, 5}
    book.offer(1, 1)
    book.offer(2, 1)
    assert book.has_quorum() and not book.complete()


@pytest.mark.parametrize(
    ("node", "round_id", "verdict"),
    [(9, 2, Verdict.NOT_PARTICIPANT), (1, 3, Verdict.FUTURE)],
)
def test_strangers_and_future_rounds_refused(node, round_id, verdict):
    book = RoundBook()
    book.open(1, {1, 2})
    book.close()
    book.open(2, {1, 2})
    assert book.offer(node, round_id).verdict is verdict
    assert book.refusals[verdict.value] == 1


def test_late_updates_dropped_under_drop_policy():
    book = RoundBook(late_policy=LatePolicy.DROP)
    book.open(1, {1, 2})
    book.offer(1, 1)
    book.close()
    book.open(2, {1, 2})
    d = book.offer(2, 1)
    assert d.verdict is Verdict.LATE and d.staleness == 1


def test_late_updates_weighted_by_staleness_and_bounded():
    book = RoundBook(late_policy=LatePolicy.STALE_WEIGHTED, decay=0.5, max_staleness=2)
    for r in (1, 2, 3, 4):
        book.open(r, {1, 2})
        book.offer(1, r)
        book.close()
    book.open(5, {1, 2})
    assert book.offer(2, 4).weight == pytest.approx(0.5)
    assert book.offer(2, 3).weight == pytest.approx(0.25)
    assert book.offer(2, 2).verdict is Verdict.LATE  # staleness 3 > 2
    # A stale update, once taken, is never taken again.
    assert book.offer(2, 4).verdict is Verdict.DUPLICATE
    # Stale updates do not count towards the open round's quorum.
    assert book.reported == set()


def test_closed_round_refuses_current_updates():
    book = RoundBook()
    book.open(1, {1})
    book.close()
    assert book.offer(1, 1).verdict is Verdict.CLOSED


def test_rounds_must_advance():
    book = RoundBook()
    book.open(3, {1})
    with pytest.raises(ValueError, match="does not follow"):
        book.open(2, {1})
