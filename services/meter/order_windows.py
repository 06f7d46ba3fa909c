"""When the meter trades: once per order window, a lead time before the window begins.

Orders go out ``window_ms // 10`` of simulated time before window ``k`` begins, so its
contracts are signed and active when it does; they rest until the same lead before the
next window. A window's orders are placed once (a tick that comes while the previous
placing still runs does not start another); a placing the matcher refuses or cannot take
is logged and left to the next window (the trader's orders are durable and idempotent).
"""

from __future__ import annotations

import grpc
import structlog

from p2pep.metering.ordering import window_index
from p2pep.pbconv import now_ms
from services.meter.store import MeterStore
from services.meter.trader import Trader

log = structlog.get_logger("meter")

ORDER_HISTORY_MS = 3_600_000
"""Orders older than this (real time) are pruned from the meter's database."""


class OrderWindows:
    def __init__(self, trader: Trader, store: MeterStore, window_ms: int) -> None:
        self.trader = trader
        self.store = store
        self.window_ms = window_ms
        self._placed = -1
        """The window whose orders were last placed; -1 until the first placing (trading starts
        only once the meter can pay: after its startup)."""

    @property
    def lead_ms(self) -> int:
        return self.window_ms // 10

    def window_for(self, now_sim_ms: int) -> int:
        return window_index(now_sim_ms + self.lead_ms, self.window_ms)

    def due(self, now_sim_ms: int) -> bool:
        """Whether a tick at ``now_sim_ms`` should place orders (a new window is near)."""
        return self._placed >= 0 and self.window_for(now_sim_ms) != self._placed

    async def place(self, now_sim_ms: int) -> None:
        k = self.window_for(now_sim_ms)
        self._placed = k
        until = (k + 1) * self.window_ms - self.lead_ms
        try:
            await self.trader.place_window(k, now_sim_ms, until)
            await self.store.prune_orders(now_ms() - ORDER_HISTORY_MS)
        except grpc.aio.AioRpcError as e:
            log.warning("orders not placed", code=e.code().name, detail=e.details())
