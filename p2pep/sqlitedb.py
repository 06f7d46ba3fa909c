"""One SQLite connection, shared safely by every coroutine of one process.

Every P2PEP store (settlement, meter, matcher, anchor) is built on :class:`Database`.
The concurrency rule, the same for all of them:

* **Every access is serialised.** The connection lives on one worker thread and is private
  to this class; each read, each statement and each transaction holds one ``asyncio.Lock``
  for its whole duration. So a coroutine never sees another one's half-written transaction,
  and never has its own statements joined, committed or rolled back by another's.
* **Every logical write is one explicit transaction**: ``async with db.transaction() as tx``
  runs ``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on any exception, cancellation
  included). A single-statement write is :meth:`Database.execute`, its own transaction.
  The connection is in autocommit mode (``isolation_level=None``): nothing is ever left in an
  implicit, open transaction for another caller to commit.
* **Connection state is fixed at open** (rows are :class:`sqlite3.Row`, which index by position
  and by name; WAL journal; ``synchronous`` as asked) and never changed per call.
* A transaction body does only database work: it must not await the network (the lock would
  stall every other caller of the store).

``run`` executes a plain function on the connection's thread, under the same lock, for a
store that does a whole batch of statements at once (the matcher's write-ahead ``apply``).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
Params = Sequence[Any]
Row = sqlite3.Row


@dataclass(frozen=True)
class Written:
    """What a write statement did."""

    rowcount: int
    lastrowid: int | None


class Transaction:
    """The statements of one open transaction; valid only inside ``Database.transaction()``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def execute(self, sql: str, params: Params = ()) -> Written:
        return await self._db._on_thread(_execute, self._db._connection, sql, params)

    async def executemany(self, sql: str, rows: Iterable[Params]) -> Written:
        return await self._db._on_thread(_executemany, self._db._connection, sql, list(rows))

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return await self._db._on_thread(_fetchall, self._db._connection, sql, params)

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        return await self._db._on_thread(_fetchone, self._db._connection, sql, params)


class Database:
    """A SQLite file opened for one process's coroutines (see the module docstring)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sqlite-{Path(path).name}")
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str, schema: str, *, synchronous: str = "FULL",
                   foreign_keys: bool = False, busy_timeout_ms: int = 5000) -> Database:
        """``busy_timeout_ms``: how long a statement waits for another process's lock on the
        file before it fails with ``database is locked``."""
        if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous: expected OFF, NORMAL, FULL or EXTRA, got {synchronous!r}")
        db = cls(path)
        await db._on_thread(db._connect, schema, synchronous, foreign_keys, busy_timeout_ms)
        return db

    def _connect(self, schema: str, synchronous: str, foreign_keys: bool, busy_timeout_ms: int) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        if foreign_keys:
            conn.execute("PRAGMA foreign_keys=ON")
        conn.executescript(schema)
        self._conn = conn

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                await self._on_thread(self._conn.close)
                self._conn = None
        self._pool.shutdown(wait=True)

    @property
    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"database {self.path} is closed")
        return self._conn

    async def _on_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # --- reads (committed state only) ----------------------------------------------------
    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        async with self._lock:
            return await self._on_thread(_fetchall, self._connection, sql, params)

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        async with self._lock:
            return await self._on_thread(_fetchone, self._connection, sql, params)

    async def scalar(self, sql: str, params: Params = (), default: Any = None) -> Any:
        row = await self.fetchone(sql, params)
        return default if row is None or row[0] is None else row[0]

    # --- writes ----------------------------------------------------------------------------
    async def execute(self, sql: str, params: Params = ()) -> Written:
        """One statement as its own transaction."""
        async with self.transaction() as tx:
            return await tx.execute(sql, params)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; ``ROLLBACK`` if the body raises or is cancelled."""
        async with self._lock:
            conn = self._connection
            try:
                await self._on_thread(conn.execute, "BEGIN IMMEDIATE")
                yield Transaction(self)
                await asyncio.shield(self._on_thread(conn.execute, "COMMIT"))
            except BaseException:
                # The worker thread runs statements in order, so this ROLLBACK comes after any
                # statement still running for a cancelled caller; shielded so it is always sent.
                await asyncio.shield(self._on_thread(_rollback, conn))
                raise

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` on the connection's thread, alone. ``fn`` opens and ends any
        transaction it needs (see :func:`in_transaction`)."""
        async with self._lock:
            return await self._on_thread(fn, self._connection, *args)


def in_transaction(conn: sqlite3.Connection, body: Callable[[sqlite3.Connection], T]) -> T:
    """For :meth:`Database.run`: ``body`` inside ``BEGIN IMMEDIATE`` ... ``COMMIT``."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        out = body(conn)
    except BaseException:
        _rollback(conn)
        raise
    conn.execute("COMMIT")
    return out


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _execute(conn: sqlite3.Connection, sql: str, params: Params) -> Written:
    cur = conn.execute(sql, params)
    return Written(cur.rowcount, cur.lastrowid)


def _executemany(conn: sqlite3.Connection, sql: str, rows: list[Params]) -> Written:
    cur = conn.executemany(sql, rows)
    return Written(cur.rowcount, cur.lastrowid)


def _fetchall(conn: sqlite3.Connection, sql: str, params: Params) -> list[Row]:
    return conn.execute(sql, params).fetchall()


def _fetchone(conn: sqlite3.Connection, sql: str, params: Params) -> Row | None:
    row: Row | None = conn.execute(sql, params).fetchone()
    return row
