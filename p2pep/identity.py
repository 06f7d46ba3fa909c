"""Who a caller is: an :class:`Identity` named by the one certificate it presents.

Every P2PEP certificate (see :mod:`p2pep.pki`) names exactly one identity: Subject CN =
name, SAN URI ``p2pep:<kind>/<name>``, SAN DNS ``<name>``. Kinds: ``service`` (settlement,
matcher, anchor, console, portal, ...), ``meter`` (the meter id) and ``operator`` (a person
or tool of the operator: the ``p2pep`` CLI, the scenario harness).

A server learns its caller only from the verified client certificate (gRPC's auth
context), never from request fields: :func:`from_auth_context`. A certificate with no,
or more than one, ``p2pep:`` URI names nobody (``None``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from cryptography import x509

KINDS = ("service", "meter", "operator")
URI_SCHEME = "p2pep:"
#: Names are file names in a TLS folder and DNS-like SAN entries: no "/" and no spaces.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class BadIdentity(ValueError):
    """A kind or name an identity cannot have."""


@dataclass(frozen=True)
class Identity:
    """One party: ``kind`` (one of :data:`KINDS`) and ``name``; ``str()`` is ``kind/name``."""

    kind: str
    name: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise BadIdentity(f"kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if not NAME_RE.match(self.name):
            raise BadIdentity(f"name {self.name!r}: 1..64 of [A-Za-z0-9._@-], starting with a letter or digit")

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def uri(self) -> str:
        """The SAN URI naming it: ``p2pep:<kind>/<name>``."""
        return f"{URI_SCHEME}{self}"

    @property
    def meter_id(self) -> str | None:
        """The meter id if this is a meter, else ``None``."""
        return self.name if self.kind == "meter" else None

    @classmethod
    def parse(cls, text: str) -> Identity:
        """``kind/name`` or ``p2pep:kind/name`` -> Identity; :class:`BadIdentity` if malformed."""
        body = text[len(URI_SCHEME):] if text.startswith(URI_SCHEME) else text
        kind, sep, name = body.partition("/")
        if not sep:
            raise BadIdentity(f"{text!r} is not kind/name")
        return cls(kind, name)


def service(name: str) -> Identity:
    return Identity("service", name)


def meter(meter_id: str) -> Identity:
    return Identity("meter", meter_id)


def operator(name: str) -> Identity:
    return Identity("operator", name)


def from_certificate(cert: x509.Certificate) -> Identity | None:
    """The identity a certificate names (its one ``p2pep:`` SAN URI), or ``None``."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith(URI_SCHEME)]
    if len(uris) != 1:
        return None
    try:
        return Identity.parse(uris[0])
    except BadIdentity:
        return None


@lru_cache(maxsize=4096)
def _parse_pem(pem: bytes) -> tuple[Identity | None, int]:
    cert = x509.load_pem_x509_certificate(pem)
    return from_certificate(cert), cert.serial_number


def peer_certificate_info(auth_context: Mapping[str, Sequence[bytes]]) -> tuple[Identity, int] | None:
    """The identity and serial number of the verified client certificate in a gRPC auth
    context (``context.auth_context()``), or ``None`` when there is none (plaintext, or no
    client certificate) or it names nobody. gRPC has verified the chain and validity period
    before a handler runs (``require_client_auth=True``)."""
    pems = auth_context.get("x509_pem_cert") or []
    if len(pems) != 1:
        return None
    try:
        ident, serial = _parse_pem(bytes(pems[0]))
    except ValueError:
        return None
    return None if ident is None else (ident, serial)


def from_auth_context(auth_context: Mapping[str, Sequence[bytes]]) -> Identity | None:
    """The caller's identity from a gRPC auth context, or ``None``."""
    info = peer_certificate_info(auth_context)
    return None if info is None else info[0]
