"""Read-only answers about contracts, energy and documents (no state changes here)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from p2pep.anchor.document import SummarySignature, build_document, dumps_document
from p2pep.metering.signing import MeterKey
from p2pep.servicekit.errors import InvalidArgument, NotFound
from p2pep.settling.contracts import sign_summary
from p2pep.settling.records import STATE_TO_PB, contract_record
from p2pep.v1 import settlement_pb2
from services.settlement.live import LiveContract
from services.settlement.registry import MeterRegistry
from services.settlement.store import Store


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

    def contract(self, contract_id: str) -> LiveContract:
        lc = self.contracts.get(contract_id)
        if lc is None:
            raise NotFound("contract_id", f"no contract {contract_id!r}")
        return lc

    def list_contracts(self, meter_id: str = "", states: Iterable[int] = ()) -> list[settlement_pb2.ContractRecord]:
        want = set(states)
        return [self.record(lc) for lc in self.contracts.values()
                if (not meter_id or meter_id in (lc.terms.consumer, lc.terms.supplier))
                and (not want or STATE_TO_PB[lc.contract.state] in want)]

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
        lc = self.contract(contract_id)
        proofs = await self.anchor.proofs(contract_id) if self.anchor is not None else []
        c = lc.contract
        sigs = {k: v for k, v in (("consumer", c.consumer_signature), ("supplier", c.supplier_signature)) if v}
        signed = None if lc.summary is None else \
            SummarySignature(self.summary_key.pubkey_hex, sign_summary(lc.summary, self.summary_key))
        return dumps_document(build_document(lc.terms.canonical(), lc.summary, proofs, sigs, signed))
