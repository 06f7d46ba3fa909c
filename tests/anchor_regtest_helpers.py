"""Shared by tests/test_anchor_regtest*.py: real contracts, an Anchorer on the real network."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pep.anchor.btcd_chain import BtcdChain
from p2pep.anchor.chain import ChainView
from p2pep.anchor.document import AnchorProof, ContractDocument, build_document
from p2pep.anchor.lnd_wallet import LndAnchorWallet
from p2pep.anchor.verify import VerifyReport, verify_document
from p2pep.chain.btcd_rpc import BtcdRpc
from p2pep.metering.signing import MeterKey
from p2pep.regtest import RegtestNetwork
from p2pep.settling.contracts import ContractTerms, sign_contract
from services.anchor.anchorer import Anchorer, AnchorerConfig

_KEYS = [MeterKey.generate() for _ in range(8)]


def contract_terms(n: int, prefix: str) -> list[ContractTerms]:
    """``n`` valid contracts between made-up meters (real keys, distinct terms)."""
    out = []
    for i in range(n):
        a, b = i % 8, (i * 3 + 1) % 8
        if a == b:
            b = (b + 1) % 8
        out.append(ContractTerms(
            contract_id=f"{prefix}-{i:05d}", consumer=f"meter-{a:03d}", supplier=f"meter-{b:03d}",
            consumer_pubkey=_KEYS[a].pubkey_hex, supplier_pubkey=_KEYS[b].pubkey_hex,
            consumer_node=f"02{a + 1:064x}", supplier_node=f"02{b + 1:064x}", energy_wh=100 + 7 * i, price_msat_per_kwh=80_000 + i, start_ms=1_700_000_000_000 + 60_000 * i,
            end_ms=1_700_000_900_000 + 60_000 * i, tier=1 + i % 3))
    return out


def signed_document(t: ContractTerms, proofs: Sequence[AnchorProof]) -> ContractDocument:
    """Contract ``t``'s document (no summary) with both made-up meters' signatures."""
    keys = {k.pubkey_hex: k for k in _KEYS}
    sigs = {"consumer": sign_contract(t, keys[t.consumer_pubkey]), "supplier": sign_contract(t, keys[t.supplier_pubkey])}
    return build_document(t.canonical(), None, proofs, sigs)


class DedupChain:
    """A ChainView over the real btcd that sends each distinct question once.

    All proofs of a batch name the same transaction and block, and btcd closes its HTTP
    connection after every call (a TLS handshake each, 4-7 ms here), so checking 1,000
    documents one by one would spend half a minute asking the same 4 questions. Every
    answer (and every "not found") still comes from btcd; verify_document runs all its
    checks on each document.
    """

    def __init__(self, chain: ChainView) -> None:
        self.chain = chain
        self._answers: dict[tuple[str, Any], asyncio.Future[Any]] = {}

    def _ask(self, key: tuple[str, Any], call: Callable[[], Awaitable[Any]]) -> Awaitable[Any]:
        if key not in self._answers:
            self._answers[key] = asyncio.ensure_future(call())
        return self._answers[key]

    async def get_raw_transaction(self, txid: str) -> dict[str, Any]:
        return await self._ask(("tx", txid), lambda: self.chain.get_raw_transaction(txid))  # type: ignore[no-any-return]

    async def get_block_header(self, block_hash: str) -> dict[str, Any]:
        return await self._ask(("header", block_hash), lambda: self.chain.get_block_header(block_hash))  # type: ignore[no-any-return]

    async def get_block_hash(self, height: int) -> str:
        return await self._ask(("hash", height), lambda: self.chain.get_block_hash(height))  # type: ignore[no-any-return]

    async def get_best_height(self) -> int:
        return await self._ask(("best", None), self.chain.get_best_height)  # type: ignore[no-any-return]


@dataclass
class AnchorStack:
    """An Anchorer paying from the network's hub wallet and reading the network's btcd."""

    anchorer: Anchorer
    chain: BtcdChain
    rpc: BtcdRpc

    @classmethod
    async def open(cls, net: RegtestNetwork, db: Path, config: AnchorerConfig) -> AnchorStack:
        assert net.btcd is not None
        rpc = BtcdRpc(net.btcd.info.rpc_config())
        chain = BtcdChain(rpc)
        wallet = LndAnchorWallet(net.nodes["hub"].client)  # the network owns (and closes) this client
        anchorer = await Anchorer(str(db), wallet, chain, config).open()
        return cls(anchorer, chain, rpc)

    async def close(self) -> None:
        await self.anchorer.close()
        await self.rpc.close()

    async def tip(self) -> None:
        """Tell the anchorer about the current best tip (what the service's block watcher does)."""
        await self.anchorer.on_block(await self.chain.get_best_height())

    async def proofs(self, contract_id: str) -> list[AnchorProof]:
        return [p.proof for p in await self.anchorer.proofs_for(contract_id)]

    async def verify_all(self, terms: Sequence[ContractTerms], k: int,
                         proofs: dict[str, list[AnchorProof]] | None = None,
                         dedup: bool = True) -> list[VerifyReport]:
        """verify_document of every contract against real btcd (a few in flight at a time).

        With ``dedup`` the documents share one :class:`DedupChain` over the real btcd, so the
        identical questions all proofs of a batch ask are sent once; without it every document
        makes its own 4 RPCs.
        """
        sem = asyncio.Semaphore(8)
        chain: ChainView = DedupChain(self.chain) if dedup else self.chain

        async def one(t: ContractTerms) -> VerifyReport:
            ps = proofs[t.contract_id] if proofs is not None else await self.proofs(t.contract_id)
            async with sem:
                return await verify_document(signed_document(t, ps).to_json(), chain, k)

        return list(await asyncio.gather(*(one(t) for t in terms)))


async def tx_fee_and_vsize(rpc: BtcdRpc, txid: str) -> tuple[int, int, dict[str, Any]]:
    """(fee in sat, vsize in vB, verbose tx) of a transaction, from btcd with --txindex."""
    tx = await rpc.call("getrawtransaction", txid, 1)
    spent = 0
    for vin in tx["vin"]:
        prev = await rpc.call("getrawtransaction", vin["txid"], 1)
        spent += round(prev["vout"][vin["vout"]]["value"] * 100_000_000)
    fee = spent - sum(round(o["value"] * 100_000_000) for o in tx["vout"])
    return fee, int(tx["vsize"]), tx


def failed(report: VerifyReport) -> list[str]:
    return [c.name for c in report.failures]

