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

Schema versions (one mechanism for every store): each store describes its tables as a
:class:`Schema` (``version``, the DDL that makes that version from nothing, and one migration
step per older version), and the file records its version in ``PRAGMA user_version``. At open:

* a fresh file (version 0, no tables) gets ``create`` and the current version, in one transaction;
* a file written before versions were kept (version 0 with tables) is version 1;
* an older version is taken forward by its explicit steps, each step and the new version
  number in one transaction (a crash mid-migration leaves the file at the last whole step);
* a newer version than the code knows is refused with :class:`SchemaVersionError` and the
  file is left untouched (an older release must not write into a newer layout).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog

log = structlog.get_logger(__name__)

T = TypeVar("T")
Params = Sequence[Any]
Row = sqlite3.Row

Migration = str | Callable[[sqlite3.Connection], None]
"""One step from version ``v`` to ``v + 1``: SQL statements, or a function of the connection
(run inside the step's transaction; it must not commit)."""


class SchemaVersionError(RuntimeError):
    """The file's schema version is one this code cannot use (the message says which and why)."""


@dataclass(frozen=True)
class Schema:
    """A store's tables at ``version``: ``create`` makes them from nothing; ``migrations[v]``
    takes a file from version ``v`` to ``v + 1`` (one entry for every ``1 <= v < version``)."""

    store: str
    version: int
    create: str
    migrations: Mapping[int, Migration] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.version < 1:
            raise ValueError(f"{self.store} schema: version must be >= 1, got {self.version}")
        if set(self.migrations) != set(range(1, self.version)):
            raise ValueError(f"{self.store} schema: need exactly one migration from each version 1.."
                             f"{self.version - 1}, have {sorted(self.migrations)}")


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
    async def open(cls, path: str, schema: Schema, *, synchronous: str = "FULL",
                   foreign_keys: bool = False, busy_timeout_ms: int = 5000) -> Database:
        """Open ``path`` at ``schema``'s version (created or migrated; :class:`SchemaVersionError`
        if the file is newer). ``busy_timeout_ms``: how long a statement waits for another
        process's lock on the file before it fails with ``database is locked``."""
        if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous: expected OFF, NORMAL, FULL or EXTRA, got {synchronous!r}")
        db = cls(path)
        await db._on_thread(db._connect, schema, synchronous, foreign_keys, busy_timeout_ms)
        return db

    def _connect(self, schema: Schema, synchronous: str, foreign_keys: bool, busy_timeout_ms: int) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            _refuse_newer(conn, self.path, schema)  # before anything writes to the file
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={synchronous}")
            if foreign_keys:
                conn.execute("PRAGMA foreign_keys=ON")
            _bring_to_version(conn, self.path, schema)
        except BaseException:
            conn.close()
            raise
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


def user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _refuse_newer(conn: sqlite3.Connection, path: str, schema: Schema) -> int:
    found = user_version(conn)
    if found > schema.version:
        raise SchemaVersionError(
            f"{path}: the {schema.store} store is at schema version {found}, newer than this P2PEP "
            f"knows ({schema.version}); run the release that wrote it, or restore a backup")
    return found


def _bring_to_version(conn: sqlite3.Connection, path: str, schema: Schema) -> None:
    """Create or migrate the file to ``schema.version`` (see the module docstring)."""
    if user_version(conn) == schema.version:
        return  # the usual case: nothing to write
    conn.execute("BEGIN IMMEDIATE")  # another process may be opening the same file: decide under its lock
    try:
        found = _refuse_newer(conn, path, schema)
        if found == 0:
            if conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0] == 0:
                _run_script(conn, schema.create)
                _set_version(conn, schema.version)
                conn.execute("COMMIT")
                log.info("store created", store=schema.store, path=path, schema_version=schema.version)
                return
            found = 1  # tables but no version: written before schema versions were kept, i.e. version 1
            _set_version(conn, found)
        conn.execute("COMMIT")
        for step in range(found, schema.version):
            conn.execute("BEGIN IMMEDIATE")
            if user_version(conn) == step:  # else another process did this step meanwhile
                migration = schema.migrations[step]
                if callable(migration):
                    migration(conn)
                else:
                    _run_script(conn, migration)
                _set_version(conn, step + 1)
                log.info("store migrated", store=schema.store, path=path, from_version=step, to_version=step + 1)
            conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def _set_version(conn: sqlite3.Connection, version: int) -> None:
    conn.execute(f"PRAGMA user_version = {int(version)}")


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    """Each statement of ``script`` on ``conn``, inside the caller's transaction (unlike
    ``executescript``, which commits first)."""
    for statement in split_statements(script):
        conn.execute(statement)


def split_statements(script: str) -> Iterator[str]:
    """The complete SQL statements of ``script`` (a ``;`` inside a literal or a trigger body
    does not end one)."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip().strip(";").strip():
                yield pending.strip()
            pending = ""
    if pending.strip().strip(";").strip():
        raise ValueError(f"incomplete SQL statement at the end of the script: {pending.strip()[:80]!r}")


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
