"""Standard gRPC server metrics for every service, from one interceptor.

:class:`GrpcMetricsInterceptor` (installed on every server by
:class:`~p2pep.servicekit.ServiceHost`, outermost, so it sees the status any inner interceptor or
handler ends a call with) keeps the metric names and labels of go-grpc-prometheus, which lnd
exports too, so the same queries and dashboards read both:

* ``grpc_server_started_total{grpc_type, grpc_service, grpc_method}``: calls started;
* ``grpc_server_handled_total{grpc_type, grpc_service, grpc_method, grpc_code}``: calls finished,
  by status code (``OK``, ``INVALID_ARGUMENT``, ..., ``CANCELLED`` when the client went away);
* ``grpc_server_handling_seconds{grpc_type, grpc_service, grpc_method}``: a latency histogram,
  start to finish (for a stream: its whole life);
* ``grpc_server_msg_received_total`` / ``grpc_server_msg_sent_total``: stream messages
  (one per call for a unary side).

Labels are bounded: service and method come from the handler the server found (the methods
the service registered), never from what a caller sent; a call to a method nobody serves is
not counted here (gRPC answers it UNIMPLEMENTED itself).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Counter, Histogram

from p2pep.servicekit.handlers import Behaviour, Kind, rewrap

LABELS = ["grpc_type", "grpc_service", "grpc_method"]

STARTED = Counter("grpc_server_started", "RPCs started on the server", LABELS)
HANDLED = Counter("grpc_server_handled", "RPCs completed on the server, by status code", [*LABELS, "grpc_code"])
HANDLING = Histogram(
    "grpc_server_handling_seconds", "Time from the start of an RPC to its status (a stream's whole life)", LABELS,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
RECEIVED = Counter("grpc_server_msg_received", "Messages received by the server", LABELS)
SENT = Counter("grpc_server_msg_sent", "Messages sent by the server", LABELS)

UNARY, CLIENT_STREAM, SERVER_STREAM, BIDI_STREAM = "unary", "client_stream", "server_stream", "bidi_stream"


def split_method(full: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` -> (``pkg.Service``, ``Method``)."""
    service, _, method = full.lstrip("/").rpartition("/")
    return service, method


class _Call:
    """The metrics of one call: started when built, finished once with its code."""

    def __init__(self, kind: str, service: str, method: str) -> None:
        self.labels = (kind, service, method)
        self.t0 = time.perf_counter()
        self.done = False
        STARTED.labels(*self.labels).inc()

    def received(self) -> None:
        RECEIVED.labels(*self.labels).inc()

    def sent(self) -> None:
        SENT.labels(*self.labels).inc()

    def finish(self, code: grpc.StatusCode) -> None:
        if self.done:
            return
        self.done = True
        HANDLED.labels(*self.labels, code.name).inc()
        HANDLING.labels(*self.labels).observe(time.perf_counter() - self.t0)


def status_of(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException | None) -> grpc.StatusCode:
    """The status a call ends with: what the handler set or aborted with, CANCELLED if it was
    cancelled (the client left, or the server stops), UNKNOWN for an error that escaped."""
    code = _code(context)
    if code is not None and code is not grpc.StatusCode.OK:
        return code
    if exc is None:
        return grpc.StatusCode.OK
    if isinstance(exc, grpc.aio.AbortError):
        return code or grpc.StatusCode.UNKNOWN
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


def _code(context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode | None:
    try:
        code: Any = context.code()  # typed StatusCode; grpc.aio's is an int (cygrpc's status)
    except (AttributeError, NotImplementedError):
        return None
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):
        return next((c for c in grpc.StatusCode if c.value[0] == code), None)
    return None


async def _counted(requests: AsyncIterator[Any], call: _Call) -> AsyncIterator[Any]:
    async for r in requests:
        call.received()
        yield r


class GrpcMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every call of the server it is installed on (see the module doc)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        service, method = split_method(handler_call_details.method)
        kinds = {"unary_unary": UNARY, "stream_unary": CLIENT_STREAM, "unary_stream": SERVER_STREAM,
                 "stream_stream": BIDI_STREAM}

        def wrap(behaviour: Behaviour, kind: Kind) -> Behaviour:
            counted = _unary if kind.endswith("unary") else _streaming
            return counted(behaviour, kinds[kind], service, method, stream_in=kind.startswith("stream"))

        return rewrap(handler, wrap)


def _unary(behaviour: Callable[..., Any], kind: str, service: str, method: str, *,
           stream_in: bool) -> Callable[..., Any]:
    """A handler that answers once (unary, client streaming, or a stream written with
    ``context.write``)."""

    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        c = _Call(kind, service, method)
        if stream_in:
            request = _counted(request, c)
        else:
            c.received()
        try:
            response = await behaviour(request, context)
        except BaseException as exc:
            c.finish(status_of(context, exc))
            raise
        if kind in (UNARY, CLIENT_STREAM):
            c.sent()
        c.finish(status_of(context, None))
        return response

    return call


def _streaming(behaviour: Callable[..., Any], kind: str, service: str, method: str, *,
               stream_in: bool) -> Callable[..., Any]:
    if not inspect.isasyncgenfunction(behaviour):  # writes with context.write(): a coroutine
        return _unary(behaviour, kind, service, method, stream_in=stream_in)

    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        c = _Call(kind, service, method)
        if stream_in:
            request = _counted(request, c)
        else:
            c.received()
        try:
            async for response in behaviour(request, context):
                c.sent()
                yield response
        except BaseException as exc:
            c.finish(status_of(context, exc))
            raise
        c.finish(status_of(context, None))

    return call
