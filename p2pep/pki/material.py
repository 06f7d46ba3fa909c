"""A component's own TLS material, re-read when its files change: :class:`Material`.

Rotation without a restart: the operator (or `p2pep ca issue`) writes a new ``<name>.key`` /
``<name>.crt`` or a new ``ca.crt`` into the TLS folder, and the running component uses them
for every *new* connection: its server for the next handshake
(:meth:`p2pep.servicekit.tls.Tls.server_credentials`, gRPC's certificate-configuration
fetcher), its clients for the next channel they create. The revocation list has its own
reloader (:class:`p2pep.pki.tlsdir.Revocations`, consulted on every call).

Invariants: a change is noticed by each file's (mtime, size, inode), so a check is three
``stat`` calls; new material replaces the current one only when it is whole and consistent
(the key is the certificate's, the certificate names this component and was issued by a CA in
``ca.crt``, and is valid now): a half-written rotation (key replaced, certificate not yet) or a
mistake keeps the last good material and is logged, and is re-read on the next change.
:attr:`version` grows by one for each material taken, so every user can tell it has news.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from p2pep.identity import Identity, from_certificate

log = structlog.get_logger("tls.material")

Pems = tuple[bytes, bytes, bytes]  # key, certificate, CA bundle
Stamp = tuple[tuple[int, int, int] | None, ...]


def problem(identity: Identity, pems: Pems, now: dt.datetime | None = None) -> str | None:
    """What is wrong with ``pems`` as ``identity``'s material, or ``None``."""
    key_pem, cert_pem, ca_pem = pems
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
        cert = x509.load_pem_x509_certificate(cert_pem)
        cas = x509.load_pem_x509_certificates(ca_pem)
    except ValueError as e:
        return f"unreadable: {e}"
    if key.public_key() != cert.public_key():
        return "the key is not the certificate's"
    if from_certificate(cert) != identity:
        return f"the certificate does not name {identity}"
    now = now or dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        return "the certificate is not valid now"
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
            return None
        except (ValueError, TypeError, InvalidSignature):  # not this CA
            continue
    return "the certificate is not issued by a CA in ca.crt"


class Material:
    def __init__(self, identity: Identity, key: Path, cert: Path, ca: Path, first: Pems) -> None:
        self.identity = identity
        self.paths = (key, cert, ca)
        self._lock = threading.Lock()  # servers read it from gRPC's own threads
        self._stamp = self._now_stamp()
        self._pems = first
        self._bad_stamp: Stamp | None = None
        self.version = 1

    def _now_stamp(self) -> Stamp:
        out: list[tuple[int, int, int] | None] = []
        for p in self.paths:
            try:
                st = os.stat(p)
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    def current(self) -> tuple[Pems, int]:
        """The material to use now and its :attr:`version` (re-read first if a file changed)."""
        stamp = self._now_stamp()
        if stamp == self._stamp:
            return self._pems, self.version
        with self._lock:
            if stamp != self._stamp and stamp != self._bad_stamp:
                self._reload(stamp)
            return self._pems, self.version

    def _reload(self, stamp: Stamp) -> None:
        try:
            pems = tuple(p.read_bytes() for p in self.paths)
        except OSError as e:
            why: str | None = f"unreadable: {e}"
        else:
            why = problem(self.identity, pems)  # type: ignore[arg-type]
        if why is not None:
            self._bad_stamp = stamp  # tried; again on the next change
            log.warning("new TLS material refused, keeping the current one", identity=str(self.identity),
                        why=why, folder=str(self.paths[1].parent))
            return
        self._stamp, self._bad_stamp = stamp, None
        if pems != self._pems:
            self._pems = pems  # type: ignore[assignment]
            self.version += 1
            log.info("TLS material reloaded", identity=str(self.identity), version=self.version)
