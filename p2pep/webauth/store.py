"""Accounts and server-side sessions, in one SQLite file (:class:`p2pep.sqlitedb.Database`).

* An account: a normalized name (unique), an argon2 hash, the time it was made.
* A session: the SHA-256 of its random token (the cookie; the token itself is never
  stored), the account, its CSRF token, and an absolute expiry. An expired session is
  gone: :meth:`AuthStore.session` deletes it when it finds it, :meth:`purge_expired`
  deletes the rest.

A service may keep its own tables in the same file: it opens it with its own :class:`Schema`
whose tables include :data:`TABLES` (the portal's meters, :mod:`services.portal.store`).
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from dataclasses import dataclass

from p2pep.sqlitedb import Database, Schema

TABLES = """
CREATE TABLE IF NOT EXISTS accounts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    token_sha256 TEXT PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    csrf_token TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_expiry ON sessions(expires_ms);
"""
SCHEMA = Schema("webauth", 1, TABLES)
"""Version 1: the tables above. A change to them is a new version with its migration step."""


class NameTaken(Exception):
    """An account of that name exists."""


@dataclass(frozen=True)
class Account:
    id: int
    name: str
    password_hash: str


@dataclass(frozen=True)
class Session:
    account_id: int
    account_name: str
    csrf_token: str
    expires_ms: int


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class AuthStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    @classmethod
    async def open(cls, path: str, schema: Schema = SCHEMA) -> AuthStore:
        return cls(await Database.open(path, schema, foreign_keys=True))

    async def close(self) -> None:
        await self.db.close()

    # --- accounts ------------------------------------------------------------------------------
    async def create_account(self, name: str, password_hash: str, now_ms: int) -> Account:
        try:
            w = await self.db.execute("INSERT INTO accounts (name, password_hash, created_ms) VALUES (?, ?, ?)",
                                      (name, password_hash, now_ms))
        except sqlite3.IntegrityError:
            raise NameTaken(name) from None
        assert w.lastrowid is not None
        return Account(w.lastrowid, name, password_hash)

    async def account(self, name: str) -> Account | None:
        row = await self.db.fetchone("SELECT id, name, password_hash FROM accounts WHERE name = ?", (name,))
        return None if row is None else Account(row["id"], row["name"], row["password_hash"])

    async def set_password_hash(self, account_id: int, password_hash: str) -> None:
        await self.db.execute("UPDATE accounts SET password_hash = ? WHERE id = ?", (password_hash, account_id))

    async def upsert_account(self, name: str, password_hash: str, now_ms: int) -> Account:
        """Create ``name``, or set its password (and end its sessions) if it exists."""
        async with self.db.transaction() as tx:
            row = await tx.fetchone("SELECT id FROM accounts WHERE name = ?", (name,))
            if row is None:
                w = await tx.execute("INSERT INTO accounts (name, password_hash, created_ms) VALUES (?, ?, ?)",
                                     (name, password_hash, now_ms))
                assert w.lastrowid is not None
                return Account(w.lastrowid, name, password_hash)
            await tx.execute("UPDATE accounts SET password_hash = ? WHERE id = ?", (password_hash, row["id"]))
            await tx.execute("DELETE FROM sessions WHERE account_id = ?", (row["id"],))
            return Account(row["id"], name, password_hash)

    # --- sessions ------------------------------------------------------------------------------
    async def create_session(self, account_id: int, now_ms: int, ttl_ms: int) -> tuple[str, Session]:
        """A new session; returns its token (for the cookie) and the session."""
        token, csrf = new_token(), new_token()
        await self.db.execute(
            "INSERT INTO sessions (token_sha256, account_id, csrf_token, created_ms, expires_ms) VALUES (?, ?, ?, ?, ?)",
            (token_digest(token), account_id, csrf, now_ms, now_ms + ttl_ms))
        row = await self.db.fetchone("SELECT name FROM accounts WHERE id = ?", (account_id,))
        assert row is not None
        return token, Session(account_id, row["name"], csrf, now_ms + ttl_ms)

    async def session(self, token: str, now_ms: int) -> Session | None:
        """The live session of ``token``; None if unknown or expired (an expired one is deleted)."""
        digest = token_digest(token)
        row = await self.db.fetchone(
            "SELECT s.account_id, a.name, s.csrf_token, s.expires_ms FROM sessions s "
            "JOIN accounts a ON a.id = s.account_id WHERE s.token_sha256 = ?", (digest,))
        if row is None:
            return None
        if row["expires_ms"] <= now_ms:
            await self.db.execute("DELETE FROM sessions WHERE token_sha256 = ?", (digest,))
            return None
        return Session(row["account_id"], row["name"], row["csrf_token"], row["expires_ms"])

    async def delete_session(self, token: str) -> None:
        await self.db.execute("DELETE FROM sessions WHERE token_sha256 = ?", (token_digest(token),))

    async def purge_expired(self, now_ms: int) -> int:
        return (await self.db.execute("DELETE FROM sessions WHERE expires_ms <= ?", (now_ms,))).rowcount
