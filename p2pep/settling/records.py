"""A contract as a ``ContractRecord``, the one message settlement and meters both show it in.

Settlement builds it from its ledger, a meter from its own accounting of the same contract;
both go through :func:`contract_record`, so the fields mean the same in either (the terms'
canonical JSON, the settlement hash of the terms, states mapped by :data:`STATE_TO_PB`).
The record's ``consumer_node`` / ``supplier_node`` are always the signed terms' nodes, never
a registry's current value: a node re-registered after signing changes no contract.
"""

from __future__ import annotations

from p2pep.canonical import canonical_json
from p2pep.pbconv import enum_value, ms_ts
from p2pep.settling.contracts import ContractState, ContractTerms
from p2pep.v1 import common_pb2, settlement_pb2

STATE_TO_PB: dict[ContractState, settlement_pb2.ContractState.ValueType] = {
    ContractState.PROPOSED: settlement_pb2.CONTRACT_STATE_PROPOSED,
    ContractState.ACTIVE: settlement_pb2.CONTRACT_STATE_ACTIVE,
    ContractState.COMPLETED: settlement_pb2.CONTRACT_STATE_COMPLETED,
    ContractState.ENDED_EARLY: settlement_pb2.CONTRACT_STATE_ENDED_EARLY,
    ContractState.DEFAULTED: settlement_pb2.CONTRACT_STATE_DEFAULTED,
    ContractState.REJECTED: settlement_pb2.CONTRACT_STATE_REJECTED,
}
STATE_FROM_PB = {v: k for k, v in STATE_TO_PB.items()}


def contract_record(
    terms: ContractTerms,
    state: ContractState,
    *,
    matcher_tier: int,
    delivered_wh: int,
    paid_wh: int,
    paid_msat: int,
    increments_paid: int,
    end_reason: str = "",
    ended_ms: int | None = None,
    fault: str = "",
    consumer_signature: bytes | None = None,
    supplier_signature: bytes | None = None,
) -> settlement_pb2.ContractRecord:
    t = terms
    contract = common_pb2.Contract(
        contract_id=t.contract_id, consumer=t.consumer, supplier=t.supplier, energy_wh=t.energy_wh,
        price_msat_per_kwh=t.price_msat_per_kwh, tier=enum_value(common_pb2.Tier, matcher_tier), hash=t.hash(),
        start=ms_ts(t.start_ms), end=ms_ts(t.end_ms),
    )
    rec = settlement_pb2.ContractRecord(
        contract=contract, state=STATE_TO_PB[state], terms_json=canonical_json(t.canonical()).decode(),
        delivered_wh=delivered_wh, paid_wh=paid_wh, paid_msat=paid_msat, increments_paid=increments_paid,
        increment_wh=t.increment_wh, end_reason=end_reason, consumer_node=t.consumer_node,
        supplier_node=t.supplier_node, fault=fault, consumer_signature=consumer_signature or b"",
        supplier_signature=supplier_signature or b"",
    )
    if ended_ms:
        rec.ended.FromMilliseconds(ended_ms)
    return rec
