"""Schema versions of the SQLite stores (:mod:`p2pep.sqlitedb`): created at the current version,
older files migrated by explicit steps, newer files refused untouched, for every store."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from fakes.chain import FakeChain, FakeWallet

from p2pep.sqlitedb import Database, Schema, SchemaVersionError, split_statements
from p2pep.webauth.store import AuthStore
from services.anchor.anchorer import Anchorer
from services.matcher.store import Store as MatcherStore
from services.meter.store import MeterStore
from services.portal.store import PortalStore
from services.settlement.store import Store as SettlementStore

ROOT = Path(__file__).resolve().parents[1]

V1 = "CREATE TABLE IF NOT EXISTS t (a INTEGER PRIMARY KEY, b TEXT NOT NULL);"


def version_of(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def raw(path: Path, *statements: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for s in statements:
            conn.execute(s)
    finally:
        conn.close()


def add_c(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE t ADD COLUMN c INTEGER NOT NULL DEFAULT 0")
    conn.execute("UPDATE t SET c = length(b)")


V3 = Schema("demo", 3,
            "CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT NOT NULL, c INTEGER NOT NULL DEFAULT 0, d TEXT);",
            {1: add_c, 2: "ALTER TABLE t ADD COLUMN d TEXT; UPDATE t SET d = 'x;' || b;"})


async def test_a_fresh_file_is_created_at_the_current_version(tmp_path: Path) -> None:
    db = await Database.open(str(tmp_path / "s.db"), V3)
    await db.execute("INSERT INTO t (b, c, d) VALUES ('q', 1, 'r')")
    await db.close()
    assert version_of(tmp_path / "s.db") == 3


async def test_a_newer_file_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    raw(path, V1, "PRAGMA user_version = 4")
    before = path.read_bytes()
    with pytest.raises(SchemaVersionError, match=r"demo store is at schema version 4, newer than this P2PEP knows \(3\)"):
        await Database.open(str(path), V3)
    assert path.read_bytes() == before
    assert not (tmp_path / "s.db-wal").exists()


async def test_an_older_file_is_migrated_step_by_step_keeping_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    raw(path, V1, "INSERT INTO t (b) VALUES ('hello')", "PRAGMA user_version = 1")
    db = await Database.open(str(path), V3)
    rows = await db.fetchall("SELECT a, b, c, d FROM t")
    await db.close()
    assert [tuple(r) for r in rows] == [(1, "hello", 5, "x;hello")]
    assert version_of(path) == 3
    db = await Database.open(str(path), V3)  # at the version now: opened as it is
    assert await db.scalar("SELECT count(*) FROM t") == 1
    await db.close()


async def test_a_file_from_before_versions_is_version_1(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    raw(path, V1, "INSERT INTO t (b) VALUES ('ab')")  # user_version 0, but it has tables
    db = await Database.open(str(path), V3)
    assert [tuple(r) for r in await db.fetchall("SELECT b, c, d FROM t")] == [("ab", 2, "x;ab")]
    await db.close()
    assert version_of(path) == 3


async def test_a_failing_step_leaves_the_file_at_the_last_whole_step(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    raw(path, V1, "INSERT INTO t (b) VALUES ('ab')", "PRAGMA user_version = 1")
    broken = Schema("demo", 3, V3.create, {1: add_c, 2: "ALTER TABLE t ADD COLUMN d TEXT; INSERT INTO nowhere VALUES (1);"})
    with pytest.raises(sqlite3.OperationalError, match="nowhere"):
        await Database.open(str(path), broken)
    assert version_of(path) == 2
    conn = sqlite3.connect(path)
    assert [r[1] for r in conn.execute("PRAGMA table_info(t)")] == ["a", "b", "c"]  # step 2 rolled back whole
    conn.close()
    db = await Database.open(str(path), V3)  # fixed code: carries on from version 2
    assert [tuple(r) for r in await db.fetchall("SELECT c, d FROM t")] == [(2, "x;ab")]
    await db.close()


def test_a_schema_names_every_step() -> None:
    with pytest.raises(ValueError, match="one migration from each version"):
        Schema("demo", 3, V1, {1: "SELECT 1"})
    with pytest.raises(ValueError, match="version must be >= 1"):
        Schema("demo", 0, V1)


def test_statements_split_only_at_their_ends() -> None:
    script = """
    CREATE TABLE a (x TEXT DEFAULT ';');  -- a comment; with a semicolon
    CREATE TRIGGER tr AFTER INSERT ON a BEGIN UPDATE a SET x = 'y;'; DELETE FROM a WHERE 0; END;
    INSERT INTO a VALUES ('p;q')
    """
    out = list(split_statements(script))
    assert len(out) == 3
    assert "CREATE TRIGGER" in out[1] and out[1].endswith("END;")
    conn = sqlite3.connect(":memory:")
    for s in out:
        conn.execute(s)
    assert conn.execute("SELECT x FROM a").fetchall() == [("y;",)]
    with pytest.raises(ValueError, match="incomplete"):
        list(split_statements("INSERT INTO a VALUES ('open"))


# --- every store ------------------------------------------------------------------------------

async def _settlement(p: str) -> Callable[[], Awaitable[Any]]:
    s = await SettlementStore.open(p)
    return s.close


async def _meter(p: str) -> Callable[[], Awaitable[Any]]:
    s = await MeterStore.open(p, "meter-1")
    return s.close


async def _matcher(p: str) -> Callable[[], Awaitable[Any]]:
    s = await MatcherStore.open(p)
    return s.close


async def _anchor(p: str) -> Callable[[], Awaitable[Any]]:
    chain = FakeChain()
    a = await Anchorer(p, FakeWallet(chain), chain).open()
    return a.close


async def _webauth(p: str) -> Callable[[], Awaitable[Any]]:
    s = await AuthStore.open(p)
    return s.close


async def _portal(p: str) -> Callable[[], Awaitable[Any]]:
    s = await PortalStore.open_portal(p)
    return s.close


VERSIONS = {"settlement": 4, "meter": 1, "matcher": 1, "anchor": 3, "webauth": 1, "portal": 1}
STORES = {"settlement": _settlement, "meter": _meter, "matcher": _matcher, "anchor": _anchor,
          "webauth": _webauth, "portal": _portal}


@pytest.mark.parametrize("store", sorted(STORES))
async def test_each_store_records_its_version_and_refuses_a_newer_file(tmp_path: Path, store: str) -> None:
    path = tmp_path / f"{store}.db"
    close = await STORES[store](str(path))
    await close()
    current = version_of(path)
    assert current == VERSIONS[store]
    raw(path, "PRAGMA user_version = 0")  # as written before versions were kept: version 1, migrated
    close = await STORES[store](str(path))
    await close()
    assert version_of(path) == current
    raw(path, f"PRAGMA user_version = {current + 1}")
    with pytest.raises(SchemaVersionError, match=rf"{store} store is at schema version {current + 1}, "
                                                 rf"newer than this P2PEP knows \({current}\)"):
        await STORES[store](str(path))
    assert version_of(path) == current + 1


def test_a_service_on_a_newer_store_exits_with_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "settlement.sqlite"
    raw(path, "CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT NOT NULL)", "PRAGMA user_version = 7")
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2PEP_")}
    env["P2PEP_SETTLEMENT_DB_PATH"] = str(path)
    proc = subprocess.run([sys.executable, "-m", "services.settlement"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "settlement store is at schema version 7, newer than this P2PEP knows (4)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert version_of(path) == 7


def test_the_cli_on_a_newer_store_says_so_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "console-auth.sqlite"
    raw(path, "CREATE TABLE accounts (id INTEGER PRIMARY KEY)", "PRAGMA user_version = 5")
    env = {**os.environ, "P2PEP_OPERATOR_PASSWORD": "a long enough password 123"}
    proc = subprocess.run([sys.executable, "-m", "p2pep.cli", "operator", "add", "ops", "--db", str(path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {path}: the webauth store is at schema version 5, newer than this P2PEP knows (1); "
        "run the release that wrote it, or restore a backup"]
