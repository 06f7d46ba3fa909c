"""The portal's store: accounts and sessions (:class:`p2pep.webauth.store.AuthStore`) plus
which meters belong to which account, in one SQLite file.

Invariant: a meter belongs to at most one account (``meter_id`` is the key); it is added
only after the meter accepted a pairing code (:mod:`services.portal.web`).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from p2pep.sqlitedb import Schema
from p2pep.webauth.store import TABLES as AUTH_TABLES
from p2pep.webauth.store import AuthStore

METERS_SCHEMA = """
CREATE TABLE IF NOT EXISTS meters (
    meter_id TEXT PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    paired_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS meters_account ON meters(account_id);
"""

SCHEMA = Schema("portal", 1, AUTH_TABLES + METERS_SCHEMA)
"""Version 1: accounts and sessions (:mod:`p2pep.webauth.store`) and the meters above; its own
version, since the portal's file and the console's evolve apart."""


class PairedElsewhere(Exception):
    """The meter belongs to another account."""


@dataclass(frozen=True)
class PairedMeter:
    meter_id: str
    paired_ms: int


class PortalStore(AuthStore):
    @classmethod
    async def open_portal(cls, path: str) -> PortalStore:
        base = await AuthStore.open(path, SCHEMA)
        return cls(base.db)

    async def meters(self, account_id: int) -> list[PairedMeter]:
        rows = await self.db.fetchall("SELECT meter_id, paired_ms FROM meters WHERE account_id = ? ORDER BY meter_id",
                                      (account_id,))
        return [PairedMeter(r["meter_id"], r["paired_ms"]) for r in rows]

    async def owner(self, meter_id: str) -> int | None:
        owner = await self.db.scalar("SELECT account_id FROM meters WHERE meter_id = ?", (meter_id,))
        return None if owner is None else int(owner)

    async def owns(self, account_id: int, meter_id: str) -> bool:
        return await self.owner(meter_id) == account_id

    async def add_meter(self, account_id: int, meter_id: str, now_ms: int) -> None:
        """Pair ``meter_id`` with the account; :class:`PairedElsewhere` if another holds it."""
        try:
            await self.db.execute("INSERT INTO meters (meter_id, account_id, paired_ms) VALUES (?, ?, ?)",
                                   (meter_id, account_id, now_ms))
        except sqlite3.IntegrityError:
            if await self.owner(meter_id) != account_id:
                raise PairedElsewhere(meter_id) from None

    async def remove_meter(self, account_id: int, meter_id: str) -> bool:
        w = await self.db.execute("DELETE FROM meters WHERE meter_id = ? AND account_id = ?", (meter_id, account_id))
        return w.rowcount > 0
