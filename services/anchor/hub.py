"""The operator's hub node, watched for the operator: liquidity and forwarding fees.

The anchor service is the one operator service holding a client of the hub's lnd, so it
polls it every ``interval_s`` for the metrics of :mod:`p2pep.lnd.metrics` (``node="hub"``):
channel balances, wallet balance, and the forwarding history, read incrementally from the
last offset seen (each forward is counted once per process). A failed poll is counted and
logged (a warning the first time, then at debug level; the values stay as they were);
anchoring never depends on it. It needs a macaroon allowing ``offchain:read`` and
``onchain:read`` besides what anchoring needs.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import structlog

from p2pep.lnd import metrics
from p2pep.lnd.client import LndError
from p2pep.lndrpc import lightning_pb2 as ln

log = structlog.get_logger(__name__)


class HubNode(Protocol):
    async def channel_balance(self) -> ln.ChannelBalanceResponse: ...
    async def wallet_balance(self) -> ln.WalletBalanceResponse: ...
    async def forwarding_history(self, index_offset: int = 0, max_events: int = 10_000
                                 ) -> ln.ForwardingHistoryResponse: ...


class HubMonitor:
    def __init__(self, node: HubNode, name: str = "hub", interval_s: float = 5.0, page: int = 10_000) -> None:
        self.node = node
        self.name = name
        self.interval_s = interval_s
        self.page = page
        self.offset = 0
        self._warned = False
        metrics.known_node(name)

    async def poll_once(self) -> None:
        c = await self.node.channel_balance()
        w = await self.node.wallet_balance()
        metrics.observe_balances(self.name, local_sat=c.local_balance.sat, remote_sat=c.remote_balance.sat,
                                 wallet_sat=w.confirmed_balance)
        while True:
            h = await self.node.forwarding_history(self.offset, self.page)
            metrics.observe_forwards(self.name, (metrics.Forward(e.fee_msat, e.amt_out_msat)
                                                 for e in h.forwarding_events))
            if h.last_offset_index > self.offset:
                self.offset = h.last_offset_index
            if len(h.forwarding_events) < self.page:
                return

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.poll_once()
            except (LndError, OSError) as exc:
                metrics.POLL_ERRORS.labels(self.name).inc()
                # the first failure is worth a warning (e.g. a macaroon without offchain:read),
                # the rest are counted (p2pep_lnd_poll_errors_total) and logged at debug
                (log.debug if self._warned else log.warning)("anchor.hub_poll_failed", error=str(exc))
                self._warned = True
            try:
                await asyncio.wait_for(stop.wait(), self.interval_s)
            except TimeoutError:
                pass
