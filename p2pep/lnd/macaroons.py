"""Least privilege on lnd: the one macaroon each P2PEP service holds, and its baking.

No service holds lnd's ``admin.macaroon``: that stays with the operator's tooling (the
regtest harness, ``p2pep regtest``, the scenario runner, the tests), which bakes, right
after a node is up, one macaroon per service that uses that node, through lnd's
``BakeMacaroon`` with the admin macaroon (:func:`bake_for`), and writes it 0600 next to
the node's own macaroons (``<lnddir>/data/chain/bitcoin/regtest/p2pep-<service>.macaroon``,
:func:`macaroon_filename`; the prefix keeps them apart from lnd's ``admin``, ``router``...). Each service is given only its own file, through its
settings' ``lnd_macaroon`` (:mod:`p2pep.settings`).

Every grant is one RPC (lnd's ``uri:/package.Service/Method`` permission), never an
entity-wide ``entity:action`` pair: ``offchain:write`` would also let a leaked meter
macaroon close channels or change forwarding policies, ``onchain:write`` would let the
anchor's send coins with ``SendCoins``/``SendMany``, fund PSBTs, bump fees and more.
A new call a service makes needs a new row here; ``tests/test_lnd_macaroons.py`` fails
until the table matches what the service's code calls.

==========  ================  ===================================  ==========================================
service     node              RPCs granted                         why
==========  ================  ===================================  ==========================================
meter       its household's   ``Lightning/GetInfo``                wait for its node, learn its pubkey to
            own node                                               register with settlement
                              ``Lightning/AddInvoice``             supplier: one invoice per increment
                                                                   settlement asks for (``CreateInvoice``)
                              ``Lightning/LookupInvoice``          supplier: is an increment's invoice paid
                              ``Lightning/DecodePayReq``           consumer: read an invoice's payee and
                                                                   amount before paying it
                              ``Router/SendPaymentV2``             consumer: pay an increment's invoice
                              ``Router/TrackPaymentV2``            consumer: the outcome of a payment it
                                                                   started before a timeout or restart
                              ``Lightning/ListChannels``,          is there an active channel to the hub (or
                              ``Lightning/PendingChannels``        the counterparty), one still opening
                              ``Lightning/QueryRoutes``            can an increment's payment leave now
                              ``Lightning/ConnectPeer``,           open the household's channel to the hub
                              ``Lightning/OpenChannelSync``        (ad hoc: to its counterparty)
                              ``Lightning/WalletBalance``,         the sats the household app shows
                              ``Lightning/ChannelBalance``
                              ``Lightning/NewAddress``             a receive address the household app
                                                                   shows (receiving only)
anchor      the operator's    ``WalletKit/SendOutputs``            publish one anchoring transaction (an
            hub                                                    OP_RETURN output + change) from the hub
                                                                   wallet
                              ``Lightning/ChannelBalance``,        read-only, for the operator's metrics of
                              ``Lightning/WalletBalance``,         the hub (:mod:`services.anchor.hub`):
                              ``Lightning/ForwardingHistory``      liquidity, on-chain float, fees earned
settlement  none                                                   it tells meters to invoice and pay; it
                                                                   never talks to an lnd node
console     none                                                   reads settlement and the matcher only
matcher     none                                                   no money moves through it
==========  ================  ===================================  ==========================================

What each macaroon cannot do: the meter's cannot send coins to an on-chain address (no
``SendCoins``/``SendMany``/``SendOutputs``; ``NewAddress`` only makes an address to receive to), close channels, list
invoices, sign messages, bake macaroons or stop the node; the anchor's
cannot pay or create invoices, open or close channels, connect to peers, or read more
than the hub's balances and forwarding history. What lnd's macaroons cannot narrow further (so it rests on other controls):
``SendOutputs`` takes any output script, so a leaked anchor macaroon could still pay
the hub's on-chain coins to an address (the anchor's adapter sends only anchor
payloads, :mod:`p2pep.anchor.lnd_wallet`; the operator keeps the hub's on-chain float
small); ``SendPaymentV2`` pays any invoice and ``OpenChannelSync`` may push funds, so
a leaked meter macaroon spends that household's own node (and no one else's).

Each service's macaroons are baked under its own root key id (:attr:`ServiceMacaroon.root_key_id`):
``lncli deletemacaroonid <id>`` on a node revokes that service's macaroon there, without
touching admin's (root key id 0).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

URI = "uri"  # lnd's entity for a one-RPC permission: ("uri", "/package.Service/Method")


@dataclass(frozen=True)
class Grant:
    """One RPC a service may call on its node, and why it needs it."""

    method: str  # full gRPC method, "/lnrpc.Lightning/GetInfo"
    why: str

    @property
    def permission(self) -> tuple[str, str]:
        return (URI, self.method)


@dataclass(frozen=True)
class ServiceMacaroon:
    """What one service may do on the lnd node it uses."""

    service: str
    node: str  # which node it is baked on (documentation)
    root_key_id: int
    grants: tuple[Grant, ...]

    @property
    def methods(self) -> frozenset[str]:
        return frozenset(g.method for g in self.grants)

    @property
    def permissions(self) -> list[tuple[str, str]]:
        return [g.permission for g in self.grants]


def _ln(method: str) -> str:
    return f"/lnrpc.Lightning/{method}"


METER = ServiceMacaroon(
    service="meter",
    node="the household's own node",
    root_key_id=1101,
    grants=(
        Grant(_ln("GetInfo"), "wait for its node and learn its pubkey (registered with settlement)"),
        Grant(_ln("AddInvoice"), "supplier: one invoice per increment settlement asks for"),
        Grant(_ln("LookupInvoice"), "supplier: whether an increment's invoice is paid"),
        Grant(_ln("SubscribeInvoices"),
              "supplier: record each increment's invoice as paid when its node settles it, off the "
              "path of the next increment (it only reads the node's own invoices)"),
        Grant("/invoicesrpc.Invoices/CancelInvoice",
              "supplier: cancel an unpaid increment's invoice whose payment is stuck in flight, "
              "so it is never paid and can be invoiced anew (settlement's ResolveInvoice)"),
        Grant(_ln("DecodePayReq"), "consumer: an invoice's payee and amount, checked before paying"),
        Grant("/routerrpc.Router/SendPaymentV2", "consumer: pay an increment's invoice"),
        Grant("/routerrpc.Router/TrackPaymentV2",
              "consumer: the outcome of a payment started before a timeout or restart, by its hash"),
        Grant(_ln("ListChannels"), "an active channel to the hub or counterparty, and what it can send"),
        Grant(_ln("PendingChannels"), "a channel still opening is not opened twice"),
        Grant(_ln("QueryRoutes"), "whether an increment's payment can leave the node now"),
        Grant(_ln("ConnectPeer"), "reach the hub (ad hoc: the counterparty) before opening a channel"),
        Grant(_ln("OpenChannelSync"), "open the household's channel from its own wallet"),
        Grant(_ln("WalletBalance"), "on-chain sats shown in the household app"),
        Grant(_ln("ChannelBalance"), "channel sats shown in the household app"),
        Grant(_ln("NewAddress"), "a receive address of the household's own wallet, shown in its app"),
    ),
)

ANCHOR = ServiceMacaroon(
    service="anchor",
    node="the operator's hub",
    root_key_id=1102,
    grants=(
        Grant("/walletrpc.WalletKit/SendOutputs",
              "publish one anchoring transaction (OP_RETURN output + change) from the hub's wallet"),
        Grant(_ln("ChannelBalance"), "the hub's channel liquidity, for the operator's metrics (services.anchor.hub)"),
        Grant(_ln("WalletBalance"), "the hub's on-chain float, for the operator's metrics"),
        Grant(_ln("ForwardingHistory"), "the hub's forwarding fees earned, for the operator's metrics"),
    ),
)

SERVICE_MACAROONS: dict[str, ServiceMacaroon] = {m.service: m for m in (METER, ANCHOR)}
"""The services that hold an lnd macaroon; every other service holds none."""

OPERATOR_NODE_SERVICES: tuple[str, ...] = (ANCHOR.service,)
"""Services baked a macaroon on the operator's hub."""
HOUSEHOLD_NODE_SERVICES: tuple[str, ...] = (METER.service,)
"""Services baked a macaroon on a household's node (its meter only)."""


def macaroon_filename(service: str) -> str:
    """The file a service's baked macaroon is written to, beside lnd's own macaroons."""
    if service not in SERVICE_MACAROONS:
        raise ValueError(f"no lnd macaroon for service {service!r} (known: {', '.join(SERVICE_MACAROONS)})")
    return f"p2pep-{service}.macaroon"


class Baker(Protocol):
    async def bake_macaroon(self, permissions: list[tuple[str, str]], root_key_id: int = 0) -> bytes: ...


async def bake_for(node: Baker, service: str) -> bytes:
    """``service``'s macaroon from ``node`` (a client holding a macaroon that may bake)."""
    m = SERVICE_MACAROONS[service]
    return await node.bake_macaroon(m.permissions, m.root_key_id)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by its owner only (0600), atomically (a
    service reading it meanwhile sees the old or the new macaroon, both valid)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
