"""Signed contract documents for tests: real terms (both meters' keys and nodes), both meters'
signatures, a real settlement summary signed by a settlement key."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from p2pep.anchor.document import AnchorProof, ContractDocument, SummarySignature, build_document
from p2pep.metering.signing import MeterKey
from p2pep.settling.contracts import (
    Contract,
    ContractTerms,
    EndReason,
    settlement_summary,
    sign_contract,
    sign_summary,
)

CONSUMER_KEY = MeterKey.from_hex("c0" * 32)
SUPPLIER_KEY = MeterKey.from_hex("5b" * 32)
SETTLEMENT_KEY = MeterKey.from_hex("5e" * 32)
CONSUMER_NODE = "02" + "c0" * 32
SUPPLIER_NODE = "03" + "5b" * 32


def contract_terms(i: int, prefix: str = "c") -> ContractTerms:
    return ContractTerms(
        contract_id=f"{prefix}-{i}", consumer="meter-c", supplier="meter-p", consumer_pubkey=CONSUMER_KEY.pubkey_hex,
        supplier_pubkey=SUPPLIER_KEY.pubkey_hex, consumer_node=CONSUMER_NODE, supplier_node=SUPPLIER_NODE,
        energy_wh=1000 + i, price_msat_per_kwh=150_000, start_ms=1_700_000_000_000, end_ms=1_700_003_600_000,
    )


def terms(i: int, prefix: str = "c") -> dict[str, Any]:
    """The canonical terms of contract ``i``."""
    return contract_terms(i, prefix).canonical()


def signatures(t: ContractTerms) -> dict[str, bytes]:
    return {"consumer": sign_contract(t, CONSUMER_KEY), "supplier": sign_contract(t, SUPPLIER_KEY)}


def summary(i: int, prefix: str = "c", wh: int = 990) -> dict[str, Any]:
    """The settlement summary of contract ``i``, ended at its end time with ``wh`` delivered and paid."""
    t = contract_terms(i, prefix)
    c = Contract(t, **{f"{k}_signature": v for k, v in signatures(t).items()}).activate(1).end(EndReason.END_TIME, 2)
    return settlement_summary(c, wh_delivered=wh, msat_paid=wh * t.price_msat_per_kwh // 1000,
                              increments_paid=-(-wh // t.increment_wh), wh_paid=wh)


def summary_signature(s: dict[str, Any], key: MeterKey = SETTLEMENT_KEY) -> SummarySignature:
    return SummarySignature(key.pubkey_hex, sign_summary(s, key))


def signed_document(t: dict[str, Any], settlement: dict[str, Any] | None = None,
                    proofs: Sequence[AnchorProof] = ()) -> ContractDocument:
    """A document of terms ``t`` signed by both test meters, its summary signed by settlement's test key."""
    ct = ContractTerms.from_canonical(t)
    return build_document(t, settlement, proofs, signatures(ct),
                          None if settlement is None else summary_signature(settlement))
