"""The household's own trades, placed from its app (``PlaceOrder``, ``ListOrders``,
``CancelOrder``; only the portal may call them, for the account the meter is paired with).

The meter submits them to the matcher itself, under its own id, as it does its window
orders: the order is recorded (:class:`~p2pep.metering.ordering.PlacedOrder`) *before* it
is sent, so a contract the matcher forms from it at once passes the meter's own check of
what it ordered when settlement asks it to sign. Their ids start with ``<meter>:app:``;
the window trader never cancels them (they leave the book at their timeout, or when the
household cancels them).

Price: a household may bid above (or ask below) the meter's standing price for one order.
While such an order is open, the meter's signing limit follows it (:meth:`price_limit`):
a consumer signs up to the highest bid of its open household orders, a supplier down to
the lowest ask. The limit is held in memory: after a restart the standing price applies
again (the orders themselves expire at their timeout).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import grpc

from p2pep.metering.contract_book import Party
from p2pep.metering.ordering import PlacedOrder
from p2pep.metering.request_checks import ROLE_PARTIES, Code, Refusal
from p2pep.pbconv import now_ms
from p2pep.settings.meter import MeterSettings
from p2pep.v1 import common_pb2, matcher_pb2, matcher_pb2_grpc, meter_pb2
from services.meter.store import MeterStore

MAX_TIMEOUT_S = 86_400
MAX_ENERGY_WH = 1_000_000  # 1 MWh: far above a household's day
MAX_PRICE_MSAT_PER_KWH = 100_000_000  # 100,000 sat/kWh
MAX_PARTNERS = 16
SIDES = {common_pb2.SIDE_DEMAND: ("demand", Party.CONSUMER), common_pb2.SIDE_SUPPLY: ("supply", Party.SUPPLIER)}


@dataclass(frozen=True)
class HouseholdOrder:
    order_id: str
    side: str
    price_msat_per_kwh: int
    expiry_ms: int  # real unix ms


def check_request(req: meter_pb2.PlaceOrderRequest, role: str, meter_id: str) -> tuple[str, Party]:
    """The side (``demand``/``supply``) and party of a valid request; else a refusal naming the field."""
    if req.side not in SIDES:
        raise Refusal(Code.INVALID_ARGUMENT, "side", "must be SIDE_DEMAND or SIDE_SUPPLY")
    side, party = SIDES[req.side]
    if party not in ROLE_PARTIES.get(role, set()):
        raise Refusal(Code.FAILED_PRECONDITION, "side",
                      f"meter {meter_id} is a {role}: it cannot {'buy' if side == 'demand' else 'sell'} energy")
    if not 0 < req.energy_wh <= MAX_ENERGY_WH:
        raise Refusal(Code.INVALID_ARGUMENT, "energy_wh", f"must be 1..{MAX_ENERGY_WH} Wh")
    if not 0 < req.price_msat_per_kwh <= MAX_PRICE_MSAT_PER_KWH:
        raise Refusal(Code.INVALID_ARGUMENT, "price_msat_per_kwh", f"must be 1..{MAX_PRICE_MSAT_PER_KWH}")
    if not 0 < req.timeout_s <= MAX_TIMEOUT_S:
        raise Refusal(Code.INVALID_ARGUMENT, "timeout_s", f"must be 1..{MAX_TIMEOUT_S} seconds")
    if len(req.partners) > MAX_PARTNERS:
        raise Refusal(Code.INVALID_ARGUMENT, "partners", f"at most {MAX_PARTNERS}")
    for p in req.partners:
        if p == meter_id or not p or len(p) > 64:
            raise Refusal(Code.INVALID_ARGUMENT, "partners", f"{p[:64]!r} is not another meter's id")
    return side, party


class HouseholdOrders:
    def __init__(self, settings: MeterSettings, store: MeterStore,
                 matcher: matcher_pb2_grpc.MatcherServiceAsyncStub | None) -> None:
        self.s, self.store, self.matcher = settings, store, matcher
        self.open: dict[str, HouseholdOrder] = {}

    def _live(self) -> list[HouseholdOrder]:
        now = now_ms()
        for oid in [o.order_id for o in self.open.values() if o.expiry_ms <= now]:
            del self.open[oid]
        return list(self.open.values())

    def price_limit(self, party: Party) -> int:
        """The meter's signing price for ``party``: its standing price, widened by the open
        household orders on that side (a ceiling for a consumer, a floor for a supplier)."""
        side = "demand" if party is Party.CONSUMER else "supply"
        prices = [o.price_msat_per_kwh for o in self._live() if o.side == side] + [self.s.price_msat_per_kwh]
        return max(prices) if party is Party.CONSUMER else min(prices)

    def _matcher(self) -> matcher_pb2_grpc.MatcherServiceAsyncStub:
        if self.matcher is None:
            raise Refusal(Code.FAILED_PRECONDITION, "meter", "this meter trades through no matcher")
        return self.matcher

    async def place(self, req: meter_pb2.PlaceOrderRequest) -> meter_pb2.PlaceOrderResponse:
        side, _ = check_request(req, self.s.role, self.s.meter_id)
        matcher = self._matcher()
        oid = f"{self.s.meter_id}:app:{side}:{int(time.time())}:{secrets.token_hex(3)}"
        expiry = now_ms() + req.timeout_s * 1000
        order = common_pb2.Order(order_id=oid, meter_id=self.s.meter_id,
                                 side=req.side, energy_wh=req.energy_wh,
                                 price_msat_per_kwh=req.price_msat_per_kwh, partners=list(req.partners))
        order.expiry.FromMilliseconds(expiry)
        # recorded (and its price taken as the limit) before it is sent: a match may come at once
        self.open[oid] = HouseholdOrder(oid, side, req.price_msat_per_kwh, expiry)
        await self.store.put_order(PlacedOrder(oid, side, req.energy_wh, now_ms(), expiry))
        rpc = matcher.SubmitDemand if side == "demand" else matcher.SubmitSupply
        try:
            resp = await rpc(matcher_pb2.SubmitOrderRequest(order=order), timeout=10)
        except grpc.aio.AioRpcError as e:
            self.open.pop(oid, None)
            await self.store.delete_order(oid)
            code = Code.INVALID_ARGUMENT if e.code() == grpc.StatusCode.INVALID_ARGUMENT else Code.UNAVAILABLE
            raise Refusal(code, "matcher", f"{e.code().name}: {e.details()}") from None
        return meter_pb2.PlaceOrderResponse(order=resp.order, contracts=resp.contracts, status=resp.status)

    async def cancel_open(self) -> None:
        """Withdraw every open household order (the meter is leaving: it signs nothing more)."""
        for o in self._live():
            try:
                await self._matcher().Cancel(matcher_pb2.CancelRequest(order_id=o.order_id, meter_id=self.s.meter_id),
                                             timeout=5)
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.NOT_FOUND:
                    raise
            self.open.pop(o.order_id, None)

    async def list(self) -> meter_pb2.ListOrdersResponse:
        book = await self._matcher().GetBook(matcher_pb2.GetBookRequest(depth=1, meter_ids=[self.s.meter_id]),
                                             timeout=10)
        mine = f"{self.s.meter_id}:app:"
        return meter_pb2.ListOrdersResponse(orders=[o for o in book.orders if o.order_id.startswith(mine)])

    async def cancel(self, req: meter_pb2.CancelOrderRequest) -> meter_pb2.CancelOrderResponse:
        if not req.order_id.startswith(f"{self.s.meter_id}:app:"):
            raise Refusal(Code.NOT_FOUND, "order_id", "no such order of this household")
        try:
            resp = await self._matcher().Cancel(matcher_pb2.CancelRequest(order_id=req.order_id,
                                                                          meter_id=self.s.meter_id), timeout=10)
            # its price stays the signing limit until its timeout: a contract it formed before
            # the cancel may still be on its way to be signed
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                raise Refusal(Code.NOT_FOUND, "order_id", "no such open order (filled, expired or cancelled)") from None
            raise Refusal(Code.UNAVAILABLE, "matcher", f"{e.code().name}: {e.details()}") from None
        return meter_pb2.CancelOrderResponse(order=resp.order)
