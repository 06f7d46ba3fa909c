"""gRPC message size limits, set once for every server and every channel between P2PEP components.

A request is at most :data:`MAX_REQUEST_BYTES` (1 MiB: the largest a component sends is a
matcher batch of ``max_batch`` orders, about 100 bytes each, or a few thousand anchor leaves);
a response at most :data:`MAX_RESPONSE_BYTES` (16 MiB: lists of contracts and payments). A
server refuses a bigger request with ``RESOURCE_EXHAUSTED`` before it is decoded, so nobody
makes a service hold a large message in memory; a client refuses a bigger response the
same way. Metadata (headers) is bounded too. Servers take their limits from their
settings (``P2PEP_<SERVICE>_GRPC_MAX_REQUEST_BYTES``, ``..._GRPC_MAX_RESPONSE_BYTES``), whose
defaults are these.
"""

from __future__ import annotations

from typing import Any

MAX_REQUEST_BYTES = 1 << 20
MAX_RESPONSE_BYTES = 16 << 20
MAX_METADATA_BYTES = 16 << 10


def server_options(max_request_bytes: int = MAX_REQUEST_BYTES,
                   max_response_bytes: int = MAX_RESPONSE_BYTES) -> list[tuple[str, Any]]:
    """Options of a ``grpc.aio.server``: what it receives and sends at most."""
    return [
        ("grpc.max_receive_message_length", max_request_bytes),
        ("grpc.max_send_message_length", max_response_bytes),
        ("grpc.max_metadata_size", MAX_METADATA_BYTES),
    ]


def channel_options() -> list[tuple[str, Any]]:
    """Options of a client channel: what it sends and receives at most."""
    return [
        ("grpc.max_send_message_length", MAX_REQUEST_BYTES),
        ("grpc.max_receive_message_length", MAX_RESPONSE_BYTES),
        ("grpc.max_metadata_size", MAX_METADATA_BYTES),
    ]
