"""Taking a meter's money away, for the "consumer cannot pay" scenario (I/O).

The runner holds every regtest node's admin macaroon (it is the test harness, not a
P2PEP service): it pays most of the consumer's channel balance to the channel's
peer with an invoice of that peer, and can sweep the consumer's on-chain wallet so
the meter cannot simply open a new channel.

Spendable balance is measured with QueryRoutes pinned to the channel: lnd's path
finding checks the local channel's bandwidth (reserve and fee buffer included)
without locking any HTLC, so the meter's own payments are not disturbed while the
runner searches (see :mod:`p2pep.scenario.drain`).
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc

from p2pep.lnd.client import LndClient, LndError
from p2pep.lndrpc import lightning_pb2 as ln
from p2pep.lndrpc.routerrpc import router_pb2 as router
from p2pep.scenario.drain import MAX_CHUNK_MSAT, drain_amount_msat, max_sendable

# Close enough: stop paying when less than this is left above what should stay.
DRAIN_SLACK_MSAT = 1_000
# A drain that leaves more than this above what should stay did not work.
DRAIN_TOLERANCE_MSAT = 100_000

# What an on-chain sweep leaves for its own fee (a 1-input 1-output tx at 2 sat/vB is ~220 sat).
SWEEP_FEE_MARGIN_SAT = 2_000


@dataclass
class ChannelDrain:
    channel_point: str
    peer: str
    local_sat_before: int
    spendable_msat_before: int
    keep_msat: int
    paid_msat: int = 0
    payments: list[str] = field(default_factory=list)  # payment hashes
    spendable_msat_after: int = 0
    error: str = ""


@dataclass
class DrainResult:
    channels: list[ChannelDrain] = field(default_factory=list)
    swept_sat: int = 0
    sweep_txid: str = ""
    wallet_sat_after: int = 0
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


async def can_route(client: LndClient, dest: str, chan_id: int, amt_msat: int) -> bool:
    """Would lnd send ``amt_msat`` to ``dest`` over ``chan_id`` right now? (no HTLC is sent)"""
    req = ln.QueryRoutesRequest(pub_key=dest, amt_msat=amt_msat, outgoing_chan_ids=[chan_id],
                                fee_limit=ln.FeeLimit(fixed_msat=10_000), use_mission_control=False)
    try:
        resp = await client.ln.QueryRoutes(req, timeout=15)
    except grpc.aio.AioRpcError as err:
        if err.code() in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
            return False  # "unable to find a path to destination", amount too large, ...
        raise LndError(client.name, "QueryRoutes", err) from err
    return len(resp.routes) > 0


async def spendable_msat(client: LndClient, channel: ln.Channel) -> int:
    async def ok(amt: int) -> bool:
        return await can_route(client, channel.remote_pubkey, channel.chan_id, amt)

    upper = max(0, channel.local_balance - channel.local_constraints.chan_reserve_sat) * 1000
    return await max_sendable(ok, upper, resolution_msat=100, lower_msat=upper - 50_000_000)


async def pay_over(client: LndClient, payment_request: str, chan_id: int, timeout_s: int = 30) -> str:
    """Pay an invoice over one given channel; returns the payment hash."""
    req = router.SendPaymentRequest(payment_request=payment_request, timeout_seconds=timeout_s,
                                    fee_limit_msat=10_000, outgoing_chan_ids=[chan_id], no_inflight_updates=True)
    last: ln.Payment | None = None
    try:
        async for upd in client.router.SendPaymentV2(req, timeout=timeout_s + 15):
            last = upd
            if upd.status in (ln.Payment.SUCCEEDED, ln.Payment.FAILED):
                break
    except grpc.aio.AioRpcError as err:
        raise LndError(client.name, "SendPaymentV2", err) from err
    if last is None or last.status != ln.Payment.SUCCEEDED:
        reason = ln.PaymentFailureReason.Name(last.failure_reason) if last is not None else "no update"
        raise LndError(client.name, "SendPaymentV2", f"drain payment failed: {reason}")
    return last.payment_hash


async def drain_channels(
    payer: LndClient, peers: dict[str, LndClient], keep_msat: int, memo: str = "p2pep scenario: drain",
    attempts: int = 8,
) -> list[ChannelDrain]:
    """Pay each active channel of ``payer`` down to about ``keep_msat`` spendable (the largest
    channel keeps it, the others are emptied). ``peers`` maps peer pubkey -> its client,
    which issues the invoices.

    Spendable is measured again before every payment: right after a payment lnd still
    counts its HTLC until the commitment update completes, and the meter keeps paying
    its own increments meanwhile."""
    channels = sorted((c for c in await payer.list_channels(active_only=True)),
                      key=lambda c: c.local_balance, reverse=True)
    out: list[ChannelDrain] = []
    for i, ch in enumerate(channels):
        keep = keep_msat if i == 0 else 0
        d = ChannelDrain(ch.channel_point, ch.remote_pubkey, ch.local_balance, await spendable_msat(payer, ch), keep)
        out.append(d)
        peer = peers.get(ch.remote_pubkey)
        if peer is None:
            d.error = "peer is not a node of this network: cannot invoice"
            continue
        last_error = ""
        for _ in range(attempts):
            fresh = await _channel(payer, ch.chan_id)
            if fresh is None:
                last_error = "channel closed"
                break
            amount = min(drain_amount_msat(await spendable_msat(payer, fresh), keep), MAX_CHUNK_MSAT)
            if amount <= DRAIN_SLACK_MSAT:
                last_error = ""
                break
            try:
                inv = await peer.add_invoice(amount, memo=memo)
                d.payments.append(await pay_over(payer, inv.payment_request, ch.chan_id))
                d.paid_msat += amount
                last_error = ""
            except LndError as e:
                last_error = str(e)
                await asyncio.sleep(0.3)
        fresh = await _channel(payer, ch.chan_id)
        d.spendable_msat_after = await spendable_msat(payer, fresh) if fresh is not None else 0
        if d.spendable_msat_after > keep + DRAIN_TOLERANCE_MSAT:
            d.error = last_error or f"still {d.spendable_msat_after} msat spendable after {attempts} attempts"
    return out


async def _channel(client: LndClient, chan_id: int) -> ln.Channel | None:
    return next((c for c in await client.list_channels() if c.chan_id == chan_id), None)


async def sweep_wallet(client: LndClient, to_address: str) -> tuple[int, str]:
    """Send the on-chain balance (less the anchor reserve and a fee margin) away.
    Returns (sats sent, txid); (0, "") if there is nothing worth sending."""
    bal = await client.wallet_balance()
    amount = bal.confirmed_balance - bal.reserved_balance_anchor_chan - SWEEP_FEE_MARGIN_SAT
    if amount <= SWEEP_FEE_MARGIN_SAT:
        return 0, ""
    req = ln.SendCoinsRequest(addr=to_address, amount=amount, sat_per_vbyte=2, label="p2pep scenario: sweep")
    try:
        resp = await client.ln.SendCoins(req, timeout=30)
    except grpc.aio.AioRpcError as err:
        raise LndError(client.name, "SendCoins", err) from err
    return amount, resp.txid
