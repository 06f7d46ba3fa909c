"""gRPC front of the matcher: parse, call :class:`~services.matcher.state.Matcher`, map errors."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import structlog

from p2pep.market import (
    InvalidOrder,
    MarketError,
    Side,
)
from p2pep.paging import decode_token, encode_token, page_size
from p2pep.pbconv import int64
from p2pep.refusals import ResourceExhausted, Unavailable
from p2pep.servicekit.auth import acting_meter
from p2pep.v1 import matcher_pb2, matcher_pb2_grpc
from services.matcher import metrics as M
from services.matcher.convert import order_msg, parse_order
from services.matcher.events import Subscription
from services.matcher.matcher import Matcher, StorageFailed

log = structlog.get_logger("matcher")

@contextmanager
def _errors(method: str) -> Iterator[None]:
    """Time the call and count refusals (market errors are refusals: the server's interceptor
    answers them with their status); a write the database refused changed nothing: UNAVAILABLE."""
    t0 = time.perf_counter()
    try:
        yield
    except MarketError as e:
        M.REJECTED.labels(method=method, code=e.status).inc()
        log.info("refused", method=method, code=e.status, detail=str(e))
        raise
    except StorageFailed as e:
        raise Unavailable("", f"not stored, nothing changed: {e}") from None
    finally:
        M.LATENCY.labels(method=method).observe(time.perf_counter() - t0)


class MatcherServicer(matcher_pb2_grpc.MatcherServiceServicer):
    def __init__(self, matcher: Matcher) -> None:
        self.m = matcher

    async def _submit(self, request: matcher_pb2.SubmitOrderRequest, context: grpc.aio.ServicerContext[Any, Any],
                      side: Side, method: str) -> matcher_pb2.SubmitOrderResponse:
        with _errors(method):
            if not request.HasField("order"):
                raise InvalidOrder("order", "required")
            o = parse_order(request.order, "order.", side, self.m.clock())
            (result,) = await self.m.submit([o], ["order."])
            return result.msg()

    async def SubmitSupply(self, request, context):  # type: ignore[no-untyped-def]
        return await self._submit(request, context, Side.SUPPLY, "SubmitSupply")

    async def SubmitDemand(self, request, context):  # type: ignore[no-untyped-def]
        return await self._submit(request, context, Side.DEMAND, "SubmitDemand")

    async def SubmitBatch(self, request: matcher_pb2.SubmitBatchRequest, context: grpc.aio.ServicerContext[Any, Any]
                          ) -> matcher_pb2.SubmitBatchResponse:
        with _errors("SubmitBatch"):
            n, most = len(request.orders), self.m.settings.max_batch
            if n == 0:
                raise InvalidOrder("orders", "empty batch")
            if n > most:
                raise InvalidOrder("orders", f"at most {most} orders per batch, got {n}")
            now = self.m.clock()
            paths = [f"orders[{i}]." for i in range(n)]
            orders = [parse_order(msg, p, None, now) for msg, p in zip(request.orders, paths)]
            results = await self.m.submit(orders, paths)
            return matcher_pb2.SubmitBatchResponse(results=[r.msg() for r in results])

    async def Cancel(self, request: matcher_pb2.CancelRequest, context: grpc.aio.ServicerContext[Any, Any]
                     ) -> matcher_pb2.CancelResponse:
        with _errors("Cancel"):
            o = await self.m.cancel(request.order_id, request.meter_id)
            return matcher_pb2.CancelResponse(order=order_msg(o))

    async def GetBook(self, request: matcher_pb2.GetBookRequest, context: grpc.aio.ServicerContext[Any, Any]
                      ) -> matcher_pb2.GetBookResponse:
        with _errors("GetBook"):
            return await self.m.book(request.depth or 50, request.meter_ids)

    async def ExtendContract(self, request: matcher_pb2.ExtendContractRequest,
                             context: grpc.aio.ServicerContext[Any, Any]) -> matcher_pb2.SubmitOrderResponse:
        with _errors("ExtendContract"):
            return (await self.m.extend(request, acting_meter())).msg()

    async def ReportContractEnd(self, request: matcher_pb2.ReportContractEndRequest,
                                context: grpc.aio.ServicerContext[Any, Any]) -> matcher_pb2.ReportContractEndResponse:
        with _errors("ReportContractEnd"):
            already, released = await self.m.report_end(request.contract_id, request.outcome,
                                                        request.delivered_wh)
            resp = matcher_pb2.ReportContractEndResponse(already_ended=already)
            if released is not None:
                r = released.msg()
                resp.released_order.CopyFrom(r.order)
                resp.contracts.extend(r.contracts)
            return resp

    async def ListContracts(self, request: matcher_pb2.ListContractsRequest,
                            context: grpc.aio.ServicerContext[Any, Any]) -> matcher_pb2.ListContractsResponse:
        with _errors("ListContracts"):
            recs, next_before = await self.m.contracts(request.meter_id, request.active_only,
                                                       page_size(request.limit), decode_token(request.page_token))
            return matcher_pb2.ListContractsResponse(contracts=[r.msg() for r in recs],
                                                     next_page_token=encode_token(next_before) if next_before else "")

    async def StreamEvents(self, request: matcher_pb2.StreamEventsRequest,
                           context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[matcher_pb2.MatchEvent]:
        meters = frozenset(request.meter_ids)
        int64("from_seq", request.from_seq)  # a uint64 beyond what the store can hold: INVALID_ARGUMENT
        sub: Subscription = self.m.hub.subscribe(meters)
        M.STREAMS.inc()
        try:
            # tells the client it is subscribed: nothing published from now on is missed
            await context.send_initial_metadata(())
            last = 0
            if request.from_seq:
                # replay what is stored; live events published meanwhile wait in the queue
                nxt = request.from_seq
                while True:
                    page = await self.m.events_since(nxt, meters)
                    for seq, payload in page:
                        yield matcher_pb2.MatchEvent.FromString(payload)
                        last = seq
                    if len(page) < 1000:
                        break
                    nxt = last + 1
            while True:
                ev = await sub.queue.get()
                if ev is None:
                    if sub.lagging:
                        raise ResourceExhausted("from_seq", f"stream fell behind; reconnect with from_seq={last + 1}")
                    return
                if ev.seq <= last:
                    continue
                last = ev.seq
                yield ev
        finally:
            self.m.hub.unsubscribe(sub)
            M.STREAMS.dec()
