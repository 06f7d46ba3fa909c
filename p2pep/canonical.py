"""Canonical encodings and hashes that P2PEP signs and anchors.

Everything that is signed or hashed is first turned into *canonical JSON*:
UTF-8, object keys sorted, no insignificant whitespace, integers only (no
floats, so energy and money never round), strings as-is. For the value types
used here (objects, strings, integers, lists, booleans) this is exactly RFC 8785
(JCS), so anyone can recompute a hash with any JSON library.

Hashes are BIP-340-style *tagged hashes*: ``SHA256(SHA256(tag) || SHA256(tag) || msg)``.
Each kind of object has its own tag, so a reading can never be mistaken for a
contract or a Merkle node, whatever its bytes.

Signatures are ECDSA over secp256k1 (coincurve), DER-encoded, over the 32-byte
tagged hash; public keys are 33-byte compressed points, hex in JSON.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

READING_TAG = "P2PEP/reading/v1"
CONTRACT_TAG = "P2PEP/contract/v1"
SETTLEMENT_TAG = "P2PEP/settlement/v1"


class CanonicalError(ValueError):
    """A value that has no canonical encoding (a float, a non-string key...)."""


MAX_DEPTH = 32
"""Deepest nesting of objects and lists a canonical document may have."""


def utf8_text(value: str) -> bool:
    """Whether ``value`` encodes as UTF-8 (no lone surrogates, which JSON's ``\\ud800`` can make)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check(value: Any, path: str = "$", depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise CanonicalError(f"{path}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        if not utf8_text(value):
            raise CanonicalError(f"{path}: string is not valid Unicode (a lone surrogate)")
        return
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        return
    if isinstance(value, float):
        raise CanonicalError(f"{path}: floats are not allowed in canonical encodings")
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise CanonicalError(f"{path}: object keys must be strings")
            if not utf8_text(k):
                raise CanonicalError(f"{path}: an object key is not valid Unicode (a lone surrogate)")
            _check(v, f"{path}.{ascii(k)[1:-1][:64]}", depth + 1)
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check(v, f"{path}[{i}]", depth + 1)
        return
    raise CanonicalError(f"{path}: {type(value).__name__} has no canonical encoding")


def canonical_json(value: Any) -> bytes:
    """RFC 8785 canonical JSON for integer-only documents."""
    _check(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def tagged_hash(tag: str, msg: bytes) -> bytes:
    t = hashlib.sha256(tag.encode()).digest()
    return hashlib.sha256(t + t + msg).digest()


def reading_document(
    meter_id: str, seq: int, import_wh: int, export_wh: int, timestamp_ms: int
) -> dict[str, Any]:
    """The signed content of a meter reading (cumulative registers, in Wh)."""
    return {
        "v": 1,
        "meter_id": meter_id,
        "seq": seq,
        "import_wh": import_wh,
        "export_wh": export_wh,
        "timestamp_ms": timestamp_ms,
    }


def reading_digest(
    meter_id: str, seq: int, import_wh: int, export_wh: int, timestamp_ms: int
) -> bytes:
    doc = reading_document(meter_id, seq, import_wh, export_wh, timestamp_ms)
    return tagged_hash(READING_TAG, canonical_json(doc))


def contract_hash(terms: Mapping[str, Any]) -> bytes:
    """Hash of a contract's canonical terms (see ``p2pep.contracts``)."""
    return tagged_hash(CONTRACT_TAG, canonical_json(terms))


def settlement_hash(summary: Mapping[str, Any]) -> bytes:
    """Hash of a contract's settlement summary, anchored when it ends."""
    return tagged_hash(SETTLEMENT_TAG, canonical_json(summary))
