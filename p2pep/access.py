"""Who may call which RPC, and on whose behalf: the one authorization table of P2PEP.

Every RPC every P2PEP server answers is a key of :data:`ACCESS` (a test checks this against
the protos); a method that is not is refused (default deny). A :class:`Rule` names:

* ``services``: the services (by certificate name) that may call it, for anyone;
* ``operators``: whether operator identities (the ``p2pep`` CLI, the scenario harness) may;
* ``meter``: ``None`` if no meter may; otherwise the request fields that must equal the
  calling meter's id (``a.b`` a nested field, ``xs[]`` every element of a repeated field and
  at least one, ``xs[]?`` every element, possibly none). With no fields, any meter may call
  it and the service itself checks the rest (:func:`p2pep.servicekit.auth.acting_meter`: e.g.
  that the caller is a party of the contract it names). For a client stream, every message
  is checked.
* ``meter_view``: for a meter caller, the part of the response it may see (e.g. its own
  record of ``ListMeters``).

The policy, in words (issue 11): a meter acts only for itself (its orders, readings,
contracts, registration); settlement alone asks a meter to sign, invoice, pay or update a
contract, reports contract ends to the matcher and adds leaves to the anchor; the console,
the portal and operators read; nobody else writes, but a household, through the portal,
places and cancels its own meter's orders (the meter itself submits them to the matcher).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: The readers of everything: the operator's console and the households' portal (which
#: shows each household only its own, behind its sign-in), and operator tools.
READERS = frozenset({"console", "portal"})
SETTLEMENT = frozenset({"settlement"})
PORTAL = frozenset({"portal"})

MeterView = Callable[[Any, str], Any]


@dataclass(frozen=True)
class Rule:
    services: frozenset[str] = frozenset()
    operators: bool = False
    meter: tuple[str, ...] | None = None
    meter_view: MeterView | None = None
    anyone: bool = False  # any identity of the CA (health checks)


def readers(*, meter: tuple[str, ...] | None = None, also: frozenset[str] = frozenset(),
            meter_view: MeterView | None = None) -> Rule:
    return Rule(services=READERS | also, operators=True, meter=meter, meter_view=meter_view)


def settlement_only() -> Rule:
    return Rule(services=SETTLEMENT)


PUBLIC_METER_FIELDS = ("meter_id", "role", "pubkey", "node_pubkey", "node_address")
"""What a meter may learn of another meter: its public identity (the keys a counterparty
checks in the terms it signs) and its lnd node's p2p address (to open a channel to a
counterparty in ad hoc mode, as Lightning's own gossip would tell). Never its service
address, sequence or registers (a household's load curve), nor where it is installed (the
household's place: the console, the portal and operators read it)."""


def meter_directory_view(response: Any, meter_id: str) -> Any:
    """``ListMeters`` as a meter sees it: its own record whole, the others' public fields
    (every other field cleared, so a field added to ``MeterInfo`` stays hidden from meters
    until it is named public here)."""
    for m in response.meters:
        if m.meter_id != meter_id:
            for f, _ in m.ListFields():
                if f.name not in PUBLIC_METER_FIELDS:
                    m.ClearField(f.name)
    return response


S = "/p2pep.v1.SettlementService/"
M = "/p2pep.v1.MatcherService/"
MT = "/p2pep.v1.MeterService/"
A = "/p2pep.v1.AnchorService/"
H = "/grpc.health.v1.Health/"

ACCESS: dict[str, Rule] = {
    # settlement
    S + "RegisterMeter": Rule(meter=("meter_id",)),
    S + "StreamReadings": Rule(meter=("meter_id",)),
    S + "EndContract": Rule(meter=("meter_id",)),  # settlement checks it is a party
    S + "GetContract": readers(meter=()),  # settlement checks the meter is a party
    S + "ExportContract": readers(meter=()),  # settlement checks the meter is a party
    S + "ListContracts": readers(meter=("meter_id",)),
    S + "GetUsage": readers(meter=("meter_id",)),
    S + "GetProduction": readers(meter=("meter_id",)),
    S + "ListPayments": readers(meter=("meter_id",)),
    S + "ListMeters": readers(meter=(), meter_view=meter_directory_view),
    # matcher
    M + "SubmitSupply": Rule(meter=("order.meter_id",)),
    M + "SubmitDemand": Rule(meter=("order.meter_id",)),
    M + "SubmitBatch": Rule(meter=("orders[].meter_id",)),
    M + "Cancel": Rule(meter=("meter_id",)),
    M + "GetBook": readers(meter=("meter_ids[]?",), also=SETTLEMENT),
    M + "ExtendContract": Rule(meter=()),  # the matcher checks the caller is the contract's consumer
    M + "ReportContractEnd": settlement_only(),
    M + "ListContracts": readers(meter=("meter_id",), also=SETTLEMENT),
    M + "StreamEvents": readers(meter=("meter_ids[]",), also=SETTLEMENT),
    # a meter (the household's reads; settlement's requests)
    MT + "GetStatus": readers(),
    MT + "WatchStatus": readers(),
    MT + "ListContracts": readers(),
    MT + "ListPayments": readers(),
    MT + "ClaimPairing": Rule(services=PORTAL),  # a household adds the meter to its account
    # the household's own trades and receive address, from its app (the portal acts only
    # for the account the meter is paired with)
    MT + "PlaceOrder": Rule(services=PORTAL),
    MT + "ListOrders": Rule(services=PORTAL),
    MT + "CancelOrder": Rule(services=PORTAL),
    MT + "NewAddress": Rule(services=PORTAL),
    MT + "SignContract": settlement_only(),
    MT + "CreateInvoice": settlement_only(),
    MT + "PayInvoice": settlement_only(),
    MT + "ResolveInvoice": settlement_only(),
    MT + "UpdateContract": settlement_only(),
    # anchor
    A + "AddLeaves": settlement_only(),
    A + "GetProofs": readers(also=SETTLEMENT),
    A + "ListBatches": readers(also=SETTLEMENT),
    # served only on the enrollment port (p2pep.pki.service: TLS without client certificates,
    # nothing else served there); on an mTLS port nobody may call it
    "/p2pep.v1.EnrollmentService/Enroll": Rule(),
    # every server
    H + "Check": Rule(anyone=True),
    H + "Watch": Rule(anyone=True),
}


def field_values(message: Any, path: str) -> tuple[list[str], bool]:
    """The values at ``path`` in ``message`` and whether an empty list is acceptable."""
    optional_empty = path.endswith("?")
    parts = path.rstrip("?").split(".")
    values: list[Any] = [message]
    for part in parts:
        nxt: list[Any] = []
        name = part.removesuffix("[]")
        for v in values:
            got = getattr(v, name)
            if part.endswith("[]"):
                nxt.extend(got)
            else:
                nxt.append(got)
        values = nxt
    return [str(v) for v in values], optional_empty


def on_behalf_problem(rule: Rule, request: Any, meter_id: str) -> str | None:
    """Why a meter's request is not on its own behalf (``None``: it is)."""
    assert rule.meter is not None
    for path in rule.meter:
        values, optional_empty = field_values(request, path)
        name = path.rstrip("?")
        if not values and not optional_empty:
            return f"{name}: must name the calling meter {meter_id!r}"
        wrong = [v for v in values if v != meter_id]
        if wrong:
            return f"{name}: {wrong[0]!r} is not the calling meter {meter_id!r}"
    return None
