"""Contract terms, hash, signatures by both meters, life cycle and settlement summary."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from p2pep.canonical import CONTRACT_TAG, canonical_json, settlement_hash, tagged_hash
from p2pep.market.active_contracts import terms_hash
from p2pep.metering.signing import MeterKey
from p2pep.settling.contracts import (
    Contract,
    ContractError,
    ContractState,
    ContractTerms,
    EndReason,
    settlement_summary,
    sign_contract,
    sign_summary,
    summary_hash,
    verify_contract_signature,
    verify_summary_signature,
)

CONSUMER = MeterKey.from_hex("c1" * 32)
SUPPLIER = MeterKey.from_hex("51" * 32)
CONSUMER_NODE = "02" + "c1" * 32
SUPPLIER_NODE = "03" + "51" * 32


def terms(**changes: object) -> ContractTerms:
    base = ContractTerms(
        contract_id="ct-1",
        consumer="meter-c",
        supplier="meter-p1",
        consumer_pubkey=CONSUMER.pubkey_hex,
        supplier_pubkey=SUPPLIER.pubkey_hex,
        consumer_node=CONSUMER_NODE,
        supplier_node=SUPPLIER_NODE,
        energy_wh=2000,
        price_msat_per_kwh=250_000,
        start_ms=1_750_000_000_000,
        end_ms=1_750_000_000_000 + 3_600_000,
        tier=1,
        increment_wh=10,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_canonical_document_and_hash() -> None:
    t = terms()
    doc = t.canonical()
    assert doc["v"] == 2 and doc["energy_wh"] == 2000 and set(doc) == {
        "v", "contract_id", "consumer", "supplier", "consumer_pubkey", "supplier_pubkey", "consumer_node",
        "supplier_node", "energy_wh", "price_msat_per_kwh", "start_ms", "end_ms", "tier", "increment_wh",
    }
    # the payee is part of what is signed: another node is another contract
    assert terms(supplier_node="02" + "ee" * 32).hash() != t.hash()
    assert terms(consumer_node="02" + "ee" * 32).hash() != t.hash()
    # anyone can recompute it from plain JSON
    assert t.hash() == tagged_hash(CONTRACT_TAG, json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
    assert t.hash() == tagged_hash(CONTRACT_TAG, canonical_json(doc))
    assert ContractTerms.from_canonical(json.loads(canonical_json(doc))) == t
    assert terms(energy_wh=2001).hash() != t.hash()


def test_derived_quantities() -> None:
    t = terms()
    assert t.average_power_w() == 2000  # 2 kWh over one hour
    assert terms(energy_wh=2001).average_power_w() == 2001
    assert terms(energy_wh=1, end_ms=1_750_000_000_000 + 7_200_000).average_power_w() == 1  # rounded up
    assert t.increments() == 200 and terms(energy_wh=2005).increments() == 201
    assert t.party_of("meter-c") == "consumer" and t.party_of("meter-p1") == "supplier" and t.party_of("x") is None


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"energy_wh": 0}, "energy_wh"),
        ({"energy_wh": 1.5}, "energy_wh"),
        ({"energy_wh": True}, "energy_wh"),
        ({"price_msat_per_kwh": -1}, "price_msat_per_kwh"),
        ({"end_ms": 1_750_000_000_000}, "end_ms"),
        ({"increment_wh": 0}, "increment_wh"),
        ({"tier": 0}, "tier"),
        ({"supplier": "meter-c"}, "supplier"),
        ({"consumer": ""}, "consumer"),
        ({"consumer_pubkey": "02abcd"}, "consumer_pubkey"),
        ({"supplier_node": ""}, "supplier_node"),
        ({"supplier_node": "02" + "AB" * 32}, "supplier_node"),  # one spelling per node: lowercase
        ({"consumer_node": "04" + "ab" * 32}, "consumer_node"),
        ({"consumer_node": "02" + "ab" * 31}, "consumer_node"),
        ({"supplier_node": CONSUMER_NODE}, "supplier_node"),
    ],
)
def test_invalid_terms_name_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ContractError) as info:
        terms(**changes)
    assert info.value.field == field


def test_from_canonical_rejects_unknown_and_missing_fields() -> None:
    doc = terms().canonical()
    with pytest.raises(ContractError, match="unknown"):
        ContractTerms.from_canonical({**doc, "bonus": 1})
    with pytest.raises(ContractError, match="version"):  # version 1 terms named no nodes
        ContractTerms.from_canonical({**doc, "v": 1})
    del doc["supplier_node"]
    with pytest.raises(ContractError, match="missing"):
        ContractTerms.from_canonical(doc)


def test_both_meters_sign_then_it_activates() -> None:
    t = terms()
    c_sig, s_sig = sign_contract(t, CONSUMER), sign_contract(t, SUPPLIER)
    assert verify_contract_signature(t, c_sig, CONSUMER.pubkey_hex)
    assert not verify_contract_signature(t, c_sig, SUPPLIER.pubkey_hex)
    assert not verify_contract_signature(terms(price_msat_per_kwh=1), c_sig, CONSUMER.pubkey_hex)

    c = Contract(t)
    with pytest.raises(ContractError, match="both signatures"):
        c.activate(1)
    with pytest.raises(ContractError, match="does not verify"):
        c.with_signature("consumer", s_sig)
    c = c.with_signature("consumer", c_sig).with_signature("supplier", s_sig)
    assert c.fully_signed
    active = c.activate(now_ms=42)
    assert active.state is ContractState.ACTIVE and active.activated_at_ms == 42
    with pytest.raises(ContractError):
        active.activate(43)
    with pytest.raises(ContractError):
        active.with_signature("consumer", c_sig)


@pytest.mark.parametrize(
    "reason, state",
    [
        (EndReason.END_TIME, ContractState.COMPLETED),
        (EndReason.ENERGY_DELIVERED, ContractState.COMPLETED),
        (EndReason.ENDED_BY_CONSUMER, ContractState.ENDED_EARLY),
        (EndReason.ENDED_BY_SUPPLIER, ContractState.ENDED_EARLY),
        (EndReason.SUPPLIER_GONE, ContractState.ENDED_EARLY),
        (EndReason.PAYMENT_FAILED, ContractState.DEFAULTED),
        (EndReason.PAYMENT_TIMEOUT, ContractState.DEFAULTED),
    ],
)
def test_end_states(reason: EndReason, state: ContractState) -> None:
    t = terms()
    active = Contract(t, consumer_signature=sign_contract(t, CONSUMER), supplier_signature=sign_contract(t, SUPPLIER)).activate(1)
    ended = active.end(reason, now_ms=99)
    assert ended.state is state and ended.ended_at_ms == 99 and ended.end_reason is reason
    with pytest.raises(ContractError, match="already ended"):
        ended.end(EndReason.END_TIME, 100)
    with pytest.raises(ContractError):
        active.end(EndReason.REJECTED, 100)


def test_proposed_can_only_be_rejected() -> None:
    c = Contract(terms())
    with pytest.raises(ContractError):
        c.end(EndReason.PAYMENT_FAILED, 5)
    rejected = c.end(EndReason.REJECTED, 5)
    assert rejected.state is ContractState.REJECTED and rejected.state.final


def test_match_hash_is_the_matchers_contract_hash() -> None:
    t = terms()
    assert t.match_hash(2) == terms_hash(
        contract_id="ct-1", consumer="meter-c", supplier="meter-p1", energy_wh=2000,
        price_msat_per_kwh=250_000, start_ms=t.start_ms, end_ms=t.end_ms, tier=2,
    )
    assert t.match_hash(2) != t.match_hash(1)
    assert terms(increment_wh=5).match_hash(1) == t.match_hash(1) != terms(increment_wh=5).hash()


def test_settlement_signs_the_summary() -> None:
    t = terms()
    c = Contract(t, consumer_signature=sign_contract(t, CONSUMER), supplier_signature=sign_contract(t, SUPPLIER))
    summary = settlement_summary(c.activate(1).end(EndReason.END_TIME, 9), wh_delivered=20, msat_paid=5000,
                                 increments_paid=2, wh_paid=20)
    key = MeterKey.from_hex("5e" * 32)
    sig = sign_summary(summary, key)
    assert verify_summary_signature(summary, sig, key.pubkey_hex)
    assert not verify_summary_signature({**summary, "msat_paid": 5001}, sig, key.pubkey_hex)
    assert not verify_summary_signature(summary, sig, CONSUMER.pubkey_hex)


def test_settlement_summary_is_canonical_and_hashed() -> None:
    t = terms()
    c = Contract(t, consumer_signature=sign_contract(t, CONSUMER), supplier_signature=sign_contract(t, SUPPLIER))
    with pytest.raises(ContractError, match="not ended"):
        settlement_summary(c, wh_delivered=0, msat_paid=0, increments_paid=0, wh_paid=0)
    ended = c.activate(1).end(EndReason.SUPPLIER_GONE, 500)
    summary = settlement_summary(ended, wh_delivered=1234, msat_paid=308_500, increments_paid=124, wh_paid=1234)
    assert summary == {
        "v": 1,
        "contract_id": "ct-1",
        "contract_hash": t.hash_hex(),
        "state": "ended_early",
        "end_reason": "SUPPLIER_GONE",
        "ended_at_ms": 500,
        "wh_delivered": 1234,
        "wh_paid": 1234,
        "msat_paid": 308_500,
        "increments_paid": 124,
    }
    assert summary_hash(summary) == settlement_hash(summary)
    canonical_json(summary)  # integers and strings only
