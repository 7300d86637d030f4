"""The durable webhook outbox: a SQLite file in the state directory.

Every webhook event is written here before its first delivery attempt and removed after a 2xx, so a
crash (even ``kill -9``) loses nothing that was written: on start-up whatever is left is delivered.
All file work runs on one dedicated thread, off the reactor, in submission order.
"""

from __future__ import annotations

import os
import re
import sqlite3
from typing import Callable, Iterable

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    target TEXT NOT NULL,
    event TEXT NOT NULL
)
"""


# The outbox files a state directory may hold: one process's, or one per worker of a Redis cluster.
OUTBOX_FILE = re.compile(r"webhooks(-worker-\d+)?\.sqlite3\Z")


def adopt_strays(state_dir: str, owner: str, used: set[str]) -> int:
    """Move the events of outbox files the starting configuration does not use (left by another
    ``workers`` count or engine) into ``owner``, which will send them; then remove those files.
    Runs before any process of this start opens its outbox. Returns how many events moved."""
    if not os.path.isdir(state_dir):
        return 0
    moved = 0
    for name in sorted(os.listdir(state_dir)):
        if not OUTBOX_FILE.match(name) or name in used:
            continue
        stray = os.path.join(state_dir, name)
        source = sqlite3.connect(stray)
        try:
            rows = source.execute("SELECT target, event FROM webhook_events ORDER BY id").fetchall()
        except sqlite3.OperationalError:
            rows = []  # created but never written
        finally:
            source.close()
        if rows:
            target = sqlite3.connect(os.path.join(state_dir, owner), isolation_level=None)
            try:
                target.execute("PRAGMA journal_mode=WAL")
                target.execute(SCHEMA)
                with target:
                    target.execute("BEGIN")
                    target.executemany(
                        "INSERT INTO webhook_events (target, event) VALUES (?, ?)", rows)
            finally:
                target.close()
            moved += len(rows)
        for leftover in (stray, stray + "-wal", stray + "-shm"):
            if os.path.exists(leftover):
                os.remove(leftover)
    return moved


class Outbox:
    def __init__(self, path: str, run: Callable[..., Deferred]):
        """``run(function, *args)`` runs file work in order off the reactor and returns a Deferred."""
        self.path = path
        self._run = run
        self._db: sqlite3.Connection | None = None

    @classmethod
    def on_thread(cls, path: str, reactor) -> "Outbox":
        """An outbox whose file work runs on its own single thread (stopped with the reactor)."""
        pool = ThreadPool(minthreads=1, maxthreads=1, name="soketify-outbox")
        pool.start()
        reactor.addSystemEventTrigger("after", "shutdown", pool.stop)
        return cls(path, lambda f, *a: deferToThreadPool(reactor, pool, f, *a))

    def open(self) -> Deferred:
        return self._run(self._open)

    def _open(self) -> None:
        if self.path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        # WAL with synchronous=NORMAL survives a killed process (not a power cut) and is fast.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(SCHEMA)

    def add(self, rows: list[tuple[str, str]]) -> Deferred:
        """Store (target, event JSON) rows in one transaction; Deferred of their ids, in order."""
        return self._run(self._add, rows)

    def _add(self, rows: list[tuple[str, str]]) -> list[int]:
        ids = []
        with self._db:
            self._db.execute("BEGIN")
            for target, event in rows:
                ids.append(self._db.execute(
                    "INSERT INTO webhook_events (target, event) VALUES (?, ?)", (target, event)
                ).lastrowid)
        return ids

    def remove(self, ids: Iterable[int]) -> Deferred:
        return self._run(self._remove, list(ids))

    def _remove(self, ids: list[int]) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM webhook_events WHERE id = ?", [(i,) for i in ids])

    def pending(self) -> Deferred:
        """Deferred of [(id, target, event)] still waiting for delivery, oldest first."""
        return self._run(self._pending)

    def _pending(self) -> list[tuple[int, str, str]]:
        return self._db.execute("SELECT id, target, event FROM webhook_events ORDER BY id").fetchall()

    def close(self) -> Deferred:
        return self._run(self._close)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
