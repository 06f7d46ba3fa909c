"""The lnd permission table (p2pep.lnd.macaroons) against what the services' code calls.

Each service's grants must be exactly the RPCs its code makes: every method of the
meter's :class:`~services.meter.lightning.LightningNode` (and the anchor's wallet
adapter) is run against a channel that records the gRPC method it is sent, and the
recorded set must equal the table's. A new lnd call without a grant (it would be refused
by lnd), or a grant nothing uses (privilege for nothing), fails here.
"""

from __future__ import annotations

import inspect
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from p2pep.anchor import opreturn
from p2pep.anchor.lnd_wallet import LndAnchorWallet
from p2pep.lnd.client import LndClient, LndConnection
from p2pep.lnd.macaroons import (
    ANCHOR,
    HOUSEHOLD_NODE_SERVICES,
    METER,
    OPERATOR_NODE_SERVICES,
    SERVICE_MACAROONS,
    URI,
    bake_for,
    macaroon_filename,
    write_private,
)
from p2pep.regtest.lnd_node import LndInfo
from p2pep.settings import SERVICE_SETTINGS
from services.anchor.hub import HubNode
from services.meter.lightning import LightningNode

PUBKEY = "02" + "ab" * 32


class Sent(Exception):
    """Raised by the recording channel once it has noted a call."""


class _Stream:
    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> Any:
        raise Sent()

    def cancel(self) -> None:
        pass


class RecordingChannel:
    """Stands in for a grpc.aio channel: notes each RPC's full method name, answers none."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Callable[..., Awaitable[Any]]:
        async def call(*a: Any, **kw: Any) -> Any:
            self.calls.append(method)
            raise Sent(method)
        return call

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Callable[..., _Stream]:
        def call(*a: Any, **kw: Any) -> _Stream:
            self.calls.append(method)
            return _Stream()
        return call

    stream_unary = unary_unary
    stream_stream = unary_stream

    async def close(self) -> None:
        pass


def recording_client() -> tuple[LndClient, RecordingChannel]:
    ch = RecordingChannel()
    return LndClient(LndConnection("n", "127.0.0.1:1", "/none", "/none"), channel=ch), ch  # type: ignore[arg-type]


# Arguments to call each LightningNode method with (a new method needs a row: and a grant).
METER_CALLS: dict[str, tuple[Any, ...]] = {
    "get_info": (),
    "add_invoice": (1000,),
    "lookup_invoice": ("00" * 32,),
    "cancel_invoice": ("00" * 32,),
    "subscribe_invoices": (),
    "decode_pay_req": ("lnbcrt1",),
    "pay": ("lnbcrt1",),
    "track_payment": ("00" * 32,),
    "list_channels": (False, PUBKEY),
    "pending_channels": (),
    "channel_balance": (),
    "wallet_balance": (),
    "new_address": (),
    "connect": (PUBKEY, "127.0.0.1:9735"),
    "open_channel": (PUBKEY, 100_000),
    "can_send": (PUBKEY, 1000),
}


def node_methods() -> list[str]:
    """The meter's lnd calls: LightningNode's methods, but ``close`` (the gRPC channel's)."""
    return sorted(n for n, _ in inspect.getmembers(LightningNode, inspect.isfunction)
                  if not n.startswith("_") and n != "close")


async def _awaited(call: Any) -> Any:
    """A call's result; a stream's first item."""
    return await anext(call) if inspect.isasyncgen(call) else await call


async def rpcs_of(run: Callable[[LndClient], Awaitable[Any]]) -> list[str]:
    client, ch = recording_client()
    with pytest.raises(Sent):
        await run(client)
    return ch.calls


async def test_the_meter_is_granted_exactly_the_rpcs_its_node_interface_makes() -> None:
    assert node_methods() == sorted(METER_CALLS), "a LightningNode method without a row in METER_CALLS"
    made: dict[str, list[str]] = {}
    for name, args in METER_CALLS.items():
        made[name] = await rpcs_of(lambda c, name=name, args=args: _awaited(getattr(c, name)(*args)))
        assert len(made[name]) == 1, (name, made[name])
    assert {m for calls in made.values() for m in calls} == METER.methods


async def test_the_anchor_is_granted_exactly_what_its_wallet_adapter_and_hub_monitor_send() -> None:
    payload = opreturn.encode_payload(b"\x11" * 32)
    sent = await rpcs_of(lambda c: LndAnchorWallet(c).send_op_return(payload, 1))
    assert sent == ["/walletrpc.WalletKit/SendOutputs"]
    read = [await rpcs_of(lambda c, name=name: getattr(c, name)())  # what HubMonitor.poll_once reads
            for name in ("channel_balance", "wallet_balance", "forwarding_history")]
    assert {m for calls in [sent, *read] for m in calls} == ANCHOR.methods
    hub_reads = {name for name, _ in inspect.getmembers(HubNode) if not name.startswith("_")}
    assert hub_reads == {"channel_balance", "wallet_balance", "forwarding_history"}


def test_the_table() -> None:
    """One-RPC grants only, each with a reason; distinct root keys (revocable apart from
    admin's, 0); the anchor can neither pay nor invoice nor touch channels; the meter
    cannot send coins on-chain; only the meter and the anchor hold a macaroon at all."""
    assert set(SERVICE_MACAROONS) == {"meter", "anchor"}
    assert set(SERVICE_SETTINGS) >= set(SERVICE_MACAROONS)
    for m in SERVICE_MACAROONS.values():
        assert all(e == URI and a.startswith("/") and a.count("/") == 2 for e, a in m.permissions)
        assert all(g.why for g in m.grants) and len(m.methods) == len(m.grants)
    ids = [m.root_key_id for m in SERVICE_MACAROONS.values()]
    assert 0 not in ids and len(set(ids)) == len(ids)
    lightning = {"/routerrpc.Router/SendPaymentV2", "/lnrpc.Lightning/SendPaymentSync", "/lnrpc.Lightning/AddInvoice",
                 "/lnrpc.Lightning/OpenChannelSync", "/lnrpc.Lightning/CloseChannel", "/lnrpc.Lightning/ConnectPeer"}
    assert not ANCHOR.methods & lightning
    on_chain = {"/lnrpc.Lightning/SendCoins", "/lnrpc.Lightning/SendMany", "/walletrpc.WalletKit/SendOutputs",
                "/lnrpc.Lightning/CloseChannel", "/lnrpc.Lightning/BakeMacaroon"}
    assert not METER.methods & on_chain
    assert OPERATOR_NODE_SERVICES == ("anchor",) and HOUSEHOLD_NODE_SERVICES == ("meter",)


def test_which_node_holds_which_macaroon(tmp_path: Path) -> None:
    hub = LndInfo("hub", str(tmp_path / "hub"), 1, 2, 3, 4)
    home = LndInfo("meter-7", str(tmp_path / "meter-7"), 1, 2, 3, 4)
    assert hub.service_macaroon("anchor").endswith("/data/chain/bitcoin/regtest/p2pep-anchor.macaroon")
    assert home.service_macaroon("meter") == str(home.macaroon_dir / "p2pep-meter.macaroon")
    with pytest.raises(ValueError, match="meter holds no macaroon of node hub"):
        hub.service_macaroon("meter")
    with pytest.raises(ValueError, match="anchor holds no macaroon of node meter-7"):
        home.service_macaroon("anchor")
    with pytest.raises(ValueError, match="no lnd macaroon for service 'settlement'"):
        macaroon_filename("settlement")


class FakeBaker:
    def __init__(self) -> None:
        self.asked: list[tuple[list[tuple[str, str]], int]] = []

    async def bake_macaroon(self, permissions: list[tuple[str, str]], root_key_id: int = 0) -> bytes:
        self.asked.append((permissions, root_key_id))
        return b"mac"


async def test_bake_for_asks_for_the_table_and_the_file_is_private(tmp_path: Path) -> None:
    baker = FakeBaker()
    assert await bake_for(baker, "anchor") == b"mac"
    assert baker.asked == [(ANCHOR.permissions, ANCHOR.root_key_id)]
    path = tmp_path / "anchor.macaroon"
    path.write_bytes(b"old")
    os.chmod(path, 0o644)
    write_private(path, b"new")
    assert path.read_bytes() == b"new" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["anchor.macaroon"]
