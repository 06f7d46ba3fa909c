"""The meter's SQLite database: registers, reading outbox, contracts, invoices,
payments and orders.

Each tick's reading is written with the register snapshot and the contracts'
attribution in one transaction, *before* it is sent: a seq is never reused and a
reading is never lost, whatever happens to the process or the link.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from p2pep.canonical import canonical_json
from p2pep.metering.contract_book import ContractView, Party
from p2pep.metering.ordering import PlacedOrder
from p2pep.metering.readings import Reading, SignedReading
from p2pep.metering.registers import RegisterSnapshot
from p2pep.settling.contracts import ContractState, ContractTerms
from p2pep.sqlitedb import Database, Schema

TABLES = """
CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
  seq INTEGER PRIMARY KEY, import_wh INTEGER NOT NULL, export_wh INTEGER NOT NULL,
  timestamp_ms INTEGER NOT NULL, signature BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS contracts (
  contract_id TEXT PRIMARY KEY, party TEXT NOT NULL, terms_json TEXT NOT NULL, signature BLOB NOT NULL,
  signed_ms INTEGER NOT NULL, state TEXT NOT NULL, delivered_wh INTEGER NOT NULL, reported_paid_wh INTEGER NOT NULL,
  reported_paid_msat INTEGER NOT NULL, reported_increments INTEGER NOT NULL, end_reason TEXT NOT NULL,
  supplier_node TEXT NOT NULL, consumer_node TEXT NOT NULL, matcher_tier INTEGER NOT NULL,
  attributed_wh INTEGER NOT NULL, paid_wh INTEGER NOT NULL, paid_msat INTEGER NOT NULL,
  increments INTEGER NOT NULL, written_off INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS invoices (
  contract_id TEXT NOT NULL, increment INTEGER NOT NULL, from_wh INTEGER NOT NULL, to_wh INTEGER NOT NULL,
  amount_msat INTEGER NOT NULL, payment_request TEXT NOT NULL, payment_hash TEXT NOT NULL,
  settled INTEGER NOT NULL DEFAULT 0, created_ms INTEGER NOT NULL, settled_ms INTEGER,
  PRIMARY KEY (contract_id, increment)
);
CREATE TABLE IF NOT EXISTS payments (
  contract_id TEXT NOT NULL, increment INTEGER NOT NULL, from_wh INTEGER NOT NULL, to_wh INTEGER NOT NULL,
  amount_msat INTEGER NOT NULL, payment_request TEXT NOT NULL, payment_hash TEXT NOT NULL,
  preimage TEXT NOT NULL DEFAULT '', fee_msat INTEGER NOT NULL DEFAULT 0, status TEXT NOT NULL,
  detail TEXT NOT NULL DEFAULT '', created_ms INTEGER NOT NULL, PRIMARY KEY (contract_id, increment)
);
CREATE TABLE IF NOT EXISTS orders (
  order_id TEXT PRIMARY KEY, side TEXT NOT NULL, energy_wh INTEGER NOT NULL,
  placed_ms INTEGER NOT NULL, expiry_ms INTEGER NOT NULL
);
"""
SCHEMA = Schema("meter", 1, TABLES)
"""Version 1: the tables above. A change to them is a new version with its migration step."""

_PUT_KV = "INSERT INTO kv VALUES (?,?) ON CONFLICT(k) DO UPDATE SET v=excluded.v"
_VIEW_COLUMNS = [f.name for f in fields(ContractView) if f.name not in ("terms", "party", "state")]
_TERMS_COLUMNS = ["supplier_node", "consumer_node"]
"""Stored for people reading the database; always the signed terms' nodes, never read back."""


@dataclass(frozen=True)
class InvoiceRow:
    contract_id: str
    increment: int
    from_wh: int
    to_wh: int
    amount_msat: int
    payment_request: str
    payment_hash: str
    settled: bool
    created_ms: int
    settled_ms: int | None = None


PENDING, SUCCEEDED, FAILED = "pending", "succeeded", "failed"


@dataclass(frozen=True)
class PaymentRow:
    contract_id: str
    increment: int
    from_wh: int
    to_wh: int
    amount_msat: int
    payment_request: str
    payment_hash: str
    preimage: str
    fee_msat: int
    status: str
    detail: str
    created_ms: int


class MeterStore:
    """The meter's tables over one :class:`~p2pep.sqlitedb.Database`.

    Concurrency rule (that of :mod:`p2pep.sqlitedb`): the tick loop, the reading sender,
    the contract desk, billing and the household app call this store concurrently; every
    method is one serialised read or one transaction (a tick's registers, outbox reading and
    attribution together), and no caller sees another's half-written state.
    """

    def __init__(self, db: Database, meter_id: str) -> None:
        self.db = db
        self.meter_id = meter_id

    @classmethod
    async def open(cls, path: str, meter_id: str) -> MeterStore:
        return cls(await Database.open(path, SCHEMA), meter_id)

    async def close(self) -> None:
        await self.db.close()

    # -- key/value -----------------------------------------------------------------------

    async def get(self, key: str) -> Any | None:
        v = await self.db.scalar("SELECT v FROM kv WHERE k=?", (key,))
        return json.loads(v) if v is not None else None

    async def put(self, key: str, value: Any) -> None:
        await self.db.execute(_PUT_KV, (key, json.dumps(value)))

    # -- registers and outbox ----------------------------------------------------------------

    async def registers(self) -> RegisterSnapshot | None:
        doc = await self.get("registers")
        return RegisterSnapshot(**doc) if doc else None

    async def save_registers(self, snap: RegisterSnapshot) -> None:
        await self.put("registers", asdict(snap))

    async def save_tick(
        self, snap: RegisterSnapshot, signed: SignedReading | None, attributed: Mapping[str, int]
    ) -> None:
        """One transaction: the register snapshot, the reading into the outbox, and the
        contracts' attributed Wh (cumulative values)."""
        async with self.db.transaction() as tx:
            await tx.execute(_PUT_KV, ("registers", json.dumps(asdict(snap))))
            if signed is not None:
                r = signed.reading
                await tx.execute(
                    "INSERT INTO outbox VALUES (?,?,?,?,?)",
                    (r.seq, r.import_wh, r.export_wh, r.timestamp_ms, signed.signature),
                )
            if attributed:
                await tx.executemany(
                    "UPDATE contracts SET attributed_wh=? WHERE contract_id=?",
                    [(wh, cid) for cid, wh in attributed.items()],
                )

    async def outbox(self, after_seq: int = 0, limit: int = 500) -> list[SignedReading]:
        rows = await self.db.fetchall(
            "SELECT seq, import_wh, export_wh, timestamp_ms, signature FROM outbox WHERE seq>? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )
        return [SignedReading(Reading(self.meter_id, s, i, e, t), bytes(sig)) for s, i, e, t, sig in rows]

    async def outbox_delete(self, seq: int) -> None:
        await self.db.execute("DELETE FROM outbox WHERE seq=?", (seq,))

    async def outbox_size(self) -> int:
        return int(await self.db.scalar("SELECT COUNT(*) FROM outbox", default=0))

    # -- contracts -------------------------------------------------------------------------------

    async def save_contract(self, v: ContractView) -> None:
        await self.db.execute(*_save_contract(v))

    async def contracts(self) -> list[ContractView]:
        cols = ["party", "terms_json", "state", *_VIEW_COLUMNS]
        rows = await self.db.fetchall(f"SELECT {','.join(cols)} FROM contracts ORDER BY signed_ms")
        out = []
        for party, terms_json, state, *rest in rows:
            kw = dict(zip(_VIEW_COLUMNS, rest))
            kw["signature"] = bytes(kw["signature"])
            kw["written_off"] = bool(kw["written_off"])
            terms = ContractTerms.from_canonical(json.loads(terms_json))
            out.append(ContractView(terms=terms, party=Party(party), state=ContractState(state), **kw))
        return out

    # -- invoices (as supplier) -------------------------------------------------------------------

    async def invoices(self, contract_id: str | None = None, unsettled_only: bool = False) -> list[InvoiceRow]:
        where, args = [], []
        if contract_id:
            where.append("contract_id=?")
            args.append(contract_id)
        if unsettled_only:
            where.append("settled=0")
        sql = "SELECT * FROM invoices" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY created_ms"
        rows = await self.db.fetchall(sql, args)
        return [InvoiceRow(r["contract_id"], r["increment"], r["from_wh"], r["to_wh"], r["amount_msat"],
                           r["payment_request"], r["payment_hash"], bool(r["settled"]), r["created_ms"],
                           r["settled_ms"]) for r in rows]

    async def put_invoice(self, inv: InvoiceRow) -> None:
        await self.db.execute(
            "INSERT OR REPLACE INTO invoices VALUES (?,?,?,?,?,?,?,?,?,?)",
            (inv.contract_id, inv.increment, inv.from_wh, inv.to_wh, inv.amount_msat, inv.payment_request,
             inv.payment_hash, int(inv.settled), inv.created_ms, inv.settled_ms),
        )

    async def drop_invoice(self, contract_id: str, increment: int) -> None:
        """Forget an unpaid increment's invoice (cancelled on the node): asked again, the
        increment is invoiced anew."""
        await self.db.execute("DELETE FROM invoices WHERE contract_id=? AND increment=? AND settled=0",
                              (contract_id, increment))

    async def invoice(self, contract_id: str, increment: int) -> InvoiceRow | None:
        r = await self.db.fetchone("SELECT * FROM invoices WHERE contract_id=? AND increment=?",
                                   (contract_id, increment))
        return None if r is None else InvoiceRow(r["contract_id"], r["increment"], r["from_wh"], r["to_wh"],
                                                 r["amount_msat"], r["payment_request"], r["payment_hash"],
                                                 bool(r["settled"]), r["created_ms"], r["settled_ms"])

    async def invoice_settled(self, contract_id: str, increment: int, settled_ms: int,
                              view: ContractView | None = None) -> None:
        """The invoice is paid; with ``view``, the contract's paid totals too, in the same commit
        (one fsync: this is on the path of every increment)."""
        async with self.db.transaction() as tx:
            await tx.execute("UPDATE invoices SET settled=1, settled_ms=? WHERE contract_id=? AND increment=?",
                             (settled_ms, contract_id, increment))
            if view is not None:
                await tx.execute(*_save_contract(view))

    # -- payments (as consumer) -------------------------------------------------------------------

    async def payments(self, contract_id: str | None = None) -> list[PaymentRow]:
        sql = "SELECT * FROM payments" + (" WHERE contract_id=?" if contract_id else "") + " ORDER BY created_ms"
        rows = await self.db.fetchall(sql, (contract_id,) if contract_id else ())
        return [PaymentRow(*r) for r in rows]

    async def put_payment(self, p: PaymentRow, view: ContractView | None = None) -> None:
        """Write a payment; with ``view`` (a payment made), the contract's paid totals too, in the
        same commit."""
        async with self.db.transaction() as tx:
            await tx.execute(
                "INSERT OR REPLACE INTO payments VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (p.contract_id, p.increment, p.from_wh, p.to_wh, p.amount_msat, p.payment_request, p.payment_hash,
                 p.preimage, p.fee_msat, p.status, p.detail, p.created_ms),
            )
            if view is not None:
                await tx.execute(*_save_contract(view))

    # -- orders ----------------------------------------------------------------------------------

    async def put_order(self, o: PlacedOrder) -> None:
        await self.db.execute(
            "INSERT OR REPLACE INTO orders VALUES (?,?,?,?,?)",
            (o.order_id, o.side, o.energy_wh, o.placed_ms, o.expiry_ms),
        )

    async def delete_order(self, order_id: str) -> None:
        await self.db.execute("DELETE FROM orders WHERE order_id=?", (order_id,))

    async def orders(self, since_ms: int = 0) -> list[PlacedOrder]:
        rows = await self.db.fetchall(
            "SELECT order_id, side, energy_wh, placed_ms, expiry_ms FROM orders WHERE placed_ms>=? ORDER BY placed_ms",
            (since_ms,),
        )
        return [PlacedOrder(*r) for r in rows]

    async def prune_orders(self, before_ms: int) -> None:
        await self.db.execute("DELETE FROM orders WHERE placed_ms<?", (before_ms,))


def _save_contract(v: ContractView) -> tuple[str, list[Any]]:
    """The upsert of a contract's row: its terms and the meter's running totals."""
    values = [getattr(v, c) for c in _VIEW_COLUMNS + _TERMS_COLUMNS]
    cols = ["contract_id", "party", "terms_json", "state", *_VIEW_COLUMNS, *_TERMS_COLUMNS]
    row = [v.contract_id, v.party.value, canonical_json(v.terms.canonical()).decode(), v.state.value, *values]
    row = [int(x) if isinstance(x, bool) else x for x in row]
    updates = ",".join(f"{c}=excluded.{c}" for c in cols[1:])
    return (f"INSERT INTO contracts ({','.join(cols)}) VALUES ({','.join('?' * len(cols))}) "
            f"ON CONFLICT(contract_id) DO UPDATE SET {updates}", row)
