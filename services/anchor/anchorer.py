"""The anchor service's logic: batch leaves, anchor roots, track blocks, survive reorgs.

State lives in SQLite (tables ``anchor_leaves``, ``anchor_batches``, ``anchor_txs``,
``anchor_proofs``; the file may be shared with other components).  A batch moves through

    closed --send--> broadcast --mined--> mined --K blocks--> confirmed
       ^                 |                  |                    |
       +---- re-anchor: tx dropped, or its block left the best chain (reorg) ----+

A btcd that is *behind* is not a reorg: one SIGKILLed and started again (in regtest mode with
an empty chain, fetched back from its peer) does not know the anchoring block yet and finds
no transaction, or (it connects hundreds of blocks a second) finds the block in its best chain
a moment after it did not find the transaction. A mined batch counts as orphaned only if btcd
knows its block outside the best chain with its tip standing still, or its chain has reached
the batch's height without it (:meth:`Anchorer._behind`).

An anchoring transaction missing from btcd before it is mined is first published again, the
same transaction from the store (``anchor_txs.raw_hex``): a btcd restarted forgets its mempool,
but the transaction is still the wallet's, its coins spent by it (the wallet could fund no other
while it is unconfirmed). Only a transaction btcd refuses is dropped and replaced.

Re-anchoring publishes the *same root* in a new transaction; the batch's proofs are deleted
when the reorg is seen and rewritten for the new block once it is mined.  If the old
transaction is itself re-mined in the new best chain first, the proofs simply move to it.

Crash safety: leaves and batch membership are committed before anything is sent; a crash
between the wallet publishing and us recording the txid only causes a duplicate anchor of
the same root (harmless), never a lost leaf.

Concurrency: the store is a :class:`~p2pep.sqlitedb.Database` (every read serialised, every
write one transaction: a batch's proofs are replaced, a batch closed or re-anchored, all at once,
never seen half-done by ``proofs_for``); ``_lock`` also keeps one logical operation (adding leaves,
a new block) at a time, since those await the wallet and the chain between transactions.

Privacy: only ``opreturn.encode_payload(root)`` (tag, version, 32-byte root) ever reaches
the wallet; contract ids and leaf kinds stay in the local store.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import structlog

from p2pep.anchor import opreturn
from p2pep.anchor.batching import BatchPolicy, PendingLeaf, close_batches
from p2pep.anchor.chain import AnchorWallet, ChainError, ChainNotFound, ChainRejected, ChainView, TxRelay
from p2pep.anchor.document import LEAF_KINDS, AnchorProof, LeafKind
from p2pep.anchor.merkle import MerkleTree
from p2pep.anchor.records import BatchInfo, StoredProof
from p2pep.lnd.client import LndError
from p2pep.sqlitedb import Database, Schema
from services.anchor.metrics import (
    ANCHOR_REORGS,
    ANCHOR_TXS,
    BATCH_STATES,
    BATCHES,
    LEAVES_ADDED,
    LEAVES_PENDING,
    MIN_CONFIRMATIONS,
    NEWEST_CONFIRMATIONS,
    OLDEST_UNCONFIRMED,
)

log = structlog.get_logger(__name__)

TABLES = """
CREATE TABLE IF NOT EXISTS anchor_batches (
  id INTEGER PRIMARY KEY,
  root BLOB NOT NULL,
  size INTEGER NOT NULL,
  closed_height INTEGER NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('closed', 'broadcast', 'mined', 'confirmed')),
  txid TEXT, sent_height INTEGER, vout INTEGER, block_hash TEXT, height INTEGER,
  reanchors INTEGER NOT NULL DEFAULT 0,
  vsize INTEGER
);
CREATE TABLE IF NOT EXISTS anchor_leaves (
  id INTEGER PRIMARY KEY,
  kind TEXT NOT NULL CHECK (kind IN ('contract', 'settlement')),
  contract_id TEXT NOT NULL,
  leaf_hash BLOB NOT NULL,
  added_height INTEGER NOT NULL,
  batch_id INTEGER REFERENCES anchor_batches(id),
  leaf_index INTEGER,
  UNIQUE (contract_id, kind, leaf_hash)
);
CREATE INDEX IF NOT EXISTS anchor_leaves_pending ON anchor_leaves(batch_id, id);
CREATE TABLE IF NOT EXISTS anchor_txs (
  batch_id INTEGER NOT NULL REFERENCES anchor_batches(id),
  txid TEXT NOT NULL,
  sent_height INTEGER NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('sent', 'mined', 'orphaned', 'dropped')),
  raw_hex TEXT,
  PRIMARY KEY (batch_id, txid)
);
CREATE TABLE IF NOT EXISTS anchor_proofs (
  leaf_id INTEGER PRIMARY KEY REFERENCES anchor_leaves(id),
  contract_id TEXT NOT NULL,
  batch_id INTEGER NOT NULL REFERENCES anchor_batches(id),
  proof_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS anchor_proofs_contract ON anchor_proofs(contract_id);
CREATE INDEX IF NOT EXISTS anchor_proofs_batch ON anchor_proofs(batch_id);
"""


def _vsize_column(conn: sqlite3.Connection) -> None:
    """Step 1 -> 2: ``anchor_batches.vsize``. Idempotent: a file already carrying it keeps it."""
    if "vsize" not in {r[1] for r in conn.execute("PRAGMA table_info(anchor_batches)")}:
        conn.execute("ALTER TABLE anchor_batches ADD COLUMN vsize INTEGER")


def _raw_hex_column(conn: sqlite3.Connection) -> None:
    """Step 2 -> 3: ``anchor_txs.raw_hex``. Idempotent: a file already carrying it keeps it."""
    if "raw_hex" not in {r[1] for r in conn.execute("PRAGMA table_info(anchor_txs)")}:
        conn.execute("ALTER TABLE anchor_txs ADD COLUMN raw_hex TEXT")


SCHEMA = Schema("anchor", 3, TABLES, {1: _vsize_column, 2: _raw_hex_column})
"""Version 1: the tables above without ``anchor_batches.vsize``; version 2 adds it (the mined
anchoring tx's virtual size, NULL until mined or when btcd did not say; migration step 1);
version 3 adds ``anchor_txs.raw_hex`` (the signed tx as sent, to publish it again; NULL for
txs sent before, or when btcd did not return it: such a tx is replaced when lost, as before).
A change to the tables is a new version with its migration step."""


def _hub_away(exc: Exception) -> bool:
    """The hub's lnd could not be reached or is still starting: the batch is sent on a later block."""
    return isinstance(exc, LndError) and exc.unreachable


def _no_confirmed_funds(exc: Exception) -> bool:
    """lnd found no confirmed coins to fund the transaction (it spends confirmed coins only)."""
    return isinstance(exc, LndError) and "insufficient funds" in exc.detail.lower()


def _vsize(raw_tx: dict[str, Any]) -> int | None:
    """The tx's virtual size as btcd's ``getrawtransaction`` gives it (None when it does not)."""
    v = raw_tx.get("vsize")
    return v if isinstance(v, int) and v > 0 else None


@dataclass(frozen=True)
class AnchorerConfig:
    policy: BatchPolicy = BatchPolicy()
    min_confirmations: int = 6  # K: a proof is "confirmed" this many blocks deep
    sat_per_vbyte: int = 1
    watch_depth: int = 144  # mined batches this close to the tip are re-checked for reorgs

    def __post_init__(self) -> None:
        if self.min_confirmations < 1:
            raise ValueError("min_confirmations must be >= 1")
        if self.sat_per_vbyte < 1:
            raise ValueError("sat_per_vbyte must be >= 1")
        if self.watch_depth < self.min_confirmations:
            raise ValueError("watch_depth must be >= min_confirmations")


@dataclass
class _Batch:
    id: int
    root: bytes
    size: int
    state: str
    txid: str | None
    sent_height: int | None
    block_hash: str | None
    height: int | None


class Anchorer:
    def __init__(self, db_path: str, wallet: AnchorWallet, chain: ChainView,
                 config: AnchorerConfig = AnchorerConfig(), relay: TxRelay | None = None) -> None:
        """``relay`` publishes a lost anchoring tx again (btcd); None: a lost tx is replaced."""
        self.db_path = db_path
        self.wallet = wallet
        self.chain = chain
        self.relay = relay
        self.config = config
        self.height = 0  # best height as last seen
        self._db: Database | None = None
        self._lock = asyncio.Lock()  # one logical operation (add leaves, a new block) at a time

    # -- lifecycle ------------------------------------------------------------------------
    async def open(self) -> Anchorer:
        self._db = await Database.open(self.db_path, SCHEMA, foreign_keys=True)
        try:
            self.height = await self.chain.get_best_height()
        except ChainError as exc:
            row = await self._one("SELECT max(added_height) FROM anchor_leaves")
            self.height = int(row[0] or 0) if row else 0
            log.warning("anchor.chain_unavailable_at_start", error=str(exc), height=self.height)
        return self

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def __aenter__(self) -> Anchorer:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def db(self) -> Database:
        if self._db is None:
            raise RuntimeError("Anchorer is not open")
        return self._db

    async def _one(self, sql: str, *args: Any) -> Any:
        return await self.db.fetchone(sql, args)

    async def _all(self, sql: str, *args: Any) -> list[Any]:
        return await self.db.fetchall(sql, args)

    # -- public API -----------------------------------------------------------------------
    async def add_leaf(self, kind: LeafKind, contract_id: str, leaf_hash: bytes) -> bool:
        """Queue a contract or settlement hash for the next batch; False if already queued.

        If this fills the open batch (``max_leaves``) the batch is closed and anchored now.
        """
        return (await self.add_leaves([(kind, contract_id, leaf_hash)]))[0]

    async def add_leaves(self, items: Iterable[tuple[LeafKind, str, bytes]]) -> list[bool]:
        """Bulk :meth:`add_leaf` in one store transaction (validated before anything is stored)."""
        rows = []
        for i, (kind, contract_id, leaf_hash) in enumerate(items):
            if kind not in LEAF_KINDS:
                raise ValueError(f"leaves[{i}].kind: expected one of {list(LEAF_KINDS)}, got {kind!r}")
            if not isinstance(leaf_hash, bytes) or len(leaf_hash) != 32:
                raise ValueError(f"leaves[{i}].leaf_hash: expected 32 bytes")
            if not isinstance(contract_id, str) or not contract_id:
                raise ValueError(f"leaves[{i}].contract_id: must be a non-empty string")
            rows.append((kind, contract_id, leaf_hash))
        async with self._lock:
            added = []
            async with self.db.transaction() as tx:
                for kind, contract_id, leaf_hash in rows:
                    done = await tx.execute(
                        "INSERT OR IGNORE INTO anchor_leaves (kind, contract_id, leaf_hash, added_height) "
                        "VALUES (?, ?, ?, ?)", (kind, contract_id, leaf_hash, self.height))
                    added.append(done.rowcount == 1)
                pending = (await tx.fetchall("SELECT count(*) FROM anchor_leaves WHERE batch_id IS NULL"))[0][0]
            LEAVES_PENDING.set(pending)
            for (kind, _, _), new in zip(rows, added):
                if new:
                    LEAVES_ADDED.labels(kind).inc()
            if pending >= self.config.policy.max_leaves:
                await self._close_batches(self.height)
                await self._send_closed()
            return added

    async def on_block(self, height: int) -> None:
        """Call on every new best tip (also after a reorg): watch, close, anchor."""
        async with self._lock:
            self.height = height
            await self._watch(height)
            await self._close_batches(height)
            await self._send_closed()
            await self._observe_lag(height)

    async def proofs_for(self, contract_id: str) -> list[StoredProof]:
        """Current proofs of a contract's leaves (none while a batch awaits (re-)mining)."""
        rows = await self._all(
            "SELECT p.proof_json, b.height FROM anchor_proofs p JOIN anchor_batches b "
            "ON b.id = p.batch_id WHERE p.contract_id = ? ORDER BY p.leaf_id", contract_id)
        out = []
        for proof_json, height in rows:
            confs = max(0, self.height - height + 1)
            out.append(StoredProof(contract_id, AnchorProof.from_json(json.loads(proof_json)),
                                   confs, confs >= self.config.min_confirmations))
        return out

    async def batches(self, limit: int | None = None) -> list[BatchInfo]:
        """Every batch oldest first, or with ``limit`` the newest ``limit`` of them, newest first."""
        cols = ("SELECT b.id, b.root, b.size, b.state, b.txid, b.block_hash, b.height, b.reanchors, b.vsize, "
                "(SELECT COUNT(DISTINCT l.contract_id) FROM anchor_leaves l WHERE l.batch_id = b.id) "
                "FROM anchor_batches b ")
        rows = (await self._all(cols + "ORDER BY b.id") if limit is None
                else await self._all(cols + "ORDER BY b.id DESC LIMIT ?", limit))
        out = []
        for r in rows:
            txs = await self._all("SELECT txid FROM anchor_txs WHERE batch_id = ? ORDER BY rowid", r[0])
            out.append(BatchInfo(id=r[0], root=r[1], size=r[2], state=r[3], txid=r[4], block_hash=r[5],
                                 height=r[6], reanchors=r[7], txids=tuple(t[0] for t in txs), vsize=r[8],
                                 contracts=r[9]))
        return out

    # -- internals ------------------------------------------------------------------------
    async def _observe_lag(self, best: int) -> None:
        """The anchoring lag, as metrics (see :mod:`services.anchor.metrics`)."""
        counts = dict(await self._all("SELECT state, count(*) FROM anchor_batches GROUP BY state"))
        for state in BATCH_STATES:
            BATCHES.labels(state).set(counts.get(state, 0))
        oldest = await self._one("SELECT min(closed_height) FROM anchor_batches WHERE state != 'confirmed'")
        OLDEST_UNCONFIRMED.set(best - int(oldest[0]) if oldest and oldest[0] is not None else 0)
        newest = await self._one("SELECT max(height) FROM anchor_batches WHERE height IS NOT NULL")
        NEWEST_CONFIRMATIONS.set(best - int(newest[0]) + 1 if newest and newest[0] is not None else 0)
        MIN_CONFIRMATIONS.set(self.config.min_confirmations)

    async def _close_batches(self, height: int) -> None:
        async with self.db.transaction() as tx:
            rows = await tx.fetchall(
                "SELECT id, leaf_hash, added_height FROM anchor_leaves WHERE batch_id IS NULL ORDER BY id")
            pending = [PendingLeaf(r[0], r[2]) for r in rows]
            hashes = {r[0]: r[1] for r in rows}
            closed = close_batches(pending, height, self.config.policy)
            for batch in closed:
                tree = MerkleTree([hashes[k] for k in batch.keys])
                done = await tx.execute(
                    "INSERT INTO anchor_batches (root, size, closed_height, state) VALUES (?, ?, ?, 'closed')",
                    (tree.root, tree.size, height))
                batch_id = done.lastrowid
                await tx.executemany(
                    "UPDATE anchor_leaves SET batch_id = ?, leaf_index = ? WHERE id = ?",
                    [(batch_id, i, k) for i, k in enumerate(batch.keys)])
                log.info("anchor.batch_closed", batch=batch_id, size=tree.size, reason=batch.reason,
                         root=tree.root.hex(), height=height)
        LEAVES_PENDING.set(len(pending) - sum(len(b.keys) for b in closed))

    async def _send_closed(self) -> None:
        for b in await self._load("state = 'closed'"):
            payload = opreturn.encode_payload(b.root)
            try:
                txid = await self.wallet.send_op_return(payload, self.config.sat_per_vbyte)
            except Exception as exc:  # noqa: BLE001 - the wallet is an edge we don't control; retry next block
                # Passes by itself (a warning): the hub's lnd down or restarting, or no confirmed
                # coins while an anchoring tx of ours is unconfirmed (its change confirms with it).
                # Anything else is an operator's problem (an empty wallet, say).
                passing = _hub_away(exc) or (_no_confirmed_funds(exc) and await self._in_flight())
                (log.warning if passing else log.error)("anchor.send_failed", batch=b.id, error=repr(exc))
                return
            raw_hex = await self._raw_hex(txid)
            async with self.db.transaction() as tx:
                await tx.execute(
                    "UPDATE anchor_batches SET state = 'broadcast', txid = ?, sent_height = ? WHERE id = ?",
                    (txid, self.height, b.id))
                await tx.execute(
                    "INSERT OR REPLACE INTO anchor_txs (batch_id, txid, sent_height, status, raw_hex) "
                    "VALUES (?, ?, ?, 'sent', ?)", (b.id, txid, self.height, raw_hex))
                reanchor = await tx.fetchone("SELECT reanchors FROM anchor_batches WHERE id = ?", (b.id,))
            ANCHOR_TXS.labels(reason="reanchor" if reanchor and reanchor[0] else "new").inc()
            log.info("anchor.sent", batch=b.id, txid=txid, root=b.root.hex(), size=b.size)

    async def _in_flight(self) -> bool:
        """An anchoring tx of ours is sent and not yet mined."""
        return bool(await self._one("SELECT 1 FROM anchor_batches WHERE state = 'broadcast' LIMIT 1"))

    async def _load(self, where: str, *args: Any) -> list[_Batch]:
        rows = await self._all(
            "SELECT id, root, size, state, txid, sent_height, block_hash, height FROM anchor_batches "
            f"WHERE {where} ORDER BY id", *args)
        return [_Batch(*r) for r in rows]

    async def _in_best_chain(self, block_hash: str) -> int | None:
        """Height of ``block_hash`` if it is in the best chain, else None."""
        try:
            header = await self.chain.get_block_header(block_hash)
            height = header.get("height")
            if header.get("confirmations", 0) <= 0 or height is None:
                return None
            return int(height) if await self.chain.get_block_hash(int(height)) == block_hash else None
        except ChainNotFound:
            return None

    async def _behind(self, b: _Batch, best: int) -> bool:
        """True if btcd's chain was shorter than the batch's block (``best``, as the watcher saw
        it) because btcd is catching up (restarted, syncing), not because of a reorg: it has
        not seen the block yet; or it has it in its best chain now (it connected it between our
        questions: hundreds of blocks a second while it syncs); or it knows it outside its best
        chain while its tip moves on (a block being connected right then). Looked at again on a
        later block. A block known outside the best chain with the tip standing still
        (``invalidateblock``, a competing chain) is a reorg."""
        if b.block_hash is None or b.height is None or best >= b.height:
            return False
        try:
            header = await self.chain.get_block_header(b.block_hash)
        except ChainNotFound:
            return True
        if int(header.get("confirmations", 0)) > 0:
            return True
        return await self.chain.get_best_height() > best

    async def _watch(self, best: int) -> None:
        batches = await self._load(
            "state IN ('broadcast', 'mined', 'confirmed') AND (height IS NULL OR height > ?)",
            best - self.config.watch_depth)
        for b in batches:
            try:
                await self._watch_batch(b, best)
            except ChainError as exc:  # node down: keep state as is, look again next block
                log.warning("anchor.chain_unavailable", batch=b.id, error=str(exc))
                return

    async def _watch_batch(self, b: _Batch, best: int) -> None:
        assert b.txid is not None
        try:
            tx: dict[str, Any] | None = await self.chain.get_raw_transaction(b.txid)
        except ChainNotFound:
            tx = None
        tx_block = tx.get("blockhash") if tx else None
        height = await self._in_best_chain(tx_block) if tx_block else None
        if tx is not None and tx_block and height is not None:
            if tx_block != b.block_hash and not await self._record_mined(b, tx, tx_block, height):
                return
            confirmed = best - height + 1 >= self.config.min_confirmations
            state = "confirmed" if confirmed else "mined"
            if state != b.state:
                await self.db.execute("UPDATE anchor_batches SET state = ? WHERE id = ?", (state, b.id))
                if confirmed:
                    log.info("anchor.confirmed", batch=b.id, txid=b.txid, height=height)
            return
        if b.state in ("mined", "confirmed"):
            if await self._behind(b, best):
                log.info("anchor.chain_behind", batch=b.id, block=b.block_hash, height=b.height, best=best)
                return
            ANCHOR_REORGS.inc()
            log.warning("anchor.reorg", batch=b.id, txid=b.txid, block=b.block_hash, height=b.height)
            await self._reanchor(b, "orphaned")
        elif tx is None and b.sent_height is not None and best > b.sent_height:
            if await self._publish_again(b, best):
                return
            log.warning("anchor.tx_dropped", batch=b.id, txid=b.txid)
            await self._reanchor(b, "dropped")

    async def _raw_hex(self, txid: str) -> str | None:
        """The signed tx just sent, as btcd has it in its mempool (None if it does not say:
        the tx is then replaced rather than published again, should it be lost)."""
        if self.relay is None:
            return None
        try:
            raw = (await self.chain.get_raw_transaction(txid)).get("hex")
        except ChainError as exc:
            log.warning("anchor.raw_tx_unknown", txid=txid, error=str(exc))
            return None
        return raw if isinstance(raw, str) and raw else None

    async def _publish_again(self, b: _Batch, best: int) -> bool:
        """Publish the batch's lost tx again, as it was sent; True if btcd took it (it is
        watched again from ``best``), False if btcd refused it or it was not kept (replace it).
        Raises ChainUnavailable if btcd cannot answer (looked at again on the next block)."""
        if self.relay is None:
            return False
        row = await self._one("SELECT raw_hex FROM anchor_txs WHERE batch_id = ? AND txid = ?", b.id, b.txid)
        if not row or not row[0]:
            return False
        try:
            await self.relay.send_raw_transaction(str(row[0]))
        except ChainRejected as exc:
            log.warning("anchor.tx_refused", batch=b.id, txid=b.txid, error=str(exc))
            return False
        async with self.db.transaction() as tx:
            await tx.execute("UPDATE anchor_batches SET sent_height = ? WHERE id = ?", (best, b.id))
            await tx.execute("UPDATE anchor_txs SET sent_height = ? WHERE batch_id = ? AND txid = ?",
                             (best, b.id, b.txid))
        log.info("anchor.tx_published_again", batch=b.id, txid=b.txid, height=best)
        return True

    async def _record_mined(self, b: _Batch, raw_tx: dict[str, Any], block_hash: str, height: int) -> bool:
        script = opreturn.encode_script(b.root).hex()
        vout = next((o.get("n") for o in raw_tx.get("vout", [])
                     if (o.get("scriptPubKey") or {}).get("hex") == script), None)
        if vout is None:
            log.error("anchor.tx_without_anchor_output", batch=b.id, txid=b.txid)
            return False
        rows = await self._all(
            "SELECT id, kind, contract_id, leaf_hash FROM anchor_leaves WHERE batch_id = ? "
            "ORDER BY leaf_index", b.id)
        tree = MerkleTree([r[3] for r in rows])
        if tree.root != b.root:  # the store was tampered with; never publish wrong proofs
            log.error("anchor.root_mismatch", batch=b.id)
            return False
        assert b.txid is not None
        proofs = []
        for i, (leaf_id, kind, contract_id, leaf_hash) in enumerate(rows):
            proof = AnchorProof(kind, leaf_hash, i, tree.size, tuple(tree.proof(i)), tree.root,
                                b.txid, block_hash, height, int(vout))
            proofs.append((leaf_id, contract_id, b.id, json.dumps(proof.to_json(), sort_keys=True)))
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM anchor_proofs WHERE batch_id = ?", (b.id,))
            await tx.executemany(
                "INSERT INTO anchor_proofs (leaf_id, contract_id, batch_id, proof_json) VALUES (?, ?, ?, ?)",
                proofs)
            await tx.execute(
                "UPDATE anchor_batches SET block_hash = ?, height = ?, vout = ?, vsize = ? WHERE id = ?",
                (block_hash, height, vout, _vsize(raw_tx), b.id))
            await tx.execute("UPDATE anchor_txs SET status = 'mined' WHERE batch_id = ? AND txid = ?",
                             (b.id, b.txid))
        b.block_hash, b.height = block_hash, height
        log.info("anchor.mined", batch=b.id, txid=b.txid, block=block_hash, height=height, proofs=len(proofs))
        return True

    async def _reanchor(self, b: _Batch, why: str) -> None:
        async with self.db.transaction() as tx:
            await tx.execute("UPDATE anchor_txs SET status = ? WHERE batch_id = ? AND txid = ?",
                             (why, b.id, b.txid))
            await tx.execute("DELETE FROM anchor_proofs WHERE batch_id = ?", (b.id,))
            await tx.execute(
                "UPDATE anchor_batches SET state = 'closed', txid = NULL, sent_height = NULL, vout = NULL, "
                "block_hash = NULL, height = NULL, reanchors = reanchors + 1 WHERE id = ?", (b.id,))
