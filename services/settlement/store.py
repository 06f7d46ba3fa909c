"""Settlement's SQLite store: meters, signed readings, contracts, payments, a little key/value state."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from p2pep.metering.readings import Reading
from p2pep.sqlitedb import Database, Schema, Transaction

METERS = """
CREATE TABLE IF NOT EXISTS meters (
  meter_id TEXT PRIMARY KEY, pubkey TEXT NOT NULL, node_pubkey TEXT NOT NULL,
  address TEXT NOT NULL, role TEXT NOT NULL, node_address TEXT NOT NULL DEFAULT '',
  latitude REAL, longitude REAL
)
"""
"""The registered meters; ``latitude``/``longitude``: where each is installed, in degrees
(NULL: it never told)."""

TABLES = METERS + """;
CREATE TABLE IF NOT EXISTS readings (
  meter_id TEXT NOT NULL, seq INTEGER NOT NULL, import_wh INTEGER NOT NULL, export_wh INTEGER NOT NULL,
  timestamp_ms INTEGER NOT NULL, signature BLOB NOT NULL, PRIMARY KEY (meter_id, seq)
);
CREATE INDEX IF NOT EXISTS readings_time ON readings (meter_id, timestamp_ms);
CREATE TABLE IF NOT EXISTS contracts (
  contract_id TEXT PRIMARY KEY, terms_json TEXT NOT NULL, state TEXT NOT NULL,
  consumer_sig BLOB, supplier_sig BLOB, activated_ms INTEGER, ended_ms INTEGER, end_reason TEXT,
  consumer_wh INTEGER NOT NULL DEFAULT 0, supplier_wh INTEGER NOT NULL DEFAULT 0,
  closed_at_wh INTEGER, summary_json TEXT, matcher_tier INTEGER NOT NULL DEFAULT 0,
  consumer TEXT NOT NULL DEFAULT '', supplier TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS payments (
  contract_id TEXT NOT NULL, increment INTEGER NOT NULL, from_wh INTEGER NOT NULL, to_wh INTEGER NOT NULL,
  amount_msat INTEGER NOT NULL, payment_hash TEXT, payment_request TEXT, preimage TEXT,
  fee_msat INTEGER NOT NULL DEFAULT 0, settled_ms INTEGER, PRIMARY KEY (contract_id, increment)
);
CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT NOT NULL);
"""

OUTBOX = """
CREATE TABLE IF NOT EXISTS outbox (
  kind TEXT NOT NULL, contract_id TEXT NOT NULL, payload_json TEXT NOT NULL, PRIMARY KEY (kind, contract_id)
);
"""
"""What settlement still owes others for a contract (an anchor leaf, the matcher's
ReportContractEnd): written in the transaction that changes the contract, deleted once
delivered. One row per (kind, contract), so a delivery is never queued twice."""

INDEXES = """
CREATE INDEX IF NOT EXISTS contracts_consumer ON contracts (consumer);
CREATE INDEX IF NOT EXISTS contracts_supplier ON contracts (supplier);
CREATE INDEX IF NOT EXISTS contracts_open ON contracts (state) WHERE summary_json IS NULL;
CREATE INDEX IF NOT EXISTS payments_settled ON payments (settled_ms, contract_id, increment)
  WHERE preimage IS NOT NULL;
"""
"""What lets settlement read ended contracts and payments from the store on demand, page by
page, instead of holding them in memory: contracts by party, the open ones (loaded at start),
settled payments in the order they settled."""


def _parties(conn: sqlite3.Connection) -> None:
    """Step 2 -> 3: each contract's consumer and supplier as columns (from its terms), and the
    indexes above. Idempotent: a file already carrying the columns keeps them."""
    have = {r[1] for r in conn.execute("PRAGMA table_info(contracts)")}
    for col in ("consumer", "supplier"):
        if col not in have:
            conn.execute(f"ALTER TABLE contracts ADD COLUMN {col} TEXT NOT NULL DEFAULT ''")
    conn.execute("UPDATE contracts SET consumer=json_extract(terms_json, '$.consumer'), "
                 "supplier=json_extract(terms_json, '$.supplier') WHERE consumer='' OR supplier=''")
    for stmt in INDEXES.split(";"):
        if stmt.strip():
            conn.execute(stmt)


def _locations(conn: sqlite3.Connection) -> None:
    """Step 3 -> 4: each meter's registered location (degrees; NULL: never told), NULL for
    every meter registered before. Idempotent, like step 2."""
    have = {r[1] for r in conn.execute("PRAGMA table_info(meters)")}
    if not have:  # (a file that never had the table: make it as it is now)
        conn.execute(METERS)
        return
    for col in ("latitude", "longitude"):
        if col not in have:
            conn.execute(f"ALTER TABLE meters ADD COLUMN {col} REAL")


SCHEMA = Schema("settlement", 4, TABLES + OUTBOX + INDEXES, {1: OUTBOX, 2: _parties, 3: _locations})
"""Version 1: the tables above but the outbox; version 2 adds the outbox (migration step 1);
version 3 adds the contracts' party columns and the paging indexes (step 2); version 4 adds
the meters' locations (step 3)."""

OPEN = "summary_json IS NULL AND state <> 'rejected'"
"""A contract settlement still works on (proposed, active, or ended with its last increment
not yet settled): in memory while settlement runs. Every other one is read from here."""


@dataclass(frozen=True)
class OutboxItem:
    kind: str  # "anchor_contract", "anchor_settlement", "matcher_end"
    contract_id: str
    payload: dict[str, Any]


METER_COLUMNS = "meter_id, pubkey, node_pubkey, address, role, node_address, latitude, longitude"


@dataclass(frozen=True)
class MeterRow:
    meter_id: str
    pubkey: str
    node_pubkey: str
    address: str
    role: str
    node_address: str = ""
    latitude: float | None = None  # where it is installed, in degrees; None: never told
    longitude: float | None = None


class Store:
    """Settlement's tables over one :class:`~p2pep.sqlitedb.Database`.

    Concurrency rule (that of :mod:`p2pep.sqlitedb`): contract workers, reading streams and
    the gRPC handlers call this store concurrently; every method is one serialised read or one
    transaction, so a reading and the energy it adds to contracts are stored together or not at
    all, and no caller ever sees another's half-written state. Acknowledgements follow commits
    (WAL, ``synchronous=FULL``).
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    @classmethod
    async def open(cls, path: str, busy_timeout_ms: int = 5000) -> Store:
        return cls(await Database.open(path, SCHEMA, busy_timeout_ms=busy_timeout_ms))

    async def close(self) -> None:
        await self.db.close()

    # --- meters ---------------------------------------------------------------------
    async def upsert_meter(self, m: MeterRow) -> None:
        """Insert or update a meter (its pubkey stays); a row without a location keeps the one
        stored (a re-registration that does not tell it)."""
        await self.db.execute(
            f"INSERT INTO meters ({METER_COLUMNS}) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(meter_id) DO UPDATE SET "
            "node_pubkey=excluded.node_pubkey, address=excluded.address, role=excluded.role, "
            "node_address=excluded.node_address, "
            "latitude=coalesce(excluded.latitude, latitude), longitude=coalesce(excluded.longitude, longitude)",
            (m.meter_id, m.pubkey, m.node_pubkey, m.address, m.role, m.node_address, m.latitude, m.longitude),
        )

    async def meters(self) -> list[MeterRow]:
        return [MeterRow(*r) for r in await self.db.fetchall(f"SELECT {METER_COLUMNS} FROM meters ORDER BY meter_id")]

    # --- readings -------------------------------------------------------------------
    async def last_reading(self, meter_id: str) -> Reading | None:
        row = await self.db.fetchone(
            "SELECT meter_id, seq, import_wh, export_wh, timestamp_ms FROM readings "
            "WHERE meter_id=? ORDER BY seq DESC LIMIT 1", (meter_id,)
        )
        return Reading(*row) if row else None

    async def reading(self, meter_id: str, seq: int) -> Reading | None:
        row = await self.db.fetchone(
            "SELECT meter_id, seq, import_wh, export_wh, timestamp_ms FROM readings WHERE meter_id=? AND seq=?",
            (meter_id, seq),
        )
        return Reading(*row) if row else None

    async def accept_reading(
        self, r: Reading, signature: bytes, attributions: Iterable[tuple[str, str, int]]
    ) -> None:
        """Store a reading and the energy it adds to contracts, in one transaction."""
        async with self.db.transaction() as tx:
            await tx.execute(
                "INSERT INTO readings VALUES (?,?,?,?,?,?)",
                (r.meter_id, r.seq, r.import_wh, r.export_wh, r.timestamp_ms, signature),
            )
            for contract_id, side, wh in attributions:
                col = "consumer_wh" if side == "consumer" else "supplier_wh"
                await tx.execute(f"UPDATE contracts SET {col}={col}+? WHERE contract_id=?", (wh, contract_id))

    async def register_at(self, meter_id: str, column: str, t_ms: int) -> int:
        """The ``import_wh``/``export_wh`` register as of time ``t_ms`` (0 before any reading)."""
        if column not in ("import_wh", "export_wh"):
            raise ValueError(f"column: expected import_wh or export_wh, got {column!r}")
        return int(await self.db.scalar(
            f"SELECT {column} FROM readings WHERE meter_id=? AND timestamp_ms<=? ORDER BY seq DESC LIMIT 1",
            (meter_id, t_ms), default=0,
        ))

    async def reading_count(self, meter_id: str, t0: int, t1: int) -> int:
        return int(await self.db.scalar(
            "SELECT COUNT(*) FROM readings WHERE meter_id=? AND timestamp_ms>? AND timestamp_ms<=?",
            (meter_id, t0, t1), default=0,
        ))

    # --- contracts ------------------------------------------------------------------
    async def save_contract(self, row: dict[str, Any], outbox: Iterable[OutboxItem] = ()) -> None:
        """Store the contract and queue ``outbox`` (what it now owes others), in one transaction."""
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        updates = ", ".join(f"{c}=excluded.{c}" for c in row if c != "contract_id")
        async with self.db.transaction() as tx:
            await tx.execute(
                f"INSERT INTO contracts ({cols}) VALUES ({marks}) ON CONFLICT(contract_id) DO UPDATE SET {updates}",
                tuple(row.values()),
            )
            await _enqueue(tx, outbox)

    # --- outbox ---------------------------------------------------------------------
    async def enqueue(self, items: Iterable[OutboxItem]) -> None:
        async with self.db.transaction() as tx:
            await _enqueue(tx, items)

    async def outbox(self) -> list[OutboxItem]:
        rows = await self.db.fetchall("SELECT kind, contract_id, payload_json FROM outbox ORDER BY rowid")
        return [OutboxItem(r[0], r[1], json.loads(r[2])) for r in rows]

    async def delivered(self, item: OutboxItem) -> None:
        await self.db.execute("DELETE FROM outbox WHERE kind=? AND contract_id=?", (item.kind, item.contract_id))

    async def contracts(self) -> list[dict[str, Any]]:
        """Every contract (oldest first): for tools and tests; settlement itself reads pages."""
        return [dict(r) for r in await self.db.fetchall("SELECT rowid AS pos, * FROM contracts ORDER BY rowid")]

    async def open_contracts(self) -> list[dict[str, Any]]:
        """The contracts settlement still works on (:data:`OPEN`), oldest first."""
        return [dict(r) for r in await self.db.fetchall(
            f"SELECT rowid AS pos, * FROM contracts WHERE {OPEN} ORDER BY rowid")]

    async def contract(self, contract_id: str) -> dict[str, Any] | None:
        row = await self.db.fetchone("SELECT rowid AS pos, * FROM contracts WHERE contract_id=?", (contract_id,))
        return dict(row) if row else None

    async def contract_page(self, after: int, limit: int, meter_id: str = "",
                            states: Iterable[str] = ()) -> list[dict[str, Any]]:
        """Up to ``limit`` contracts proposed after position ``after`` (the ``pos`` of the last
        one of the previous page; 0 for the first), oldest first, of ``meter_id`` (either side)
        and in ``states`` when given."""
        where: list[str] = ["rowid > ?"]
        args: list[Any] = [after]
        if meter_id:
            where.append("(consumer = ? OR supplier = ?)")
            args += [meter_id, meter_id]
        want = sorted(set(states))
        if want:
            where.append(f"state IN ({','.join('?' for _ in want)})")
            args += want
        return [dict(r) for r in await self.db.fetchall(
            f"SELECT rowid AS pos, * FROM contracts WHERE {' AND '.join(where)} ORDER BY rowid LIMIT ?",
            (*args, limit))]

    async def contract_states(self) -> dict[str, int]:
        """How many contracts are in each state (for the gauges, at start)."""
        return {r[0]: r[1] for r in await self.db.fetchall("SELECT state, COUNT(*) FROM contracts GROUP BY state")}

    async def defaults_by_consumer(self) -> dict[str, int]:
        return {r[0]: r[1] for r in await self.db.fetchall(
            "SELECT consumer, COUNT(*) FROM contracts WHERE state='defaulted' GROUP BY consumer")}

    # --- payments -------------------------------------------------------------------
    async def payment_intent(self, contract_id: str, inc: int, from_wh: int, to_wh: int, amount: int,
                             payment_hash: str | None = None, payment_request: str | None = None) -> None:
        """An increment to be paid; with its invoice, both in one commit (the payment worker writes
        them together once the supplier has invoiced: asked again after a crash, the supplier's
        meter answers the same increment with the same invoice). An increment already on record
        gets the new invoice, and its range, which is the invoice's."""
        await self.db.execute(
            "INSERT INTO payments (contract_id, increment, from_wh, to_wh, amount_msat, payment_hash, payment_request) "
            "VALUES (?,?,?,?,?,?,?) ON CONFLICT(contract_id, increment) DO UPDATE SET from_wh=excluded.from_wh, "
            "to_wh=excluded.to_wh, amount_msat=excluded.amount_msat, payment_hash=excluded.payment_hash, "
            "payment_request=excluded.payment_request WHERE payments.preimage IS NULL",
            (contract_id, inc, from_wh, to_wh, amount, payment_hash, payment_request),
        )

    async def payment_invoice(self, contract_id: str, inc: int, payment_hash: str, payment_request: str) -> None:
        await self.db.execute(
            "UPDATE payments SET payment_hash=?, payment_request=? WHERE contract_id=? AND increment=?",
            (payment_hash, payment_request, contract_id, inc),
        )

    async def payment_settled(self, contract_id: str, inc: int, preimage: str, fee_msat: int, t_ms: int) -> None:
        await self.db.execute(
            "UPDATE payments SET preimage=?, fee_msat=?, settled_ms=? WHERE contract_id=? AND increment=?",
            (preimage, fee_msat, t_ms, contract_id, inc),
        )

    async def drop_unsettled(self, contract_id: str, inc: int) -> None:
        await self.db.execute(
            "DELETE FROM payments WHERE contract_id=? AND increment=? AND preimage IS NULL", (contract_id, inc)
        )

    async def payment(self, contract_id: str, inc: int) -> dict[str, Any] | None:
        row = await self.db.fetchone("SELECT * FROM payments WHERE contract_id=? AND increment=?", (contract_id, inc))
        return dict(row) if row else None

    async def settled_payments(self, contract_ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
        """The settled payments of each of ``contract_ids`` (a page's worth), by increment."""
        ids = sorted(set(contract_ids))
        out: dict[str, list[dict[str, Any]]] = {c: [] for c in ids}
        for i in range(0, len(ids), 500):  # well under SQLite's limit on bound parameters
            chunk = ids[i:i + 500]
            for r in await self.db.fetchall(
                    f"SELECT * FROM payments WHERE contract_id IN ({','.join('?' for _ in chunk)}) "
                    "AND preimage IS NOT NULL ORDER BY contract_id, increment", chunk):
                out[r["contract_id"]].append(dict(r))
        return out

    async def payment_page(self, offset: int, limit: int, contract_id: str = "",
                           meter_id: str = "") -> list[dict[str, Any]]:
        """Settled payments in the order they settled, from ``offset``, with each contract's
        consumer (``payer``) and supplier (``payee``); of one contract and/or one party."""
        where: list[str] = ["p.preimage IS NOT NULL"]
        args: list[str] = []
        if contract_id:
            where.append("p.contract_id = ?")
            args.append(contract_id)
        if meter_id:
            where.append("(c.consumer = ? OR c.supplier = ?)")
            args += [meter_id, meter_id]
        return [dict(r) for r in await self.db.fetchall(
            "SELECT p.*, c.consumer AS payer, c.supplier AS payee FROM payments p "
            f"JOIN contracts c ON c.contract_id = p.contract_id WHERE {' AND '.join(where)} "
            "ORDER BY p.settled_ms, p.contract_id, p.increment LIMIT ? OFFSET ?", (*args, limit, offset))]

    async def payments(self, contract_id: str | None = None) -> list[dict[str, Any]]:
        q = "SELECT * FROM payments"
        args: tuple[Any, ...] = ()
        if contract_id:
            q += " WHERE contract_id=?"
            args = (contract_id,)
        q += " ORDER BY settled_ms IS NULL, settled_ms, contract_id, increment"
        return [dict(r) for r in await self.db.fetchall(q, args)]

    # --- kv -------------------------------------------------------------------------
    async def get(self, k: str, default: str = "") -> str:
        return str(await self.db.scalar("SELECT v FROM kv WHERE k=?", (k,), default=default))

    async def put(self, k: str, v: str) -> None:
        await self.db.execute("INSERT INTO kv VALUES (?,?) ON CONFLICT(k) DO UPDATE SET v=excluded.v", (k, v))


async def _enqueue(tx: Transaction, items: Iterable[OutboxItem]) -> None:
    await tx.executemany("INSERT OR IGNORE INTO outbox (kind, contract_id, payload_json) VALUES (?,?,?)",
                         [(i.kind, i.contract_id, dumps(i.payload)) for i in items])


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))
