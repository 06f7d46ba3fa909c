"""Energy contracts: canonical terms, signatures by both meters, life cycle, summary.

A contract's terms are integers and strings only, turned into canonical JSON and
hashed with :func:`p2pep.canonical.contract_hash`; both meters sign that 32-byte
hash with their reading keys (DER ECDSA, as for readings). Its life::

    proposed --(both signatures)--> active --> completed     (end time, or all energy delivered)
        |                              |-----> ended_early   (either side ends it, supplier gone)
        '--> rejected (not signed)     '-----> defaulted     (a payment failed or timed out)

(the states and their names are those of ``ContractState`` in settlement.proto).

The signed terms extend the matcher's contract terms
(:func:`p2pep.market.active_contracts.contract_terms`, whose hash is ``Contract.match_hash`` in
common.proto) with both meters' public keys, both meters' LND node pubkeys and the
increment size, so the signatures also commit to who signs readings for each side, to
the payment granularity and to the money's path: the consumer's meter pays only
invoices whose destination is ``supplier_node`` (nothing after signing can re-point
the payee: the node is part of what was signed). Their hash, :meth:`ContractTerms.hash`, is ``Contract.hash``: what both
meters sign and what is anchored. :meth:`ContractTerms.match_hash` recomputes the
matcher's hash, to check a contract against the match it came from.

When it ends, :func:`settlement_summary` states what was delivered and paid; its
:func:`p2pep.canonical.settlement_hash` is what gets anchored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from typing import Any

from p2pep.bounds import INT64_MAX, MAX_MS
from p2pep.canonical import contract_hash, settlement_hash, utf8_text
from p2pep.market.active_contracts import contract_terms as match_terms
from p2pep.market.model import MAX_ENERGY_WH, MAX_ID_LEN, MAX_PRICE_MSAT_PER_KWH
from p2pep.metering.profiles import WMS_PER_WH
from p2pep.metering.signing import MeterKey, is_valid_pubkey, verify_digest

DEFAULT_INCREMENT_WH = 10
CONTRACT_VERSION = 2
"""2: the terms name both parties' LND nodes (``consumer_node``, ``supplier_node``)."""
MAX_TIER = 1_000_000
MAX_STRING_LEN = 2 * MAX_ID_LEN
"""Bounds on the terms, so every number fits a signed 64-bit integer (the stores, lnd's
msat amounts, a Timestamp) whatever a caller puts in ``terms_json``: energy and price as
the market bounds them, times within years 0..9999, the whole contract's value in msat
within int64, strings valid Unicode of at most ``MAX_STRING_LEN`` characters."""
_NODE_PUBKEY = re.compile(r"0[23][0-9a-f]{64}")


def is_node_pubkey(value: object) -> bool:
    """An LND node's identity pubkey as lnd prints it: 66 lowercase hex digits, 02/03 first
    (one spelling per node, so comparing strings compares nodes)."""
    return isinstance(value, str) and _NODE_PUBKEY.fullmatch(value) is not None


class ContractError(ValueError):
    """Terms that are not valid, or a life-cycle step that is not allowed.
    ``field`` names the offending term where there is one."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class ContractTerms:
    """What a consumer and a supplier agree on. Energy in Wh, price in msat per kWh,
    times in (simulated) unix ms; ``tier`` is the consumer's priority for this
    contract (1 = first priority; see :mod:`p2pep.settling.allocation`)."""

    contract_id: str
    consumer: str
    supplier: str
    consumer_pubkey: str
    supplier_pubkey: str
    consumer_node: str
    """The consumer's LND node pubkey: the node that pays."""
    supplier_node: str
    """The supplier's LND node pubkey: the only payee of this contract's invoices."""
    energy_wh: int
    price_msat_per_kwh: int
    start_ms: int
    end_ms: int
    tier: int = 1
    increment_wh: int = DEFAULT_INCREMENT_WH

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ContractError(f"{f.name} must be an integer", f.name)
            elif not isinstance(value, str) or not value:
                raise ContractError(f"{f.name} must be a non-empty string", f.name)
            elif len(value) > MAX_STRING_LEN or not utf8_text(value):
                raise ContractError(f"{f.name} must be valid Unicode text of at most {MAX_STRING_LEN} "
                                    "characters", f.name)
        if not 0 < self.energy_wh <= MAX_ENERGY_WH:
            raise ContractError(f"energy_wh must be within 1..{MAX_ENERGY_WH}", "energy_wh")
        if not 0 <= self.price_msat_per_kwh <= MAX_PRICE_MSAT_PER_KWH:
            raise ContractError(f"price_msat_per_kwh must be within 0..{MAX_PRICE_MSAT_PER_KWH}",
                                "price_msat_per_kwh")
        if self.energy_wh * self.price_msat_per_kwh // 1000 > INT64_MAX:
            raise ContractError("the contract's value (energy_wh x price) does not fit 64-bit msat",
                                "price_msat_per_kwh")
        if not 0 <= self.start_ms <= MAX_MS:
            raise ContractError(f"start_ms must be within 0..{MAX_MS}", "start_ms")
        if not self.start_ms < self.end_ms <= MAX_MS:
            raise ContractError(f"end_ms must be after start_ms and at most {MAX_MS}", "end_ms")
        if not 0 < self.increment_wh <= MAX_ENERGY_WH:
            raise ContractError(f"increment_wh must be within 1..{MAX_ENERGY_WH}", "increment_wh")
        if not 1 <= self.tier <= MAX_TIER:
            raise ContractError(f"tier must be within 1..{MAX_TIER}", "tier")
        if self.consumer == self.supplier:
            raise ContractError("consumer and supplier must be different meters", "supplier")
        for name in ("consumer_pubkey", "supplier_pubkey"):
            if not is_valid_pubkey(getattr(self, name)):
                raise ContractError(f"{name} must be a 33-byte compressed secp256k1 key in hex", name)
        for name in ("consumer_node", "supplier_node"):
            if not is_node_pubkey(getattr(self, name)):
                raise ContractError(f"{name} must be an LND node pubkey (66 lowercase hex digits)", name)
        if self.consumer_node == self.supplier_node:
            raise ContractError("consumer_node and supplier_node must be different nodes", "supplier_node")

    def canonical(self) -> dict[str, Any]:
        """The canonical document that is hashed and signed (with a version)."""
        doc: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        doc["v"] = CONTRACT_VERSION
        return doc

    @classmethod
    def from_canonical(cls, doc: Mapping[str, Any]) -> ContractTerms:
        names = {f.name for f in fields(cls)}
        if doc.get("v") != CONTRACT_VERSION:
            raise ContractError(f"unsupported contract version {doc.get('v')!r}", "v")
        unknown = set(doc) - names - {"v"}
        if unknown:  # named escaped and few: the caller chose them (no field label, no raw text)
            shown = ", ".join(ascii(k)[:40] for k in sorted(unknown)[:3])
            raise ContractError(f"{len(unknown)} unknown contract field(s): {shown}", None)
        missing = names - set(doc)
        if missing:
            raise ContractError(f"missing contract fields: {', '.join(sorted(missing))}", sorted(missing)[0])
        return cls(**{n: doc[n] for n in names})

    def hash(self) -> bytes:
        """The contract's hash (``Contract.hash`` in common.proto): signed by both meters, anchored."""
        return contract_hash(self.canonical())

    def hash_hex(self) -> str:
        return self.hash().hex()

    def match_hash(self, matcher_tier: int) -> bytes:
        """The matcher's hash of the match this contract came from (``Contract.match_hash``
        in common.proto), given the ``Tier`` the matcher gave it: ``tier`` here is the
        consumer's allocation priority, a different number."""
        return contract_hash(
            match_terms(
                contract_id=self.contract_id,
                consumer=self.consumer,
                supplier=self.supplier,
                energy_wh=self.energy_wh,
                price_msat_per_kwh=self.price_msat_per_kwh,
                start_ms=self.start_ms,
                end_ms=self.end_ms,
                tier=matcher_tier,
            )
        )

    @property
    def duration_ms(self) -> int:
        return self.end_ms - self.start_ms

    def average_power_w(self) -> int:
        """Contracted power: ``energy_wh`` spread evenly over the contract (W, rounded up,
        so a contract always covers at least the power its energy implies)."""
        return -(-self.energy_wh * WMS_PER_WH // self.duration_ms)

    def increments(self) -> int:
        """Number of increments the whole energy takes (the last may be shorter)."""
        return -(-self.energy_wh // self.increment_wh)

    def party_of(self, meter_id: str) -> str | None:
        if meter_id == self.consumer:
            return "consumer"
        if meter_id == self.supplier:
            return "supplier"
        return None


def sign_contract(terms: ContractTerms, key: MeterKey) -> bytes:
    """A meter's DER signature over the contract hash."""
    return key.sign_digest(terms.hash())


def verify_contract_signature(terms: ContractTerms, signature: bytes, pubkey_hex: str) -> bool:
    return verify_digest(signature, terms.hash(), pubkey_hex)


class ContractState(StrEnum):
    PROPOSED = "proposed"
    ACTIVE = "active"
    COMPLETED = "completed"
    ENDED_EARLY = "ended_early"
    DEFAULTED = "defaulted"
    REJECTED = "rejected"

    @property
    def final(self) -> bool:
        return self is not ContractState.PROPOSED and self is not ContractState.ACTIVE


class EndReason(StrEnum):
    END_TIME = "END_TIME"
    ENERGY_DELIVERED = "ENERGY_DELIVERED"
    ENDED_BY_CONSUMER = "ENDED_BY_CONSUMER"
    ENDED_BY_SUPPLIER = "ENDED_BY_SUPPLIER"
    SUPPLIER_GONE = "SUPPLIER_GONE"
    CONSUMER_GONE = "CONSUMER_GONE"
    REJECTED = "REJECTED"
    """A party refused (or failed in time) to sign a proposed contract."""
    PAYMENT_FAILED = "PAYMENT_FAILED"
    PAYMENT_TIMEOUT = "PAYMENT_TIMEOUT"
    SETTLEMENT_FAULT = "SETTLEMENT_FAULT"
    """Settlement could not go on paying it (its worker failed again and again): ended early
    at what was paid, so neither party is bound to energy nobody settles."""

    @property
    def final_state(self) -> ContractState:
        if self in (EndReason.END_TIME, EndReason.ENERGY_DELIVERED):
            return ContractState.COMPLETED
        if self in (EndReason.PAYMENT_FAILED, EndReason.PAYMENT_TIMEOUT):
            return ContractState.DEFAULTED
        if self is EndReason.REJECTED:
            return ContractState.REJECTED
        return ContractState.ENDED_EARLY


@dataclass(frozen=True)
class Contract:
    """A contract's terms, signatures and life-cycle state (immutable: each step
    returns a new value, so the service can persist it before acting on it)."""

    terms: ContractTerms
    state: ContractState = ContractState.PROPOSED
    consumer_signature: bytes | None = None
    supplier_signature: bytes | None = None
    activated_at_ms: int | None = None
    ended_at_ms: int | None = None
    end_reason: EndReason | None = None

    @property
    def contract_id(self) -> str:
        return self.terms.contract_id

    def with_signature(self, party: str, signature: bytes) -> Contract:
        """Attach the ``party`` ("consumer" or "supplier") signature after checking it."""
        if self.state is not ContractState.PROPOSED:
            raise ContractError(f"contract {self.contract_id} is {self.state}, not proposed")
        if party == "consumer":
            pubkey = self.terms.consumer_pubkey
        elif party == "supplier":
            pubkey = self.terms.supplier_pubkey
        else:
            raise ContractError(f"party must be consumer or supplier, not {party!r}", "party")
        if not verify_contract_signature(self.terms, signature, pubkey):
            raise ContractError(f"{party} signature does not verify for contract {self.contract_id}", "signature")
        if party == "consumer":
            return replace(self, consumer_signature=signature)
        return replace(self, supplier_signature=signature)

    @property
    def fully_signed(self) -> bool:
        return self.consumer_signature is not None and self.supplier_signature is not None

    def activate(self, now_ms: int) -> Contract:
        if self.state is not ContractState.PROPOSED:
            raise ContractError(f"contract {self.contract_id} is {self.state}, cannot activate")
        if not self.fully_signed:
            raise ContractError(f"contract {self.contract_id} needs both signatures to activate")
        return replace(self, state=ContractState.ACTIVE, activated_at_ms=now_ms)

    def end(self, reason: EndReason, now_ms: int) -> Contract:
        """End an active contract for ``reason``, or reject a proposed one (``REJECTED``)."""
        if self.state.final:
            raise ContractError(f"contract {self.contract_id} already ended ({self.state})")
        if self.state is ContractState.PROPOSED and reason is not EndReason.REJECTED:
            raise ContractError(f"proposed contract {self.contract_id} can only be rejected")
        if self.state is ContractState.ACTIVE and reason is EndReason.REJECTED:
            raise ContractError(f"active contract {self.contract_id} cannot be rejected, end it instead")
        return replace(self, state=reason.final_state, ended_at_ms=now_ms, end_reason=reason)


def settlement_summary(
    contract: Contract, *, wh_delivered: int, msat_paid: int, increments_paid: int, wh_paid: int
) -> dict[str, Any]:
    """The canonical settlement summary of an ended contract (integers and strings).

    Feed it from :class:`p2pep.settling.increments.DeliveryLedger` (``delivered_wh``,
    ``paid_msat``, ``increments_paid``, ``paid_wh``)."""
    if not contract.state.final or contract.end_reason is None or contract.ended_at_ms is None:
        raise ContractError(f"contract {contract.contract_id} has not ended")
    return {
        "v": 1,
        "contract_id": contract.contract_id,
        "contract_hash": contract.terms.hash_hex(),
        "state": str(contract.state),
        "end_reason": str(contract.end_reason),
        "ended_at_ms": contract.ended_at_ms,
        "wh_delivered": wh_delivered,
        "wh_paid": wh_paid,
        "msat_paid": msat_paid,
        "increments_paid": increments_paid,
    }


def summary_hash(summary: Mapping[str, Any]) -> bytes:
    return settlement_hash(summary)


def sign_summary(summary: Mapping[str, Any], key: MeterKey) -> bytes:
    """Settlement's DER signature over a settlement summary's hash (its statement of what
    was delivered and paid; see ``docs/anchoring.md``, the contract document)."""
    return key.sign_digest(settlement_hash(summary))


def verify_summary_signature(summary: Mapping[str, Any], signature: bytes, pubkey_hex: str) -> bool:
    return verify_digest(signature, settlement_hash(summary), pubkey_hex)
