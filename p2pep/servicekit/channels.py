"""The one way a P2PEP process dials another: :func:`channel`.

Every client channel between P2PEP components gets the same options, so behaviour on a lossy
link or a restarting peer is decided here, once:

* reconnect quickly when the peer comes back (gRPC's default reconnect backoff grows to
  minutes, while settlement ends the contracts of a meter silent for ~15 s);
* but give each connection attempt time to finish over a slow link: gRPC reads
  ``grpc.min_reconnect_backoff_ms`` as the *minimum connect timeout* (TCP connect, TLS
  handshake and HTTP/2 settings within the larger of it and the current backoff), not as a
  backoff. A mutual-TLS handshake over GPRS (scenarios/lossy.toml) takes seconds; with 200 ms
  there and a 2 s maximum backoff it never completed (tests/test_channels_slow_link.py);
* gRPC's own retry policy for unary calls that fail with UNAVAILABLE before the server saw
  them (a few tries, short exponential backoff); streams and calls that may have run are
  retried by their callers, each under :func:`p2pep.servicekit.supervised`;
* keepalive pings, so a half-open connection is noticed;
* message size limits (:mod:`p2pep.servicekit.limits`).

* mutual TLS: the caller presents its own certificate (``tls``) and checks that the server's
  certificate names ``peer`` (``grpc.ssl_target_name_override``): a server is verified by
  its name, never by the host it happens to run on. The only plaintext channel is the
  measuring mode of :mod:`p2pep.servicekit.tls` (``tls.plaintext_loopback``), which dials
  loopback targets only.
"""

from __future__ import annotations

import json
from typing import Any

import grpc

from p2pep.servicekit.limits import channel_options
from p2pep.servicekit.loopback import is_loopback_target
from p2pep.servicekit.tls import CLAIM_PREFIX, Tls

RETRY_POLICY = {
    "maxAttempts": 4,
    "initialBackoff": "0.1s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
SERVICE_CONFIG = json.dumps({"methodConfig": [{"name": [{}], "retryPolicy": RETRY_POLICY}]})
# How long one connection attempt may take (gRPC's option name says backoff; see above). A
# peer that refuses the connection (restarting) fails the attempt at once, so this only
# waits on a link that is slow or stalls, and bounds how long after a partition heals a
# stalled attempt is given up and a new one made.
MIN_CONNECT_TIMEOUT_MS = 10_000
OPTIONS: list[tuple[str, Any]] = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", MIN_CONNECT_TIMEOUT_MS),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.enable_retries", 1),
    ("grpc.service_config", SERVICE_CONFIG),
    *channel_options(),
]


def channel(target: str, *, peer: str, tls: Tls) -> grpc.aio.Channel:
    """A channel to the P2PEP component named ``peer`` (e.g. ``settlement``, ``meter-7``)
    at ``host:port``, dialled as ``tls.identity``."""
    options = [*OPTIONS, ("grpc.ssl_target_name_override", peer)]
    if tls.plaintext_loopback:
        if not is_loopback_target(target):
            raise ValueError(f"plaintext gRPC (grpc_plaintext_loopback) dials loopback addresses only, not {target}")
        options.append(("grpc.primary_user_agent", f"{CLAIM_PREFIX}{tls.identity}"))
    return grpc.aio.secure_channel(target, tls.channel_credentials(), options=options)
