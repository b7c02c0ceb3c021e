"""Where each node of a session is paid, epoch by epoch (hypergpu.chain.accounts)."""

from __future__ import annotations

from pathlib import Path

from hypergpu.chain.accounts import AccountBook

A, B, C = (f"0x{0xA11CE0 + i:040x}" for i in range(3))


def test_accounts_are_journaled_per_epoch_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "s.accounts.jsonl"
    book = AccountBook(path)
    assert book.set("n", A, 0) and not book.set("n", A, 1)  # the same account again is no news
    assert book.set("n", B, 3)  # a new payout address from epoch 3 on
    assert book.set("m", C, 2)
    assert [str(book.at("n", e)).lower() for e in range(5)] == [A, A, A, B, B]
    assert str(book.at("m", 0)).lower() == C
    assert book.at("nobody", 0) is None
    again = AccountBook(path)  # a resumed session
    assert {k: v.lower() for k, v in again.latest().items()} == {"n": B, "m": C}
    assert str(again.at("n", 1)).lower() == A
    assert len(path.read_text().splitlines()) == 3
