"""The Host header check (pure): a request is answered only for a host name the settings
allow, which defeats DNS rebinding (a hostile page resolving its own name to 127.0.0.1)."""

from __future__ import annotations

import re
from collections.abc import Iterable

_HOST = re.compile(r"^(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<name>[A-Za-z0-9.-]+))(?::(?P<port>[0-9]{1,5}))?$")


def host_name(header: str) -> str | None:
    """The host name of a Host (or Origin authority) value, lower case, without the port;
    None if it is not a well-formed host."""
    m = _HOST.match(header.strip())
    if m is None:
        return None
    return (m.group("v6") or m.group("name")).lower()


def host_verdict(header: str | None, allowed: Iterable[str]) -> str:
    """``"ok"``, ``"missing"`` (no Host), ``"malformed"`` or ``"not allowed"``.

    ``allowed`` holds host names (no ports); ``*`` allows every well-formed host."""
    if not header:
        return "missing"
    name = host_name(header)
    if name is None:
        return "malformed"
    names = {a.strip().lower() for a in allowed}
    return "ok" if "*" in names or name in names else "not allowed"
