"""The meter's checks of settlement's requests against its own state (pure).

Every refusal is a :class:`Refusal` with a gRPC-style code and the request field it
is about; the meter's gRPC servicer turns it into a status and a message that starts with the
field's name ("terms_json.price_msat_per_kwh: ...").
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from enum import StrEnum

from p2pep.metering.contract_book import ContractView, Party
from p2pep.refusals import Refused
from p2pep.settling.contracts import ContractError, ContractState, ContractTerms, verify_contract_signature
from p2pep.settling.increments import IncrementClaimError, check_increment_claim


class Code(StrEnum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    NOT_FOUND = "NOT_FOUND"
    ABORTED = "ABORTED"
    UNAVAILABLE = "UNAVAILABLE"


class Refusal(Refused):
    """A request the meter will not carry out (answered with ``code`` by the server's interceptor)."""

    def __init__(self, code: Code, field: str, message: str) -> None:
        super().__init__(field, message)
        self.code = code
        self.status = code.value


def refuse_if(cond: bool, code: Code, field: str, message: str) -> None:
    if cond:
        raise Refusal(code, field, message)


# -- SignContract ------------------------------------------------------------------------


TERMS_FIELDS = frozenset(f"terms_json.{f.name}" for f in fields(ContractTerms)) | {"terms_json", "terms_json.terms",
                                                                                   "terms_json.v"}
"""Every field a refusal of :func:`parse_terms` can name (never text the caller chose)."""
MAX_TERMS_JSON = 16_384


def parse_terms(terms_json: str) -> ContractTerms:
    """The terms in ``terms_json``; every problem (not JSON, nested too deep, numbers too
    large, unknown or missing keys, lone surrogates) is INVALID_ARGUMENT naming one of
    :data:`TERMS_FIELDS`."""
    if len(terms_json) > MAX_TERMS_JSON:
        raise Refusal(Code.INVALID_ARGUMENT, "terms_json", f"longer than {MAX_TERMS_JSON} characters")
    try:
        doc = json.loads(terms_json)
    except (ValueError, TypeError, RecursionError) as e:  # ValueError: also integers of > 4300 digits
        raise Refusal(Code.INVALID_ARGUMENT, "terms_json", f"not JSON ({type(e).__name__})") from None
    if not isinstance(doc, dict):
        raise Refusal(Code.INVALID_ARGUMENT, "terms_json", "must be a JSON object")
    try:
        return ContractTerms.from_canonical(doc)
    except ContractError as e:
        raise Refusal(Code.INVALID_ARGUMENT, f"terms_json.{e.field or 'terms'}", str(e)) from e
    except TypeError as e:
        raise Refusal(Code.INVALID_ARGUMENT, "terms_json", str(e)) from e


ROLE_PARTIES = {
    "consumer": {Party.CONSUMER},
    "producer": {Party.SUPPLIER},
    "prosumer": {Party.CONSUMER, Party.SUPPLIER},
}


@dataclass(frozen=True)
class SigningPolicy:
    """What this meter agrees to."""

    meter_id: str
    pubkey_hex: str
    node_pubkey: str
    """This meter's own LND node (from its lnd's getinfo): the node the terms must name for it."""
    role: str
    price_msat_per_kwh: int
    """Its ask as supplier (a floor) and its limit as consumer (a ceiling)."""
    max_increment_wh: int
    max_contract_ms: int
    ask_msat_per_kwh: int | None = None
    """Its ask as supplier, when it differs from ``price_msat_per_kwh`` (a household's own
    supply order below the standing price)."""


def check_terms(
    terms: ContractTerms,
    policy: SigningPolicy,
    *,
    now_ms: int,
    ordered_wh: int | None,
    committed_wh: int,
) -> Party:
    """Whether this meter signs ``terms``; returns its party.

    ``now_ms`` is real unix ms (contracts run on settlement's real clock).
    ``ordered_wh``: energy its recent orders on that side asked for (None: not
    checked); ``committed_wh``: energy of its open contracts signed against them."""
    role = terms.party_of(policy.meter_id)
    if role is None:
        raise Refusal(
            Code.FAILED_PRECONDITION, "terms_json.consumer",
            f"meter {policy.meter_id} is neither consumer ({terms.consumer}) nor supplier ({terms.supplier})",
        )
    party = Party(role)
    key_field = f"{party.value}_pubkey"
    refuse_if(getattr(terms, key_field).lower() != policy.pubkey_hex.lower(), Code.FAILED_PRECONDITION,
              f"terms_json.{key_field}", f"is not the key of meter {policy.meter_id}")
    node_field = f"{party.value}_node"
    refuse_if(getattr(terms, node_field) != policy.node_pubkey.lower(), Code.FAILED_PRECONDITION,
              f"terms_json.{node_field}", f"is not the LND node of meter {policy.meter_id} ({policy.node_pubkey})")
    refuse_if(party not in ROLE_PARTIES[policy.role], Code.FAILED_PRECONDITION, f"terms_json.{party.value}",
              f"meter {policy.meter_id} is a {policy.role} and does not act as {party.value}")
    price = terms.price_msat_per_kwh
    if party is Party.CONSUMER:
        refuse_if(price > policy.price_msat_per_kwh, Code.FAILED_PRECONDITION, "terms_json.price_msat_per_kwh",
                  f"{price} msat/kWh is above this consumer's limit {policy.price_msat_per_kwh}")
    else:
        ask = policy.price_msat_per_kwh if policy.ask_msat_per_kwh is None else policy.ask_msat_per_kwh
        refuse_if(price < ask, Code.FAILED_PRECONDITION, "terms_json.price_msat_per_kwh",
                  f"{price} msat/kWh is below this supplier's ask {ask}")
    refuse_if(terms.increment_wh > policy.max_increment_wh, Code.FAILED_PRECONDITION, "terms_json.increment_wh",
              f"{terms.increment_wh} Wh is above this meter's maximum increment {policy.max_increment_wh} Wh")
    refuse_if(terms.end_ms <= now_ms, Code.FAILED_PRECONDITION, "terms_json.end_ms",
              f"the contract is already over (end {terms.end_ms} <= now {now_ms})")
    refuse_if(terms.duration_ms > policy.max_contract_ms, Code.FAILED_PRECONDITION, "terms_json.end_ms",
              f"the contract lasts {terms.duration_ms} ms, more than {policy.max_contract_ms} ms")
    refuse_if(terms.start_ms > now_ms + policy.max_contract_ms, Code.FAILED_PRECONDITION, "terms_json.start_ms",
              "the contract starts too far in the future")
    if ordered_wh is not None:
        refuse_if(committed_wh + terms.energy_wh > ordered_wh, Code.FAILED_PRECONDITION, "terms_json.energy_wh",
                  f"{terms.energy_wh} Wh exceeds what this meter's recent orders leave open "
                  f"({max(0, ordered_wh - committed_wh)} Wh)")
    return party


def check_counterparty_registered(terms: ContractTerms, party: Party, registered: tuple[str, str] | None) -> None:
    """The consumer's check of whom it would pay: the supplier named in the terms is
    registered with settlement (asked by this meter itself) with exactly the key and LND
    node the terms give it. ``registered`` is ``(pubkey, node_pubkey)`` of the counterparty,
    None when it is not registered. So whoever asks a meter to sign, the payee of what it
    signs is the supplier meter's own node, never a node the asker chose."""
    other = Party.SUPPLIER if party is Party.CONSUMER else Party.CONSUMER
    meter_id = terms.supplier if other is Party.SUPPLIER else terms.consumer
    refuse_if(registered is None, Code.FAILED_PRECONDITION, f"terms_json.{other.value}",
              f"meter {meter_id} is not registered with settlement")
    assert registered is not None
    pubkey, node = registered
    refuse_if(pubkey.lower() != getattr(terms, f"{other.value}_pubkey"), Code.FAILED_PRECONDITION,
              f"terms_json.{other.value}_pubkey", f"is not the key meter {meter_id} registered")
    refuse_if(node.lower() != getattr(terms, f"{other.value}_node"), Code.FAILED_PRECONDITION,
              f"terms_json.{other.value}_node", f"is not the LND node meter {meter_id} registered")


# -- UpdateContract ------------------------------------------------------------------------

REPORTED_TERMS = {
    "contract_id": "contract.contract_id", "consumer": "contract.consumer", "supplier": "contract.supplier",
    "energy_wh": "contract.energy_wh", "price_msat_per_kwh": "contract.price_msat_per_kwh",
    "start_ms": "contract.start", "end_ms": "contract.end", "increment_wh": "increment_wh",
    "consumer_node": "consumer_node", "supplier_node": "supplier_node",
}
"""Terms a ``ContractRecord`` restates, and the record field that carries each (a report may
leave them empty)."""


def check_report_matches_terms(terms: ContractTerms, reported: Mapping[str, object], contract_hash: bytes) -> None:
    """A report (``UpdateContract``, a poll) may move a contract's state and progress only:
    every part of it that restates the signed terms (``reported``: field name to value, an
    empty or zero value meaning "not stated") must equal them, and so must its contract
    hash if it states one. INVALID_ARGUMENT names the first field that differs."""
    for name, field in REPORTED_TERMS.items():
        value = reported.get(name)
        if value in (None, "", 0):
            continue
        signed = getattr(terms, name)
        same = value.lower() == signed if isinstance(value, str) and name.endswith("_node") else value == signed
        refuse_if(not same, Code.INVALID_ARGUMENT, field,
                  f"{value!r} differs from the signed terms ({signed!r}): a report cannot change them")
    refuse_if(bool(contract_hash) and contract_hash != terms.hash(), Code.INVALID_ARGUMENT, "contract.hash",
              "is not the hash of the terms this meter signed")


def check_counterparty_signature(terms: ContractTerms, party: Party, signature: bytes) -> None:
    """Before a meter takes a contract it signed as running (active, or ended with energy
    to bill), the report must carry the counterparty's valid signature over the same terms:
    a contract nobody else signed never runs, whoever reports it."""
    other = Party.SUPPLIER if party is Party.CONSUMER else Party.CONSUMER
    field = f"{other.value}_signature"
    refuse_if(not signature, Code.FAILED_PRECONDITION, field,
              f"the {other.value}'s signature is missing: the contract is not signed by both parties")
    refuse_if(not verify_contract_signature(terms, signature, getattr(terms, f"{other.value}_pubkey")),
              Code.FAILED_PRECONDITION, field, f"does not verify against the {other.value}'s key in the terms")


# -- CreateInvoice / PayInvoice ------------------------------------------------------------


# DEFAULTED too: settlement collects what was delivered after a payment failure that passes
# (services/settlement/payments.py); the increment checks still allow only delivered Wh
PAYABLE_STATES = (ContractState.ACTIVE, ContractState.COMPLETED, ContractState.ENDED_EARLY, ContractState.DEFAULTED)


def check_contract_for_billing(view: ContractView | None, contract_id: str, party: Party) -> ContractView:
    """The contract exists here, this meter signed it as ``party``, and it is active
    (or ended, for its final increment)."""
    if view is None:
        raise Refusal(Code.FAILED_PRECONDITION, "contract_id", f"{contract_id!r} was not signed by this meter")
    refuse_if(view.party is not party, Code.FAILED_PRECONDITION, "contract_id",
              f"this meter is the {view.party.value} of {contract_id}, not the {party.value}")
    refuse_if(view.state not in PAYABLE_STATES, Code.FAILED_PRECONDITION, "contract_id",
              f"contract {contract_id} is {view.state.value}")
    return view


def check_increment(
    view: ContractView,
    *,
    increment: int,
    from_wh: int,
    to_wh: int,
    amount_msat: int | None,
    last_number: int,
    last_to_wh: int,
    contract_ended: bool,
) -> int:
    """The increment is the next one after ``last_number`` and covers what the
    contract's accounting says; returns its amount (msat)."""
    t = view.terms
    try:
        return check_increment_claim(
            number=increment, from_wh=from_wh, to_wh=to_wh, amount_msat_=amount_msat,
            energy_wh=t.energy_wh, increment_wh=t.increment_wh, price_msat_per_kwh=t.price_msat_per_kwh,
            last_paid_number=last_number, last_paid_to_wh=last_to_wh, contract_ended=contract_ended,
        )
    except IncrementClaimError as e:
        code = Code.INVALID_ARGUMENT if e.field == "amount_msat" else Code.FAILED_PRECONDITION
        raise Refusal(code, e.field, str(e)) from e


@dataclass(frozen=True)
class DecodedInvoice:
    destination: str
    payment_hash: str
    amount_msat: int
    expires_ms: int


def check_invoice_to_pay(
    invoice: DecodedInvoice, *, terms: ContractTerms, amount_msat: int, now_ms: int
) -> None:
    """The invoice pays the ``supplier_node`` of the terms this meter signed (nothing else
    names the payee), asks exactly ``amount_msat`` (the increment's amount under those
    terms, from :func:`check_increment`), and has not expired."""
    refuse_if(invoice.amount_msat != amount_msat, Code.INVALID_ARGUMENT, "payment_request",
              f"invoice is for {invoice.amount_msat} msat, the increment is {amount_msat} msat")
    refuse_if(invoice.destination.lower() != terms.supplier_node, Code.FAILED_PRECONDITION, "payment_request",
              f"invoice pays node {invoice.destination}, not the supplier's node {terms.supplier_node} "
              "in the signed terms")
    refuse_if(invoice.expires_ms <= now_ms, Code.FAILED_PRECONDITION, "payment_request", "invoice has expired")


def check_not_paying_ahead(
    *, paid_wh_total: int, increment_wh_to_pay: int, import_since_first_contract_wh: int, increment_wh: int
) -> None:
    """Never pay for more energy than imported, plus one increment (the one being paid
    while it is still flowing): ``paid + (to - from) <= imported + increment``."""
    limit = import_since_first_contract_wh + increment_wh
    refuse_if(paid_wh_total + increment_wh_to_pay > limit, Code.FAILED_PRECONDITION, "to_wh",
              f"paying {increment_wh_to_pay} Wh more would make {paid_wh_total + increment_wh_to_pay} Wh paid, "
              f"but only {import_since_first_contract_wh} Wh were imported under contracts (+{increment_wh} Wh)")


#: in a meter's UNAVAILABLE answer to PayInvoice: its lnd has the payment neither settled nor
#: failed (e.g. resumed after a crash). Settlement never settles such an increment as unpaid:
#: the payment may still arrive (services/settlement/payments.py).
STILL_IN_FLIGHT = "the payment is still in flight"


def fee_limit_msat(amount_msat: int) -> int:
    """Routing fee cap for one increment: 1 % plus 1000 msat (room for a hub on lnd's default 1 sat base
    fee; the regtest hub charges 0.1 %)."""
    return amount_msat // 100 + 1000


# -- the relay's own check -------------------------------------------------------------------


def own_check_allows(unpaid_wh: int, next_step_wh: int, increment_wh: int) -> bool:
    """The meter's own check of one contract before it lets the next step flow: after
    it, less than two increments of the contract may be unpaid (one full increment
    while it is being paid, never two)."""
    return unpaid_wh + next_step_wh < 2 * increment_wh


def own_check_blocks(contracts: Iterable[tuple[str, int, int]], next_step_wh: int) -> str | None:
    """The first ``(contract_id, unpaid_wh, increment_wh)`` the next step could push to two
    unpaid increments (its share of the step is at most the whole step), as a reason;
    None if the step may flow.

    Per contract, not in total: with a demand split over several suppliers each
    contract may hold almost one increment unpaid that is not due yet, so a total of
    two increments unpaid is normal there, and blocking on it would wait for payments
    that settlement has no reason to make."""
    for cid, unpaid, inc in contracts:
        if not own_check_allows(unpaid, next_step_wh, inc):
            return f"own check: contract {cid} has {unpaid} Wh unpaid + {next_step_wh} Wh next step >= 2 x {inc} Wh"
    return None
