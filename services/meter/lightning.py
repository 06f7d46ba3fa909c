"""The meter's own LND node: readiness, channels, cached balances.

The meter talks to its node through :class:`LightningNode`, the subset of
:class:`p2pep.lnd.client.LndClient` it uses (tests pass ``tests/fakes/lightning.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import structlog

from p2pep.lnd import metrics as lnd_metrics
from p2pep.lnd.client import LndError, PaymentResult
from p2pep.lndrpc import lightning_pb2 as ln

log = structlog.get_logger("meter.lightning")


class LightningNode(Protocol):
    async def get_info(self) -> ln.GetInfoResponse: ...
    async def add_invoice(self, value_msat: int, memo: str = "", expiry_s: int = 3600,
                          private: bool = False) -> ln.AddInvoiceResponse: ...
    async def lookup_invoice(self, r_hash: bytes | str) -> ln.Invoice: ...
    async def cancel_invoice(self, r_hash: bytes | str) -> None: ...
    def subscribe_invoices(self, add_index: int = 0, settle_index: int = 0) -> AsyncIterator[ln.Invoice]: ...
    async def decode_pay_req(self, payment_request: str) -> ln.PayReq: ...
    async def pay(self, payment_request: str, timeout_s: int = 30, fee_limit_msat: int = 10_000,
                  max_parts: int = 1) -> PaymentResult: ...
    async def track_payment(self, payment_hash: str, timeout: float | None = None) -> ln.Payment | None: ...
    async def list_channels(self, active_only: bool = False, peer: str | None = None) -> list[ln.Channel]: ...
    async def pending_channels(self) -> ln.PendingChannelsResponse: ...
    async def channel_balance(self) -> ln.ChannelBalanceResponse: ...
    async def wallet_balance(self) -> ln.WalletBalanceResponse: ...
    async def new_address(self, kind: str = "p2wkh") -> str: ...
    async def connect(self, pubkey: str, host: str) -> None: ...
    async def open_channel(self, pubkey: str, local_sat: int, push_sat: int = 0, private: bool = False,
                           sat_per_vbyte: int = 2) -> str: ...
    async def can_send(self, dest_pubkey: str, amount_msat: int) -> bool: ...
    async def close(self) -> None: ...


HTLC_WEIGHT = 172  # weight of one more HTLC output on a commitment (lnd's input.HTLCWeight)


def spendable_sat(ch: ln.Channel) -> int:
    """What a channel can send now, conservatively: local balance above its reserve,
    and, on a channel this node opened (it pays the commitment fee), less the fee
    buffer lnd keeps before it adds an HTLC: twice the fee of the commitment with one
    more HTLC at the channel's fee rate. lnd's own figure (``AvailableBalance``) is not
    exposed; :meth:`LndClient.can_send` asks its pathfinding, which uses it."""
    reserve = ch.local_constraints.chan_reserve_sat if ch.HasField("local_constraints") else ch.local_chan_reserve_sat
    buffer = -(-2 * ch.fee_per_kw * (ch.commit_weight + HTLC_WEIGHT) // 1000) if ch.initiator else 0
    return max(0, ch.local_balance - reserve - buffer)


class Stopping(Exception):
    """The meter is stopping while it waited for something."""


async def wait_node_ready(node: LightningNode, stop: asyncio.Event, name: str) -> str:
    """Wait until the node answers GetInfo; returns its pubkey. Raises :class:`Stopping`."""
    delay, last = 0.2, ""
    while not stop.is_set():
        try:
            info = await node.get_info()
            if info.identity_pubkey:
                log.info("lnd ready", node=name, pubkey=info.identity_pubkey, synced=info.synced_to_chain)
                return str(info.identity_pubkey)
        except (LndError, OSError) as e:
            if str(e) != last:
                log.info("waiting for lnd", node=name, error=str(e))
                last = str(e)
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except TimeoutError:
            pass
        delay = min(delay * 2, 3.0)
    raise Stopping("stopped while waiting for lnd")


@dataclass(frozen=True)
class PeerChannels:
    spendable_sat: int
    largest_sat: int
    """Spendable on the best single channel: what one payment can carry."""
    active: int
    """Active channels with the peer."""
    exists: bool
    """Any channel with the peer, active or not, or one still opening."""


async def peer_channels(node: LightningNode, peer: str) -> PeerChannels:
    channels = await node.list_channels(peer=peer)
    active = [c for c in channels if c.active]
    pending = await node.pending_channels()
    opening = any(p.channel.remote_node_pub == peer for p in pending.pending_open_channels)
    each = [spendable_sat(c) for c in active]
    return PeerChannels(sum(each), max(each, default=0), len(active), bool(channels) or opening)


async def ensure_channel(
    node: LightningNode,
    peer: str,
    host: str,
    *,
    need_sat: int,
    open_sat: int,
    push_sat: int = 0,
    wait_s: float = 60.0,
    open_if_any: bool = True,
    route_msat: int = 0,
) -> int:
    """Make sure active channels to ``peer`` can send ``need_sat`` (0: one active channel
    is enough). If not, connect, and unless a channel is still opening (or, with
    ``open_if_any=False``, any channel exists) open one of ``open_sat`` pushing
    ``push_sat``; then wait up to ``wait_s`` (someone mines blocks) until it is active.
    With ``route_msat``, lnd must also find a route to ``peer`` for that much (or, if
    no single channel can carry it, for what the best one should): the truth check of
    the estimate against the channels' real bandwidth (:meth:`LndClient.can_send`).
    Returns the spendable sat. Raises TimeoutError or LndError."""

    async def ok(pc: PeerChannels) -> bool:
        if not (pc.active > 0 and pc.spendable_sat >= need_sat):
            return False
        probe = min(route_msat, pc.largest_sat * 1000)
        return not probe or await node.can_send(peer, probe)

    pc = await peer_channels(node, peer)
    if await ok(pc):
        return pc.spendable_sat
    if host:
        await node.connect(peer, host)
    pending = await node.pending_channels()
    opening = any(p.channel.remote_node_pub == peer for p in pending.pending_open_channels)
    if not opening and (open_if_any or not pc.exists):
        point = await node.open_channel(peer, open_sat, push_sat=push_sat)
        log.info("channel opening", peer=peer, sat=open_sat, push_sat=push_sat, channel_point=point)
    deadline = time.monotonic() + wait_s
    delay = 0.2
    while True:
        pc = await peer_channels(node, peer)
        if await ok(pc):
            log.info("channel active", peer=peer, spendable_sat=pc.spendable_sat, channels=pc.active)
            return pc.spendable_sat
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no active channel to {peer} with {need_sat} sat spendable after {wait_s:.0f}s "
                               f"(spendable {pc.spendable_sat} sat over {pc.active} active channels)")
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 2.0)


@dataclass
class Balances:
    wallet_sat: int = 0
    channel_local_sat: int = 0
    channel_remote_sat: int = 0
    refreshed: float = 0.0


class BalanceCache:
    """LND balances, refreshed in the background (never per status call), and exported as the
    node's liquidity metrics (:mod:`p2pep.lnd.metrics`, ``node`` = ``name``)."""

    def __init__(self, node: LightningNode, name: str = "") -> None:
        self.node = node
        self.name = name
        self.value = Balances()

    async def refresh(self) -> Balances:
        w = await self.node.wallet_balance()
        c = await self.node.channel_balance()
        self.value = Balances(
            wallet_sat=w.confirmed_balance,
            channel_local_sat=c.local_balance.sat if c.HasField("local_balance") else c.balance,
            channel_remote_sat=c.remote_balance.sat if c.HasField("remote_balance") else 0,
            refreshed=time.monotonic(),
        )
        if self.name:
            v = self.value
            lnd_metrics.observe_balances(self.name, local_sat=v.channel_local_sat, remote_sat=v.channel_remote_sat,
                                         wallet_sat=v.wallet_sat)
        return self.value
