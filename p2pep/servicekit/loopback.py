"""Whether a gRPC address stays on this host: :func:`is_loopback_target`.

Used by the plaintext measuring mode (``grpc_plaintext_loopback``, docs/trust-boundary.md),
which is refused for any address that is not loopback. gRPC's local credentials check the
same thing again on every connection (a peer that is not ``127.0.0.0/8`` or ``::1`` is
refused at the handshake), so a name that resolves elsewhere does not get through either.
"""

from __future__ import annotations

import ipaddress

LOCAL_NAMES = frozenset({"localhost", "ip6-localhost"})


def host_of(target: str) -> str:
    """The host of ``host:port``, ``[v6]:port`` or ``ipv4:host:port``/``ipv6:[v6]:port``."""
    for scheme in ("ipv4:", "ipv6:", "dns:///", "dns:"):
        if target.startswith(scheme):
            target = target[len(scheme):]
            break
    try:
        return str(ipaddress.ip_address(target))  # a bare address, e.g. ``::1``
    except ValueError:
        pass
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        host = target
    return host.removeprefix("[").removesuffix("]")


def is_loopback_target(target: str) -> bool:
    host = host_of(target).lower()
    if host in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
