"""The one place where refusals become gRPC statuses.

Service and domain code say *why* they refuse a call by raising a :class:`~p2pep.refusals.Refused`
subclass that names the offending field (``NotFound("contract_id", "no contract 'x'")``); they
never build a status themselves. :class:`RefusalInterceptor`, installed on every server by
:class:`~p2pep.servicekit.ServiceHost`, answers such a call with the subclass's status and
``"<field>: <message>"`` as details, and counts it in ``p2pep_grpc_refusals_total`` (labels:
the method and the code, both bounded). Storage contention (SQLite's "database is locked"
or "busy", after the store's busy timeout) is transient, not a bug: it is answered
``UNAVAILABLE`` too, which every P2PEP client retries, and logged as a warning. Anything else
that escapes a handler stays an ``UNKNOWN`` error, as gRPC makes it: a bug, which the logs show.
"""

from __future__ import annotations

import inspect
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import structlog
from prometheus_client import Counter

from p2pep.refusals import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Refused,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from p2pep.servicekit.handlers import rewrap

__all__ = ["AlreadyExists", "FailedPrecondition", "InvalidArgument", "NotFound", "PermissionDenied",
           "Refused", "RefusalInterceptor", "ResourceExhausted", "Unauthenticated", "Unavailable"]

REFUSALS = Counter("p2pep_grpc_refusals_total", "Calls refused with a status, by method and code",
                   ["method", "code"])

log = structlog.get_logger("grpc")


def transient(exc: BaseException) -> Refused | None:
    """The refusal a transient failure is answered with (``None``: not transient)."""
    if isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc)):
        return Unavailable("storage", f"busy, try again ({exc})")
    return None


MAX_DETAILS = 1024


def details_of(refused: Refused) -> str:
    """The status details: ``str(refused)`` as valid UTF-8 (a lone surrogate a caller sent and
    a message echoed is escaped; gRPC could not send it) and at most :data:`MAX_DETAILS` chars."""
    text = str(refused).encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= MAX_DETAILS else text[:MAX_DETAILS - 3] + "..."


async def _abort(context: grpc.aio.ServicerContext[Any, Any], method: str, refused: Refused) -> None:
    code = grpc.StatusCode[refused.status]
    REFUSALS.labels(method, code.name).inc()
    await context.abort(code, details_of(refused))


async def _abort_if_transient(context: grpc.aio.ServicerContext[Any, Any], method: str,
                              exc: sqlite3.OperationalError) -> None:
    refused = transient(exc)
    if refused is None:
        raise exc
    log.warning("call refused: transient failure", method=method, error=str(exc))
    await _abort(context, method, refused)


class RefusalInterceptor(grpc.aio.ServerInterceptor):
    """Turns a :class:`Refused` raised by any handler (unary or streaming) into its status."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        return rewrap(handler, lambda behaviour, kind: (
            _unary(behaviour, method) if kind.endswith("unary") else _streaming(behaviour, method)))


def _unary(behaviour: Callable[..., Any], method: str) -> Callable[..., Any]:
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await behaviour(request, context)
        except Refused as refused:
            await _abort(context, method, refused)
        except sqlite3.OperationalError as exc:
            await _abort_if_transient(context, method, exc)

    return call


def _streaming(behaviour: Callable[..., Any], method: str) -> Callable[..., Any]:
    if not inspect.isasyncgenfunction(behaviour):  # writes with context.write(): a coroutine
        return _unary(behaviour, method)

    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        try:
            async for response in behaviour(request, context):
                yield response
        except Refused as refused:
            await _abort(context, method, refused)
        except sqlite3.OperationalError as exc:
            await _abort_if_transient(context, method, exc)

    return call
