"""The meter's orders at the matcher, and the match events it is told about.

At each window boundary: cancel what still rests from the last window, then offer
the expected export (producers) and request the expected import (consumers) over
the next window, minus what open contracts already cover. A consumer with an
active contract asks its supplier first (``ExtendContract``, tier 1); otherwise,
or if that is refused, it submits a demand naming its partners. Every order is
recorded *before* it is sent, so a contract formed from it at once can be checked
against it when settlement asks this meter to sign.

An order the matcher could not be reached for (UNAVAILABLE, a deadline: a link that stalls,
resets or is cut, a matcher restarting) is sent again with the same id, with backoff, for as
long as it is worth anything: until it expires (the window's end). Giving up after a few
seconds left a household on a lossy link without energy for a whole window (scenarios/lossy.toml).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import structlog
from google.protobuf.message import Message

from p2pep.metering.contract_book import ContractBook, Party
from p2pep.metering.ordering import PlacedOrder, demand_wh, order_id, supply_wh
from p2pep.pbconv import now_ms
from p2pep.servicekit.supervise import Backoff, GaveUp, supervised
from p2pep.settings.meter import MeterSettings
from p2pep.v1 import common_pb2, matcher_pb2, matcher_pb2_grpc
from services.meter import metrics
from services.meter.store import MeterStore

log = structlog.get_logger("meter.trader")

RESTING = {
    matcher_pb2.ORDER_STATUS_RESTING,
    matcher_pb2.ORDER_STATUS_PARTIALLY_FILLED,
    matcher_pb2.ORDER_STATUS_UNCOVERED,
}
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
ORDER_RETRY = Backoff(0.5, 5.0)  # between attempts to send an order while the matcher is unreachable
ORDER_CALL_TIMEOUT_S = 10.0  # one attempt
Kind = matcher_pb2.MatchEvent.Kind


@dataclass(frozen=True)
class WindowPlan:
    window: int
    supply_wh: int
    demand_wh: int


class Trader:
    def __init__(
        self,
        settings: MeterSettings,
        store: MeterStore,
        book: ContractBook,
        matcher: matcher_pb2_grpc.MatcherServiceAsyncStub,
        expected_wms: Callable[[int, int], tuple[int, int]],
    ) -> None:
        self.s = settings
        self.store = store
        self.book = book
        self.matcher = matcher
        self.expected_wms = expected_wms
        self.resting: set[str] = set()
        self.last_event_seq = 0
        self.uncovered = 0

    # -- orders ------------------------------------------------------------------------------

    def plan(self, window: int, t0_sim_ms: int, t1_sim_ms: int) -> WindowPlan:
        imp, exp = self.expected_wms(t0_sim_ms, t1_sim_ms)
        sup = dem = 0
        if self.s.role in ("producer", "prosumer"):
            sup = supply_wh(exp, self.book.energy_left_wh(Party.SUPPLIER))
        if self.s.role in ("consumer", "prosumer"):
            dem = demand_wh(imp, self.book.energy_left_wh(Party.CONSUMER))
        return WindowPlan(window, sup, dem)

    async def place_window(self, window: int, t0_sim_ms: int, t1_sim_ms: int) -> WindowPlan:
        """Replace last window's resting orders by this window's."""
        await self.cancel_resting()
        plan = self.plan(window, t0_sim_ms, t1_sim_ms)
        expiry_ms = now_ms() + self.s.window_s * 1000 // self.s.accel
        log.info("window orders", window=window, supply_wh=plan.supply_wh, demand_wh=plan.demand_wh)
        if plan.supply_wh > 0:
            await self._submit("supply", window, plan.supply_wh, expiry_ms)
        if plan.demand_wh > 0:
            active = self.book.latest_active(Party.CONSUMER)
            if active is None or not await self._extend(active.contract_id, window, plan.demand_wh, expiry_ms):
                await self._submit("demand", window, plan.demand_wh, expiry_ms)
        return plan

    def _order(self, side: str, oid: str, energy_wh: int, expiry_ms: int) -> common_pb2.Order:
        o = common_pb2.Order(
            order_id=oid, meter_id=self.s.meter_id,
            side=common_pb2.SIDE_SUPPLY if side == "supply" else common_pb2.SIDE_DEMAND,
            energy_wh=energy_wh, price_msat_per_kwh=self.s.price_msat_per_kwh,
            partners=[p for p in self.s.partners if p != self.s.meter_id],
        )
        o.expiry.FromMilliseconds(expiry_ms)
        return o

    async def _submit(self, side: str, window: int, energy_wh: int, expiry_ms: int) -> bool:
        oid = order_id(self.s.meter_id, window, side)
        await self.store.put_order(PlacedOrder(oid, side, energy_wh, now_ms(), expiry_ms))
        req = matcher_pb2.SubmitOrderRequest(order=self._order(side, oid, energy_wh, expiry_ms))
        rpc = self.matcher.SubmitSupply if side == "supply" else self.matcher.SubmitDemand
        resp = await self._call(rpc, req, oid, side, expiry_ms)
        if resp is None:
            return False
        self._accepted(oid, side, resp)
        return True

    async def _extend(self, contract_id: str, window: int, energy_wh: int, expiry_ms: int) -> bool:
        oid = order_id(self.s.meter_id, window, "extend")
        await self.store.put_order(PlacedOrder(oid, "demand", energy_wh, now_ms(), expiry_ms))
        req = matcher_pb2.ExtendContractRequest(
            contract_id=contract_id, order_id=oid, energy_wh=energy_wh, price_msat_per_kwh=self.s.price_msat_per_kwh,
        )
        req.expiry.FromMilliseconds(expiry_ms)
        resp = await self._call(self.matcher.ExtendContract, req, oid, "extend", expiry_ms)
        if resp is None:
            return False
        self._accepted(oid, "extend", resp)
        return True

    async def _call(self, rpc: Callable[..., Awaitable[matcher_pb2.SubmitOrderResponse]], req: Message, oid: str,
                    side: str, expiry_ms: int) -> matcher_pb2.SubmitOrderResponse | None:
        """Send an order, retrying with the same id while the matcher is unreachable, until
        the order expires (``expiry_ms``, real time)."""
        attempts = 0

        async def send() -> matcher_pb2.SubmitOrderResponse:
            nonlocal attempts
            attempts += 1
            left_s = (expiry_ms - now_ms()) / 1000
            try:
                return await rpc(req, timeout=max(1.0, min(ORDER_CALL_TIMEOUT_S, left_s)))
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.ALREADY_EXISTS and attempts > 1:
                    # an earlier attempt arrived after all
                    return matcher_pb2.SubmitOrderResponse(status=matcher_pb2.ORDER_STATUS_RESTING)
                raise

        def retryable(e: Exception) -> bool:  # and still worth sending: the order has not expired
            return isinstance(e, grpc.aio.AioRpcError) and e.code() in RETRYABLE and now_ms() < expiry_ms

        try:
            return await supervised(send, on_failure=lambda n, e: None, retry_if=retryable, backoff=ORDER_RETRY)
        except (GaveUp, grpc.aio.AioRpcError) as exc:
            e = exc.last if isinstance(exc, GaveUp) else exc
            code = e.code() if isinstance(e, grpc.aio.AioRpcError) else grpc.StatusCode.UNKNOWN
            metrics.ORDERS.labels(side, "refused").inc()
            detail = e.details() if isinstance(e, grpc.aio.AioRpcError) else str(e)
            log.warning("order refused", order_id=oid, side=side, code=code.name, detail=detail)
            if code not in RETRYABLE:  # certainly not in the book
                await self.store.delete_order(oid)
            return None

    def _accepted(self, oid: str, side: str, resp: matcher_pb2.SubmitOrderResponse) -> None:
        metrics.ORDERS.labels(side, "accepted").inc()
        if resp.status in RESTING:
            self.resting.add(oid)
        matched = sum(c.energy_wh for c in resp.contracts)
        log.info("order placed", order_id=oid, side=side, status=matcher_pb2.OrderStatus.Name(resp.status),
                 matched_wh=matched, remaining_wh=resp.order.remaining_wh)
        if resp.status == matcher_pb2.ORDER_STATUS_UNCOVERED:
            self._uncovered(oid, resp.order.remaining_wh)

    def _uncovered(self, oid: str, remaining_wh: int) -> None:
        self.uncovered += 1
        metrics.UNCOVERED.inc()
        log.warning("uncovered: relay stays blocked", order_id=oid, remaining_wh=remaining_wh)

    async def cancel_resting(self) -> None:
        for oid in sorted(self.resting):
            try:
                await self.matcher.Cancel(matcher_pb2.CancelRequest(order_id=oid, meter_id=self.s.meter_id), timeout=5)
                log.info("order cancelled", order_id=oid)
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.NOT_FOUND:
                    log.info("order not cancelled", order_id=oid, code=e.code().name, detail=e.details())
            self.resting.discard(oid)

    # -- events ------------------------------------------------------------------------------

    async def follow_events(self) -> None:
        """Log this meter's match events until cancelled; reconnects, replaying from the last seq."""
        async def follow() -> None:
            req = matcher_pb2.StreamEventsRequest(
                meter_ids=[self.s.meter_id], from_seq=self.last_event_seq + 1 if self.last_event_seq else 0
            )
            async for ev in self.matcher.StreamEvents(req):
                self.on_event(ev)
            raise ConnectionError("the matcher ended the event stream")

        def broken(n: int, e: Exception) -> None:
            if isinstance(e, grpc.aio.AioRpcError | ConnectionError):
                log.debug("match events stream broken", error=str(e), failures_in_a_row=n)
            else:
                log.exception("match events failed", failures_in_a_row=n)

        await supervised(follow, on_failure=broken, backoff=Backoff(0.2, 5.0), healthy_after_s=5.0)

    def on_event(self, ev: matcher_pb2.MatchEvent) -> None:
        self.last_event_seq = max(self.last_event_seq, ev.seq)
        kind = Kind.Name(ev.kind)
        if ev.kind in (Kind.KIND_MATCHED, Kind.KIND_EXPIRED, Kind.KIND_CANCELLED):
            self.resting.discard(ev.order_id)
        if ev.kind == Kind.KIND_UNCOVERED:
            if f"{self.s.meter_id}:app:" in ev.order_id:  # a household's own bid waiting: not the meter's cover
                log.info("household order waits for a supplier", order_id=ev.order_id, remaining_wh=ev.remaining_wh)
            else:
                self._uncovered(ev.order_id, ev.remaining_wh)
            return
        log.info("match event", kind=kind, order_id=ev.order_id, remaining_wh=ev.remaining_wh,
                 contract_id=ev.contract.contract_id or None, energy_wh=ev.contract.energy_wh or None,
                 price=ev.contract.price_msat_per_kwh or None)
