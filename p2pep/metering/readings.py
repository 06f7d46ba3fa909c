"""Meter readings: the signed unit of evidence that flows from meters to settlement."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from p2pep.canonical import reading_digest, reading_document


@dataclass(frozen=True)
class Reading:
    """A meter's cumulative registers (integer Wh) at a simulated instant.

    ``seq`` starts at 1 and increases by one per reading of a meter; ``timestamp_ms``
    is simulated unix time. The signed content is exactly
    :func:`p2pep.canonical.reading_document` of these fields."""

    meter_id: str
    seq: int
    import_wh: int
    export_wh: int
    timestamp_ms: int

    def document(self) -> dict[str, Any]:
        return reading_document(self.meter_id, self.seq, self.import_wh, self.export_wh, self.timestamp_ms)

    def digest(self) -> bytes:
        """The 32-byte tagged hash that the meter signs."""
        return reading_digest(self.meter_id, self.seq, self.import_wh, self.export_wh, self.timestamp_ms)


@dataclass(frozen=True)
class SignedReading:
    """A reading with the meter's DER-encoded ECDSA signature over ``reading.digest()``."""

    reading: Reading
    signature: bytes

    @property
    def signature_hex(self) -> str:
        return self.signature.hex()
