"""A meter's secp256k1 signing key (coincurve) and reading signatures.

Signatures are DER-encoded ECDSA over a 32-byte tagged hash from
:mod:`p2pep.canonical`, signed with ``hasher=None`` because the digest already is
the hash. libsecp256k1 produces low-S signatures and only accepts low-S ones, so a
signature cannot be re-shaped into a second valid one. Public keys are 33-byte
compressed points, hex in JSON and config.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import coincurve

from p2pep.metering.readings import Reading, SignedReading


class KeyFormatError(ValueError):
    """A private or public key that cannot be parsed."""


def parse_pubkey(pubkey_hex: str) -> coincurve.PublicKey:
    """A 33-byte compressed secp256k1 public key from hex; :class:`KeyFormatError` if not."""
    try:
        raw = bytes.fromhex(pubkey_hex)
    except (ValueError, TypeError) as e:
        raise KeyFormatError("public key is not hex") from e
    if len(raw) != 33 or raw[0] not in (2, 3):
        raise KeyFormatError("public key must be a 33-byte compressed secp256k1 point")
    try:
        return coincurve.PublicKey(raw)
    except ValueError as e:
        raise KeyFormatError("public key is not a point on secp256k1") from e


def is_valid_pubkey(pubkey_hex: str) -> bool:
    try:
        parse_pubkey(pubkey_hex)
    except KeyFormatError:
        return False
    return True


def verify_digest(signature: bytes, digest: bytes, pubkey_hex: str) -> bool:
    """True iff ``signature`` (DER) is a valid signature of ``digest`` by ``pubkey_hex``.
    Never raises on bad input: malformed keys or signatures just do not verify."""
    if len(digest) != 32:
        return False
    try:
        return bool(parse_pubkey(pubkey_hex).verify(signature, digest, hasher=None))
    except (KeyFormatError, ValueError, TypeError):
        return False


@dataclass(frozen=True)
class MeterKey:
    """A meter's private signing key."""

    _key: coincurve.PrivateKey

    @classmethod
    def generate(cls) -> MeterKey:
        return cls(coincurve.PrivateKey())

    @classmethod
    def from_hex(cls, secret_hex: str) -> MeterKey:
        try:
            raw = bytes.fromhex(secret_hex.strip())
        except ValueError as e:
            raise KeyFormatError("private key is not hex") from e
        if len(raw) != 32:
            raise KeyFormatError("private key must be 32 bytes (64 hex digits)")
        try:
            return cls(coincurve.PrivateKey(raw))
        except ValueError as e:
            raise KeyFormatError("private key is out of range for secp256k1") from e

    @classmethod
    def load(cls, path: Path) -> MeterKey:
        """Read a key file: 64 hex digits (whitespace ignored)."""
        return cls.from_hex(Path(path).read_text(encoding="ascii"))

    @classmethod
    def load_or_create(cls, path: Path) -> MeterKey:
        """Load the key at ``path``, or generate one and write it there (mode 0600)."""
        path = Path(path)
        if path.exists():
            return cls.load(path)
        key = cls.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(key.secret_hex + "\n")
        return key

    @property
    def secret_hex(self) -> str:
        return self._key.secret.hex()

    @property
    def pubkey_hex(self) -> str:
        return self._key.public_key.format(compressed=True).hex()

    def sign_digest(self, digest: bytes) -> bytes:
        """DER ECDSA signature of a 32-byte digest (deterministic, RFC 6979)."""
        if len(digest) != 32:
            raise ValueError("digest must be 32 bytes")
        return self._key.sign(digest, hasher=None)

    def sign_reading(self, reading: Reading) -> SignedReading:
        return SignedReading(reading, self.sign_digest(reading.digest()))

    def __repr__(self) -> str:  # never print the secret
        return f"MeterKey(pubkey={self.pubkey_hex})"


def verify_reading(signed: SignedReading, pubkey_hex: str) -> bool:
    """True iff the reading's signature is valid for ``pubkey_hex``."""
    return verify_digest(signed.signature, signed.reading.digest(), pubkey_hex)
