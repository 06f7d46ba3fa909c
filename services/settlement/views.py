"""Read-only answers about contracts, energy and documents (no state changes here).

Contracts are answered from memory while open and from the store once settled
(:func:`services.settlement.live.from_row`); lists are read from the store page by page, an
open contract's record taken from memory (its ledger may be ahead of the last stored row
only by what is being stored right now)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from p2pep.anchor.document import SummarySignature, build_document, dumps_document
from p2pep.metering.signing import MeterKey
from p2pep.paging import decode_token, encode_token, page_size
from p2pep.servicekit.errors import InvalidArgument, NotFound
from p2pep.settling.contracts import sign_summary
from p2pep.settling.records import STATE_TO_PB, contract_record
from p2pep.v1 import settlement_pb2
from services.settlement.live import LiveContract, from_row
from services.settlement.registry import MeterRegistry
from services.settlement.store import Store

STATE_OF_PB: dict[int, str] = {int(pb): state.value for state, pb in STATE_TO_PB.items()}


class SettlementViews:
    def __init__(self, store: Store, meters: MeterRegistry, contracts: Mapping[str, LiveContract],
                 anchor: Any | None, summary_key: MeterKey) -> None:
        self.summary_key = summary_key
        self.store = store
        self.meters = meters
        self.contracts = contracts
        self.anchor = anchor

    def record(self, lc: LiveContract) -> settlement_pb2.ContractRecord:
        c, led = lc.contract, lc.ledger
        return contract_record(
            lc.terms, c.state, matcher_tier=lc.matcher_tier, delivered_wh=led.delivered_wh, paid_wh=led.paid_wh,
            paid_msat=led.paid_msat, increments_paid=led.increments_paid,
            end_reason=c.end_reason.value if c.end_reason else "", ended_ms=c.ended_at_ms,
            fault=lc.fault, consumer_signature=c.consumer_signature, supplier_signature=c.supplier_signature,
        )

    async def contract(self, contract_id: str) -> LiveContract:
        """The open contract in memory, else the settled one as stored (NotFound if none)."""
        lc = self.contracts.get(contract_id)
        if lc is None:
            row = await self.store.contract(contract_id)
            if row is None:
                raise NotFound("contract_id", f"no contract {contract_id!r}")
            lc = self.contracts.get(contract_id)  # it may have been admitted meanwhile
            if lc is None:
                paid = await self.store.settled_payments([contract_id])
                lc = from_row(row, paid[contract_id])
        return lc

    async def list_contracts(self, meter_id: str = "", states: Iterable[int] = (), size: int = 0,
                             token: str = "") -> tuple[list[settlement_pb2.ContractRecord], str]:
        """One page of contracts in the order they were proposed, and the next page's token
        (it names the position of this page's last contract, so a page never repeats one)."""
        want = {STATE_OF_PB[s] for s in states if s in STATE_OF_PB}
        if set(states) and not want:
            return [], ""
        n = page_size(size)
        rows = await self.store.contract_page(decode_token(token), n + 1, meter_id, sorted(want))
        more, rows = len(rows) > n, rows[:n]
        stored = [r for r in rows if r["contract_id"] not in self.contracts]
        paid = await self.store.settled_payments(r["contract_id"] for r in stored)
        out = []
        for r in rows:
            lc = self.contracts.get(r["contract_id"]) or from_row(r, paid.get(r["contract_id"], []))
            out.append(self.record(lc))
        return out, encode_token(rows[-1]["pos"]) if more else ""

    async def energy(self, meter_id: str, column: str, t0: int, t1: int) -> tuple[int, int]:
        """Energy on a meter's ``import_wh``/``export_wh`` register between two times, and how
        many readings fell between them."""
        if meter_id not in self.meters:
            raise NotFound("meter_id", f"no meter {meter_id!r}")
        if t1 < t0:
            raise InvalidArgument("to", "must not be before from")
        a = await self.store.register_at(meter_id, column, t0)
        b = await self.store.register_at(meter_id, column, t1)
        return b - a, await self.store.reading_count(meter_id, t0, t1)

    async def document(self, contract_id: str) -> str:
        """The contract's document: terms with both meters' signatures, the summary signed by
        settlement's key (signed here; RFC 6979 makes it the same signature each time), proofs."""
        lc = await self.contract(contract_id)
        proofs = await self.anchor.proofs(contract_id) if self.anchor is not None else []
        c = lc.contract
        sigs = {k: v for k, v in (("consumer", c.consumer_signature), ("supplier", c.supplier_signature)) if v}
        signed = None if lc.summary is None else \
            SummarySignature(self.summary_key.pubkey_hex, sign_summary(lc.summary, self.summary_key))
        return dumps_document(build_document(lc.terms.canonical(), lc.summary, proofs, sigs, signed))
