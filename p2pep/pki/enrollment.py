"""Meter enrollment: a one-time token per allowed meter id buys one certificate naming it.

The operator allows a meter id with ``p2pep enroll <meter-id>``, which prints a fresh
token and stores only its SHA-256 (``enrollment.json`` in the TLS folder, 0600). The
meter proves two things when it enrolls:

* it holds the token (its hash matches the one stored for that id, and it is unused);
* it holds its secp256k1 signing key: it signs :func:`enrollment_digest`, which binds the
  meter id, the token and the CSR (the TLS key it asks a certificate for), so the proof
  cannot be replayed for another id, token or TLS key.

Invariants: an unknown meter id, a wrong or already used token, and a second signing key
for an id that has enrolled are refused (nothing is written); a token is used at most
once; the first enrolled key of an id stays its key for good (a new token lets the same
key get a new certificate, e.g. after its TLS key was lost). The certificate carries the
enrolled key (:data:`p2pep.pki.ca.METER_KEY_OID`), which settlement checks on ``RegisterMeter``.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from p2pep.identity import BadIdentity, meter
from p2pep.metering.signing import is_valid_pubkey, verify_digest
from p2pep.pki.ca import CsrRefused
from p2pep.pki.tlsdir import TlsDir, write_private
from p2pep.refusals import AlreadyExists, InvalidArgument, PermissionDenied

ENROLLMENT_FILE = "enrollment.json"
DIGEST_TAG = b"p2pep/enroll/v1\x00"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def enrollment_digest(meter_id: str, token: str, csr_der: bytes) -> bytes:
    """The 32 bytes a meter signs with its secp256k1 key to enroll."""
    h = hashlib.sha256(DIGEST_TAG)
    for part in (meter_id.encode("utf-8"), token_hash(token).encode("ascii"), csr_der):
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.digest()


class Enrollment:
    """The enrollment book of one TLS folder (operator side)."""

    def __init__(self, tls: TlsDir) -> None:
        self.tls = tls
        self.path = tls.path / ENROLLMENT_FILE

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """The book, read and (if changed) written under an exclusive lock."""
        self.tls.path.mkdir(parents=True, exist_ok=True)
        with open(self.tls.path / (ENROLLMENT_FILE + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            book: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {"meters": {}}
            before = json.dumps(book, sort_keys=True)
            yield book
            after = json.dumps(book, sort_keys=True)
            if after != before:
                write_private(self.path, after.encode("utf-8"))

    def allow(self, meter_id: str) -> str:
        """A fresh one-time token for ``meter_id`` (replacing an unused earlier one)."""
        meter(meter_id)  # BadIdentity for an id no certificate can name
        token = secrets.token_urlsafe(24)
        with self._locked() as book:
            entry = book["meters"].setdefault(meter_id, {"key": None})
            entry["token_sha256"] = token_hash(token)
            entry["used"] = False
        return token

    def enrolled_key(self, meter_id: str) -> str | None:
        if not self.path.exists():
            return None
        entry = json.loads(self.path.read_text())["meters"].get(meter_id)
        return None if entry is None else entry.get("key")

    def enroll(self, meter_id: str, token: str, pubkey_hex: str, signature: bytes, csr_pem: bytes) -> bytes:
        """Check the token and the proof of possession, sign the CSR; the certificate PEM.
        Raises a :class:`~p2pep.refusals.Refused` (nothing written) when refused."""
        try:
            ident = meter(meter_id)
        except BadIdentity as e:
            raise InvalidArgument("meter_id", str(e)) from None
        if not is_valid_pubkey(pubkey_hex):
            raise InvalidArgument("pubkey", "not a 33-byte compressed secp256k1 key (hex)")
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError:
            raise InvalidArgument("csr_pem", "not a PEM certificate signing request") from None
        csr_der = csr.public_bytes(serialization.Encoding.DER)
        with self._locked() as book:
            entry = book["meters"].get(meter_id)
            if entry is None or "token_sha256" not in entry:
                raise PermissionDenied("meter_id", f"{meter_id} is not allowed to enroll")
            if entry.get("used") or not hmac.compare_digest(entry["token_sha256"], token_hash(token)):
                raise PermissionDenied("token", "wrong or already used enrollment token")
            if entry.get("key") not in (None, pubkey_hex):
                raise AlreadyExists("pubkey", f"{meter_id} enrolled another signing key")
            if not verify_digest(signature, enrollment_digest(meter_id, token, csr_der), pubkey_hex):
                raise PermissionDenied("signature", "does not prove possession of the signing key")
            try:
                cert = self.tls.ca().sign_csr(csr, ident, meter_key_hex=pubkey_hex)
            except CsrRefused as e:
                raise InvalidArgument("csr_pem", str(e)) from None
            entry["used"] = True
            entry["key"] = pubkey_hex
        self.tls.record(ident, cert)
        return cert.public_bytes(serialization.Encoding.PEM)


def enrollment_request(meter_id: str, token: str, key: Any) -> tuple[Any, bytes, bytes]:
    """The meter's side: a fresh TLS key, its CSR (PEM) and the signature proving possession
    of ``key`` (a :class:`~p2pep.metering.signing.MeterKey`): ``(tls_key, csr_pem, signature)``."""
    from p2pep.pki.ca import make_csr, new_key

    tls_key = new_key()
    csr = make_csr(tls_key, meter_id)
    signature = key.sign_digest(enrollment_digest(meter_id, token, csr.public_bytes(serialization.Encoding.DER)))
    return tls_key, csr.public_bytes(serialization.Encoding.PEM), signature


def enroll_local(tls: TlsDir, meter_id: str, token: str, key: Any) -> None:
    """Enroll a meter against the CA in ``tls`` in-process (``p2pep up``/``scenario run``,
    which run the operator's CA and launch the meters) and store its key and certificate
    there as ``<meter_id>.key``/``.crt``. Refusals raise as in :meth:`Enrollment.enroll`."""
    from p2pep.pki.ca import key_pem

    tls_key, csr_pem, signature = enrollment_request(meter_id, token, key)
    cert = Enrollment(tls).enroll(meter_id, token, key.pubkey_hex, signature, csr_pem)
    write_private(tls.key(meter_id), key_pem(tls_key))
    tls.crt(meter_id).write_bytes(cert)
