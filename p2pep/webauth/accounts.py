"""Making an account outside a running service (the operator's CLI, the scenario runner)."""

from __future__ import annotations

import asyncio
import time

from p2pep.webauth.names import name_problem, normalize_name
from p2pep.webauth.passwords import Passwords, password_problem
from p2pep.webauth.store import AuthStore


class AccountError(ValueError):
    """A name or password that may not be used (the message says why)."""


async def set_account(db_path: str, name: str, password: str, passwords: Passwords | None = None) -> str:
    """Create account ``name`` in the store at ``db_path``, or set its password (ending its
    sessions) if it exists; returns the stored (normalized) name."""
    name = normalize_name(name)
    if (problem := name_problem(name)) is not None:
        raise AccountError(f"name: {problem}")
    if (problem := password_problem(password)) is not None:
        raise AccountError(f"password: {problem}")
    digest = await asyncio.to_thread((passwords or Passwords()).hash, password)
    store = await AuthStore.open(db_path)
    try:
        await store.upsert_account(name, digest, int(time.time() * 1000))
    finally:
        await store.close()
    return name
