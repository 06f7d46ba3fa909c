"""Checks on what a meter says about itself when it registers (pure).

Settlement keeps these and later dials the address and pays the node, so each is refused
with :class:`~p2pep.refusals.InvalidArgument` naming the field unless it is exactly of
its form:

* ``meter_id``: 1..64 characters of ``A-Z a-z 0-9 . _ -``, starting with a letter or digit
  (the same form :class:`p2pep.settings.meter.MeterSettings` takes; it is also a
  certificate's name, see the identity conventions);
* ``node_pubkey``: an lnd node's public key, 66 hex characters (33 bytes, ``02``/``03``);
* ``address`` (the MeterService) and ``node_address`` (lnd's p2p listener, may be empty):
  ``host:port`` with ``[v6]:port`` for IPv6, a port 1..65535 and a host that is a DNS
  name or an IP address someone could actually serve from: not unspecified (``0.0.0.0``),
  multicast, broadcast, link-local (e.g. a cloud's metadata service at 169.254.169.254)
  or reserved;
* ``role``: one of :data:`ROLES`;
* ``location`` (optional): latitude in [-90, 90] and longitude in [-180, 180] degrees, finite.
"""

from __future__ import annotations

import ipaddress
import math
import re

from p2pep.refusals import InvalidArgument

ROLES = ("producer", "consumer", "prosumer")
METER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MAX_METER_ID_LEN = 64
_METER_ID = re.compile(METER_ID_PATTERN.removesuffix("$") + r"\Z")
_NODE_PUBKEY = re.compile(r"0[23][0-9a-fA-F]{64}\Z")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")
_PORT = re.compile(r"[0-9]{1,5}\Z")


def check_meter_id(value: str, field: str = "meter_id") -> str:
    if not _METER_ID.match(value):
        raise InvalidArgument(field, f"must be 1..{MAX_METER_ID_LEN} characters of A-Z a-z 0-9 . _ -, "
                                     "starting with a letter or digit")
    return value


def check_node_pubkey(value: str, field: str = "node_pubkey") -> str:
    if not _NODE_PUBKEY.match(value):
        raise InvalidArgument(field, "must be an lnd node's public key: 66 hex characters starting 02 or 03")
    return value.lower()


def check_role(value: str, field: str = "role") -> str:
    if value not in ROLES:
        raise InvalidArgument(field, f"must be one of {', '.join(ROLES)}")
    return value


def check_location(latitude: float, longitude: float, field: str = "location") -> tuple[float, float]:
    """A place in degrees (WGS 84): ``(latitude, longitude)``, each finite and in range."""
    if not math.isfinite(latitude) or not -90.0 <= latitude <= 90.0:
        raise InvalidArgument(f"{field}.latitude", f"must be a number of degrees from -90 to 90, got {latitude}")
    if not math.isfinite(longitude) or not -180.0 <= longitude <= 180.0:
        raise InvalidArgument(f"{field}.longitude", f"must be a number of degrees from -180 to 180, got {longitude}")
    return latitude, longitude


def _check_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why nobody can be served at ``ip`` (None: it is fine)."""
    if ip.is_loopback:
        return None
    if ip.is_unspecified:
        return "is unspecified"
    if ip.is_multicast:
        return "is multicast"
    if ip.is_link_local:
        return "is link-local"
    if ip.is_reserved or (isinstance(ip, ipaddress.IPv4Address) and ip == ipaddress.IPv4Address("255.255.255.255")):
        return "is reserved"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return _check_ip(ip.ipv4_mapped)
    return None


def check_host(host: str, field: str) -> str:
    """A DNS name or an IP address (IPv6 without brackets) that can be dialled."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None:
        why = _check_ip(ip)
        if why:
            raise InvalidArgument(field, f"host {host} {why}")
        return host
    name = host.removesuffix(".")
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise InvalidArgument(field, "host must be a DNS name (labels of A-Z a-z 0-9 -) or an IP address")
    if re.fullmatch(r"[0-9.]+", name):
        raise InvalidArgument(field, "host looks like an IPv4 address but is not one")
    return host


def check_address(value: str, field: str = "address", *, required: bool = True) -> str:
    """``host:port`` (``[v6]:port``) as described in the module docstring; ``""`` only if
    not ``required``."""
    if not value and not required:
        return value
    if not value.isascii() or len(value) > 262:
        raise InvalidArgument(field, "must be host:port (ASCII, at most 262 characters)")
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
        if not sep or ":" not in host:
            raise InvalidArgument(field, "must be host:port, an IPv6 host as [addr]:port")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise InvalidArgument(field, f"[{host}] is not an IPv6 address") from None
    else:
        host, sep, port = value.rpartition(":")
        if not sep or not host:
            raise InvalidArgument(field, "must be host:port")
        if ":" in host:
            raise InvalidArgument(field, "an IPv6 host must be written [addr]:port")
    if not _PORT.match(port) or not 1 <= int(port) <= 65535:
        raise InvalidArgument(field, "port must be a number 1..65535")
    check_host(host, field)
    return value
