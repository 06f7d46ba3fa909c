"""Rewrapping a gRPC method handler: the one place that knows gRPC's four call kinds.

Each server interceptor of :mod:`p2pep.servicekit` (metrics, authorization, refusals) wraps
the behaviour of every method the same way: it keeps the handler's codec and replaces the
behaviour of whichever of the four kinds the handler has. :func:`rewrap` does that; the
interceptor says only how to wrap one behaviour of a given :data:`Kind`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import grpc

Kind = Literal["unary_unary", "stream_unary", "unary_stream", "stream_stream"]
Behaviour = Callable[..., Any]

_FACTORIES: dict[Kind, Callable[..., grpc.RpcMethodHandler[Any, Any]]] = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


def rewrap(handler: grpc.RpcMethodHandler[Any, Any],
           wrap: Callable[[Behaviour, Kind], Behaviour]) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` with its behaviour replaced by ``wrap(behaviour, kind)``, same codec."""
    for kind, factory in _FACTORIES.items():
        behaviour = getattr(handler, kind)
        if behaviour is not None:
            return factory(wrap(behaviour, kind), request_deserializer=handler.request_deserializer,
                           response_serializer=handler.response_serializer)
    return handler
