"""The embedded chain's state on disk, so a long run's ledger does not live in RAM.

eth-tester keeps py-evm's whole database (every block, receipt and trie node)
in a dict: each settled transaction added ~7.7 KB to the coordinator's heap
for the rest of the run (measured for issue 17), which over a day of rounds
is the largest thing the process holds. py-evm picks its database class by
import path from ``CHAIN_DB_BACKEND_CLASS``; this module gives it an atomic
database whose store is an SQLite file in a temporary directory, deleted with
the process. The chain itself is as ephemeral as before.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from eth.db.atomic import AtomicDB
from eth.db.backends.base import BaseDB

from hypergpu.chain.queue_db import CACHE_KIB

_VARIABLE = "CHAIN_DB_BACKEND_CLASS"
#: The import path py-evm reads from ``CHAIN_DB_BACKEND_CLASS``.
IMPORT_PATH = f"{__name__}.LedgerDB"


class SqliteDB(BaseDB):
    """A bytes → bytes store in one SQLite table (no fsync: the file dies with the process)."""

    def __init__(self, path: Path) -> None:
        # Never closed by hand: a daemon thread may still settle at exit; the file is unlinked then (see LedgerDB).
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        # SQLite's page cache (2 MB by default) fills over a long run and reads as a slow leak in
        # the coordinator's memory; the OS caches the file anyway (a 400-epoch settlement grew
        # RSS ~4.2 KB per operation with the default, ~1.2 KB with a small cache, then flat).
        self._db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        self._db.execute("CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID")
        # web3 may call the provider from more than one thread; one connection, one lock.
        self._lock = threading.Lock()

    def __getitem__(self, key: bytes) -> bytes:
        with self._lock:
            row = self._db.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return bytes(row[0])

    def __setitem__(self, key: bytes, value: bytes) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", (key, value))

    def _exists(self, key: bytes) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM kv WHERE k = ?", (key,)).fetchone() is not None

    def __delitem__(self, key: bytes) -> None:
        with self._lock:
            gone = self._db.execute("DELETE FROM kv WHERE k = ?", (key,)).rowcount
        if not gone:
            raise KeyError(key)

    def __iter__(self) -> Iterator[bytes]:
        with self._lock:
            keys = [bytes(k) for (k,) in self._db.execute("SELECT k FROM kv")]
        return iter(keys)

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM kv").fetchone()[0])


class LedgerDB(AtomicDB):
    """py-evm's atomic database over an SQLite file in a folder removed at exit."""

    def __init__(self, **_: Any) -> None:
        folder = tempfile.mkdtemp(prefix="hypergpu-chain-")
        store = SqliteDB(Path(folder) / "ledger.sqlite")
        super().__init__(store)
        # at the process's exit (py-evm's method caches keep a chain alive until then)
        weakref.finalize(self, shutil.rmtree, folder, ignore_errors=True)


@contextmanager
def disk_ledger() -> Iterator[None]:
    """Chains made inside keep their database on disk (py-evm reads ``CHAIN_DB_BACKEND_CLASS``)."""
    before = os.environ.get(_VARIABLE)
    os.environ[_VARIABLE] = IMPORT_PATH
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(_VARIABLE, None)
        else:
            os.environ[_VARIABLE] = before
