"""Free loopback ports, checked before a process is started on them."""

from __future__ import annotations

import socket

from p2pep.regtest.errors import PortInUse

_handed_out: set[int] = set()


def free_port() -> int:
    """A port the kernel says is free now and that this process has not handed out."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def ensure_free(what: str, port: int) -> None:
    """Raise PortInUse if something listens on ``port``.

    SO_REUSEADDR as Go and btcd set it: connections of a killed process left in
    TIME_WAIT do not count as the port being taken.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            raise PortInUse(what, port) from exc
