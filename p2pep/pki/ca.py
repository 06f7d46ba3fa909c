"""The operator's certificate authority: one EC P-256 key that signs every P2PEP certificate.

Invariants of every certificate it issues:

* it names exactly one :class:`~p2pep.identity.Identity`: Subject CN = name, SAN URI
  ``p2pep:<kind>/<name>``, SAN DNS ``<name>`` (the name clients verify a server by,
  with ``grpc.ssl_target_name_override``);
* it is good for both ends of a connection (EKU clientAuth and serverAuth): services and
  meters both serve and dial;
* a meter's certificate from enrollment also carries the meter's enrolled secp256k1 signing
  key (:data:`METER_KEY_OID`), so settlement binds a registration to the key that enrolled
  (a meter certificate without it, e.g. the tests' CA's, binds to the first key registered);
* its serial number is random and recorded in the issue log (:mod:`p2pep.pki.tlsdir`),
  so it can be revoked by name or serial.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from p2pep.identity import Identity

#: A private extension (P2PEP arc, unregistered) holding a meter's 33-byte compressed
#: secp256k1 signing key, DER OCTET STRING.
METER_KEY_OID = x509.ObjectIdentifier("1.3.6.1.4.1.55555.1.1")
CA_DAYS = 3650
CERT_DAYS = 365


class CsrRefused(ValueError):
    """A certificate signing request the CA will not sign."""


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _encode_meter_key(pubkey_hex: str) -> bytes:
    raw = bytes.fromhex(pubkey_hex)
    if len(raw) != 33:
        raise ValueError("a meter key is a 33-byte compressed secp256k1 point")
    return bytes([0x04, len(raw)]) + raw


def meter_key_of(cert: x509.Certificate) -> str | None:
    """The enrolled signing key (hex) a meter certificate carries, or ``None``."""
    try:
        ext = cert.extensions.get_extension_for_oid(METER_KEY_OID).value
    except x509.ExtensionNotFound:
        return None
    raw = ext.value if isinstance(ext, x509.UnrecognizedExtension) else b""
    if len(raw) != 35 or raw[0] != 0x04 or raw[1] != 33:
        return None
    return raw[2:].hex()


@dataclass(frozen=True)
class CertificateAuthority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, name: str = "p2pep operator CA", days: int = CA_DAYS) -> CertificateAuthority:
        key = new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @classmethod
    def from_pem(cls, key: bytes, cert: bytes) -> CertificateAuthority:
        loaded = serialization.load_pem_private_key(key, password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError("the CA key is not an EC key")
        return cls(loaded, x509.load_pem_x509_certificate(cert))

    def issue(self, identity: Identity, public_key: ec.EllipticCurvePublicKey, *, days: int = CERT_DAYS,
              meter_key_hex: str | None = None) -> x509.Certificate:
        """A certificate naming ``identity`` for ``public_key``."""
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity.name)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(min(now + dt.timedelta(days=days), self.cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri),
                                                        x509.DNSName(identity.name)]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        if meter_key_hex is not None:
            builder = builder.add_extension(x509.UnrecognizedExtension(METER_KEY_OID, _encode_meter_key(meter_key_hex)),
                                            critical=False)
        return builder.sign(self.key, hashes.SHA256())

    def issue_with_key(self, identity: Identity, *, days: int = CERT_DAYS,
                       meter_key_hex: str | None = None) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A fresh key and its certificate (for services, operators, and launchers of meters)."""
        key = new_key()
        return self.issue(identity, key.public_key(), days=days, meter_key_hex=meter_key_hex), key

    def sign_csr(self, csr: x509.CertificateSigningRequest, identity: Identity, *, days: int = CERT_DAYS,
                 meter_key_hex: str | None = None) -> x509.Certificate:
        """A certificate for a CSR's key naming ``identity`` (whatever else the CSR asks
        for is ignored); :class:`CsrRefused` if its self-signature is bad or its key is not P-256."""
        if not csr.is_signature_valid:
            raise CsrRefused("csr: bad signature")
        key = csr.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
            raise CsrRefused("csr: the key must be EC P-256")
        return self.issue(identity, key, days=days, meter_key_hex=meter_key_hex)

    def verifies(self, cert: x509.Certificate) -> bool:
        """Whether this CA signed ``cert`` (signature only; not validity or revocation)."""
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True


def make_csr(key: ec.EllipticCurvePrivateKey, name: str) -> x509.CertificateSigningRequest:
    """A CSR for ``key`` (the CA decides what the certificate names; CN is a hint)."""
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .sign(key, hashes.SHA256()))
