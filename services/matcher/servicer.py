"""gRPC front of the matcher: parse, call :class:`~services.matcher.state.Matcher`, map errors."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import structlog

from p2pep.market import (
    DuplicateOrder,
    InvalidOrder,
    MarketError,
    Side,
    UnknownContract,
    UnknownOrder,
)
from p2pep.v1 import matcher_pb2, matcher_pb2_grpc
from services.matcher import metrics as M
from services.matcher.convert import order_msg, parse_order
from services.matcher.events import Subscription
from services.matcher.matcher import Matcher, StorageFailed

log = structlog.get_logger("matcher")

CODES: dict[type[MarketError], grpc.StatusCode] = {
    InvalidOrder: grpc.StatusCode.INVALID_ARGUMENT,
    DuplicateOrder: grpc.StatusCode.ALREADY_EXISTS,
    UnknownOrder: grpc.StatusCode.NOT_FOUND,
    UnknownContract: grpc.StatusCode.NOT_FOUND,
}


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self.code, self.message = code, message


@contextmanager
def _errors(method: str) -> Iterator[None]:
    """Time the call and turn domain errors into gRPC statuses."""
    t0 = time.perf_counter()
    try:
        yield
    except MarketError as e:
        code = CODES.get(type(e), grpc.StatusCode.INVALID_ARGUMENT)
        M.REJECTED.labels(method=method, code=code.name).inc()
        log.info("refused", method=method, code=code.name, detail=str(e))
        raise _Abort(code, str(e)) from None
    except StorageFailed as e:
        raise _Abort(grpc.StatusCode.UNAVAILABLE, f"not stored, nothing changed: {e}") from None
    finally:
        M.LATENCY.labels(method=method).observe(time.perf_counter() - t0)


class MatcherServicer(matcher_pb2_grpc.MatcherServiceServicer):
    def __init__(self, matcher: Matcher) -> None:
        self.m = matcher

    async def _submit(self, request: matcher_pb2.SubmitOrderRequest, context: grpc.aio.ServicerContext[Any, Any],
                      side: Side, method: str) -> matcher_pb2.SubmitOrderResponse:
        try:
            with _errors(method):
                if not request.HasField("order"):
                    raise InvalidOrder("order", "required")
                o = parse_order(request.order, "order.", side, self.m.clock())
                (result,) = await self.m.submit([o], ["order."])
                return result.msg()
        except _Abort as a:
            await context.abort(a.code, a.message)
            raise  # unreachable: abort raises

    async def SubmitSupply(self, request, context):  # type: ignore[no-untyped-def]
        return await self._submit(request, context, Side.SUPPLY, "SubmitSupply")

    async def SubmitDemand(self, request, context):  # type: ignore[no-untyped-def]
        return await self._submit(request, context, Side.DEMAND, "SubmitDemand")

    async def SubmitBatch(self, request: matcher_pb2.SubmitBatchRequest, context: grpc.aio.ServicerContext[Any, Any]
                          ) -> matcher_pb2.SubmitBatchResponse:
        try:
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
        except _Abort as a:
            await context.abort(a.code, a.message)
            raise

    async def Cancel(self, request: matcher_pb2.CancelRequest, context: grpc.aio.ServicerContext[Any, Any]
                     ) -> matcher_pb2.CancelResponse:
        try:
            with _errors("Cancel"):
                o = await self.m.cancel(request.order_id, request.meter_id)
                return matcher_pb2.CancelResponse(order=order_msg(o))
        except _Abort as a:
            await context.abort(a.code, a.message)
            raise

    async def GetBook(self, request: matcher_pb2.GetBookRequest, context: grpc.aio.ServicerContext[Any, Any]
                      ) -> matcher_pb2.GetBookResponse:
        with _errors("GetBook"):
            return await self.m.book(request.depth or 50, request.meter_ids)

    async def ExtendContract(self, request: matcher_pb2.ExtendContractRequest,
                             context: grpc.aio.ServicerContext[Any, Any]) -> matcher_pb2.SubmitOrderResponse:
        try:
            with _errors("ExtendContract"):
                return (await self.m.extend(request)).msg()
        except _Abort as a:
            await context.abort(a.code, a.message)
            raise

    async def ReportContractEnd(self, request: matcher_pb2.ReportContractEndRequest,
                                context: grpc.aio.ServicerContext[Any, Any]) -> matcher_pb2.ReportContractEndResponse:
        try:
            with _errors("ReportContractEnd"):
                already, released = await self.m.report_end(request.contract_id, request.outcome,
                                                            request.delivered_wh)
                resp = matcher_pb2.ReportContractEndResponse(already_ended=already)
                if released is not None:
                    r = released.msg()
                    resp.released_order.CopyFrom(r.order)
                    resp.contracts.extend(r.contracts)
                return resp
        except _Abort as a:
            await context.abort(a.code, a.message)
            raise

    async def ListContracts(self, request: matcher_pb2.ListContractsRequest,
                            context: grpc.aio.ServicerContext[Any, Any]) -> matcher_pb2.ListContractsResponse:
        with _errors("ListContracts"):
            recs = await self.m.contracts(request.meter_id, request.active_only, min(request.limit or 100, 10_000))
            return matcher_pb2.ListContractsResponse(contracts=[r.msg() for r in recs])

    async def StreamEvents(self, request: matcher_pb2.StreamEventsRequest,
                           context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[matcher_pb2.MatchEvent]:
        meters = frozenset(request.meter_ids)
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
                        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                            f"stream fell behind; reconnect with from_seq={last + 1}")
                    return
                if ev.seq <= last:
                    continue
                last = ev.seq
                yield ev
        finally:
            self.m.hub.unsubscribe(sub)
            M.STREAMS.dec()
