"""SQLite persistence of the matcher: orders, contracts, events, a little metadata.

Write-ahead: every call that changes the book writes all its effects in one transaction
(WAL journal, ``synchronous=FULL`` by default) *before* it is acknowledged and before its
events are published. A restarted matcher rebuilds the same book from the ``open``
orders (in arrival order) and the same continuing contracts.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from p2pep.sqlitedb import Database, Schema, in_transaction

TABLES = """
CREATE TABLE IF NOT EXISTS orders (
    id TEXT PRIMARY KEY,
    meter TEXT NOT NULL,
    side INTEGER NOT NULL,
    energy_wh INTEGER NOT NULL,
    price INTEGER NOT NULL,
    expiry_ms INTEGER,
    partners TEXT NOT NULL,
    renews TEXT,
    remaining INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    status TEXT NOT NULL,            -- open | filled | cancelled | expired
    accepted_ms INTEGER NOT NULL,
    window_ms INTEGER,
    uncovered INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS orders_open ON orders(status, seq);
CREATE TABLE IF NOT EXISTS contracts (
    contract_id TEXT PRIMARY KEY,
    consumer TEXT NOT NULL,
    supplier TEXT NOT NULL,
    energy_wh INTEGER NOT NULL,
    price INTEGER NOT NULL,
    start_ms INTEGER NOT NULL,
    end_ms INTEGER NOT NULL,
    tier INTEGER NOT NULL,
    hash BLOB NOT NULL,
    buy_order TEXT NOT NULL,
    sell_order TEXT NOT NULL,
    renews TEXT,
    ended INTEGER NOT NULL DEFAULT 0,
    outcome INTEGER,
    delivered_wh INTEGER
);
CREATE INDEX IF NOT EXISTS contracts_consumer ON contracts(consumer);
CREATE INDEX IF NOT EXISTS contracts_supplier ON contracts(supplier);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    meter TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_meter ON events(meter, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
SCHEMA = Schema("matcher", 1, TABLES)
"""Version 1: the tables above. A change to them is a new version with its migration step."""

ORDER_COLUMNS = (
    "id, meter, side, energy_wh, price, expiry_ms, partners, renews, remaining, seq, status, "
    "accepted_ms, window_ms, uncovered"
)
CONTRACT_COLUMNS = (
    "contract_id, consumer, supplier, energy_wh, price, start_ms, end_ms, tier, hash, buy_order, "
    "sell_order, renews, ended, outcome, delivered_wh"
)


@dataclass
class Changes:
    """Everything one call changes, written in one transaction."""

    new_orders: list[tuple[Any, ...]] = field(default_factory=list)  # ORDER_COLUMNS
    order_updates: list[tuple[int, str, int, str]] = field(default_factory=list)  # remaining, status, uncovered, id
    new_contracts: list[tuple[Any, ...]] = field(default_factory=list)  # CONTRACT_COLUMNS
    contract_ends: list[tuple[int, int, str]] = field(default_factory=list)  # outcome, delivered_wh, id
    events: list[tuple[int, str, bytes]] = field(default_factory=list)  # seq, meter, payload
    meta: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(
            self.new_orders or self.order_updates or self.new_contracts or self.contract_ends
            or self.events or self.meta
        )


@dataclass
class Snapshot:
    open_orders: list[sqlite3.Row]
    closed_ids: list[str]
    next_seq: int
    contracts: list[sqlite3.Row]  # not ended
    last_event_seq: int
    meta: dict[str, str]


class Store:
    """The matcher's tables over one :class:`~p2pep.sqlitedb.Database`.

    Concurrency rule (that of :mod:`p2pep.sqlitedb`): each method runs whole on the
    connection's thread, alone (:meth:`Database.run`); :meth:`apply` is one ``BEGIN IMMEDIATE``
    transaction holding every effect of one call, so a restarted matcher never sees half of it
    and a concurrent reader never sees it half-written.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    @classmethod
    async def open(cls, path: str, synchronous: str = "FULL") -> Store:
        return cls(await Database.open(path, SCHEMA, synchronous=synchronous))

    async def close(self) -> None:
        await self.db.close()

    async def load(self) -> Snapshot:
        return await self.db.run(_load)

    async def apply(self, ch: Changes) -> None:
        await self.db.run(in_transaction, lambda conn: _apply(conn, ch))

    async def order(self, order_id: str) -> sqlite3.Row | None:
        return await self.db.fetchone(f"SELECT {ORDER_COLUMNS} FROM orders WHERE id = ?", (order_id,))

    async def contract(self, contract_id: str) -> sqlite3.Row | None:
        return await self.db.fetchone(
            f"SELECT {CONTRACT_COLUMNS} FROM contracts WHERE contract_id = ?", (contract_id,)
        )

    async def contracts(self, meter: str, active_only: bool, now_ms: int, limit: int,
                        before: int = 0) -> list[sqlite3.Row]:
        """Newest first, at most ``limit``, only those stored before row ``before`` (0: all);
        each row ends with its ``rowid`` (the keyset of the next page)."""
        where: list[str] = []
        args: list[Any] = []
        if before > 0:
            where.append("rowid < ?")
            args.append(before)
        if meter:
            where.append("(consumer = ? OR supplier = ?)")
            args += [meter, meter]
        if active_only:
            where.append("ended = 0 AND end_ms > ?")
            args.append(now_ms)
        sql = f"SELECT {CONTRACT_COLUMNS}, rowid FROM contracts"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY rowid DESC LIMIT ?"
        return await self.db.fetchall(sql, (*args, limit))

    async def events_since(self, from_seq: int, meters: Iterable[str], limit: int = 1000) -> list[tuple[int, bytes]]:
        meters = list(meters)
        if meters:
            marks = ",".join("?" * len(meters))
            rows = await self.db.fetchall(
                f"SELECT seq, payload FROM events WHERE seq >= ? AND meter IN ({marks}) ORDER BY seq LIMIT ?",
                (from_seq, *meters, limit),
            )
        else:
            rows = await self.db.fetchall(
                "SELECT seq, payload FROM events WHERE seq >= ? ORDER BY seq LIMIT ?", (from_seq, limit)
            )
        return [(r[0], r[1]) for r in rows]


def _load(db: sqlite3.Connection) -> Snapshot:
    open_orders = db.execute(f"SELECT {ORDER_COLUMNS} FROM orders WHERE status = 'open' ORDER BY seq").fetchall()
    closed = [r[0] for r in db.execute("SELECT id FROM orders WHERE status != 'open'")]
    next_seq = (db.execute("SELECT MAX(seq) FROM orders").fetchone()[0] or 0) + 1
    contracts = db.execute(f"SELECT {CONTRACT_COLUMNS} FROM contracts WHERE ended = 0 ORDER BY rowid").fetchall()
    last_event = db.execute("SELECT MAX(seq) FROM events").fetchone()[0] or 0
    meta = {r[0]: r[1] for r in db.execute("SELECT key, value FROM meta")}
    return Snapshot(open_orders, closed, next_seq, contracts, last_event, meta)


def _apply(db: sqlite3.Connection, ch: Changes) -> None:
    if ch.new_orders:
        db.executemany(f"INSERT INTO orders ({ORDER_COLUMNS}) VALUES ({','.join('?' * 14)})", ch.new_orders)
    if ch.order_updates:
        db.executemany("UPDATE orders SET remaining = ?, status = ?, uncovered = ? WHERE id = ?", ch.order_updates)
    if ch.new_contracts:
        db.executemany(f"INSERT INTO contracts ({CONTRACT_COLUMNS}) VALUES ({','.join('?' * 15)})", ch.new_contracts)
    if ch.contract_ends:
        db.executemany(
            "UPDATE contracts SET ended = 1, outcome = ?, delivered_wh = ? WHERE contract_id = ?", ch.contract_ends
        )
    if ch.events:
        db.executemany("INSERT INTO events (seq, meter, payload) VALUES (?, ?, ?)", ch.events)
    if ch.meta:
        db.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            list(ch.meta.items()),
        )


def partners_json(partners: Iterable[str]) -> str:
    return json.dumps(sorted(partners), separators=(",", ":"))
