"""The embedded chain keeps its ledger in an SQLite file, not in the process's memory (issue 17)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hypergpu.chain.ledger_db import IMPORT_PATH, LedgerDB
from hypergpu.chain.rpc import make_web3
from hypergpu.config.chain import ChainConfig


def _ledger_file(w3: object) -> Path:
    tester = w3.provider.ethereum_tester  # type: ignore[attr-defined]
    db = tester.backend.chain.chaindb.db
    assert isinstance(db, LedgerDB), type(db)
    path = db.wrapped_db._db.execute("PRAGMA database_list").fetchone()[2]
    return Path(path)


def test_the_embedded_chain_writes_its_ledger_to_a_file() -> None:
    before = os.environ.get("CHAIN_DB_BACKEND_CLASS")
    w3 = make_web3(ChainConfig(kind="embedded"))
    assert os.environ.get("CHAIN_DB_BACKEND_CLASS") == before != IMPORT_PATH  # only this chain is on disk
    ledger = _ledger_file(w3)
    size = ledger.stat().st_size
    sender, receiver = w3.eth.accounts[:2]
    balance = w3.eth.get_balance(receiver)
    for _ in range(20):
        w3.eth.wait_for_transaction_receipt(w3.eth.send_transaction({"from": sender, "to": receiver, "value": 7}))
    assert w3.eth.get_balance(receiver) == balance + 140
    assert w3.eth.block_number >= 20
    assert ledger.stat().st_size > size  # the blocks went to the file


def test_the_ledger_file_goes_with_the_process() -> None:
    script = ("from hypergpu.chain.rpc import make_web3; from hypergpu.config.chain import ChainConfig; "
              "from tests.test_chain_ledger import _ledger_file; "
              "print(_ledger_file(make_web3(ChainConfig(kind='embedded'))))")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=root,
                         env={**os.environ, "PYTHONPATH": f"{root / 'python'}:{root}"})
    assert out.returncode == 0, out.stderr
    ledger = Path(out.stdout.strip().splitlines()[-1])
    assert ledger.name == "ledger.sqlite" and not ledger.parent.exists()
