"""Checks on readings arriving at settlement, one stream per meter.

:func:`validate_reading` is the pure core: given the reading, the meter's known
public key, the stream's head (last accepted reading) and, for a sequence number at
or below the head, the reading already stored under that number, it returns a
:class:`Verdict`. The checks, in order:

1. well formed (integer fields, ``seq >= 1``, registers and time not negative, every
   integer within a signed 64-bit integer and the time within years 1..9999, so the
   reading can be stored) -> ``MALFORMED``; meter id matches the stream -> ``METER_MISMATCH``;
2. the meter is known -> ``UNKNOWN_METER``;
3. the key the reading claims (if sent) is that key, and the signature verifies
   against it -> ``FORGED_SIGNATURE``;
4. ``seq <= head.seq``: identical content to what is stored under ``seq`` ->
   *duplicate* (acknowledge, store nothing: meters resend after a link drop);
   anything else -> ``REPLAYED_SEQUENCE``;
5. registers never below the head's -> ``REGISTER_BACKWARDS``;
6. timestamp not before the head's -> ``TIMESTAMP_BACKWARDS``.

Gaps in ``seq`` are accepted (the reading still proves the registers) and reported
in the verdict so the service can count them. :class:`StreamBook` is an in-memory
driver of the same rules for tests and simple services; a persistent service keeps
heads and stored readings in its database and calls :func:`validate_reading`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from p2pep.bounds import INT64_MAX, MAX_MS
from p2pep.metering.readings import Reading, SignedReading
from p2pep.metering.signing import verify_reading


class RejectReason(StrEnum):
    MALFORMED = "MALFORMED"
    METER_MISMATCH = "METER_MISMATCH"
    UNKNOWN_METER = "UNKNOWN_METER"
    FORGED_SIGNATURE = "FORGED_SIGNATURE"
    REPLAYED_SEQUENCE = "REPLAYED_SEQUENCE"
    REGISTER_BACKWARDS = "REGISTER_BACKWARDS"
    TIMESTAMP_BACKWARDS = "TIMESTAMP_BACKWARDS"


@dataclass(frozen=True)
class StreamHead:
    """The last reading accepted from a meter."""

    seq: int
    import_wh: int
    export_wh: int
    timestamp_ms: int

    @classmethod
    def of(cls, reading: Reading) -> StreamHead:
        return cls(reading.seq, reading.import_wh, reading.export_wh, reading.timestamp_ms)


@dataclass(frozen=True)
class Accepted:
    """Store this reading and advance the head to it."""

    reading: Reading
    seq_gap: int = 0
    """Sequence numbers skipped since the head (0 normally)."""

    ok = True
    duplicate = False


@dataclass(frozen=True)
class Duplicate:
    """Already stored with identical content: acknowledge, store nothing."""

    reading: Reading

    ok = True
    duplicate = True


@dataclass(frozen=True)
class Rejected:
    """Refused: store nothing, answer with ``reason`` and ``message`` (``field`` names
    the offending field where there is one)."""

    reason: RejectReason
    message: str
    field: str | None = None

    ok = False
    duplicate = False


Verdict = Accepted | Duplicate | Rejected


def _malformed(r: Reading) -> Rejected | None:
    if not isinstance(r.meter_id, str) or not r.meter_id:
        return Rejected(RejectReason.MALFORMED, "meter_id must be a non-empty string", "meter_id")
    for name in ("seq", "import_wh", "export_wh", "timestamp_ms"):
        value = getattr(r, name)
        if isinstance(value, bool) or not isinstance(value, int):
            return Rejected(RejectReason.MALFORMED, f"{name} must be an integer", name)
        if value < 0:
            return Rejected(RejectReason.MALFORMED, f"{name} must not be negative", name)
        if value > (MAX_MS if name == "timestamp_ms" else INT64_MAX):
            return Rejected(RejectReason.MALFORMED, f"{name} is too large ({value})", name)
    if r.seq < 1:
        return Rejected(RejectReason.MALFORMED, "seq starts at 1", "seq")
    return None


def needs_stored_lookup(reading: Reading, head: StreamHead | None) -> bool:
    """Whether :func:`validate_reading` needs the reading stored under ``reading.seq``."""
    return head is not None and reading.seq <= head.seq


def validate_reading(
    signed: SignedReading,
    *,
    pubkey_hex: str | None,
    head: StreamHead | None,
    stored: Reading | None = None,
    stream_meter_id: str | None = None,
    claimed_pubkey_hex: str | None = None,
) -> Verdict:
    """Judge one reading (pure). See the module docstring for the rules.

    ``pubkey_hex`` is the registered key of ``signed.reading.meter_id`` (None if
    unknown); ``head`` the stream's last accepted reading (None before the first);
    ``stored`` the accepted reading with the same ``seq`` when
    :func:`needs_stored_lookup` says so; ``stream_meter_id`` the meter the
    stream is authenticated as, if any; ``claimed_pubkey_hex`` the key the reading
    says it is signed by (``Reading.pubkey`` in common.proto), if sent: a key other
    than the registered one is a forgery."""
    r = signed.reading
    bad = _malformed(r)
    if bad is not None:
        return bad
    if stream_meter_id is not None and r.meter_id != stream_meter_id:
        return Rejected(
            RejectReason.METER_MISMATCH,
            f"reading is for meter {r.meter_id!r} on the stream of {stream_meter_id!r}",
            "meter_id",
        )
    if pubkey_hex is None:
        return Rejected(RejectReason.UNKNOWN_METER, f"meter {r.meter_id!r} is not registered", "meter_id")
    if claimed_pubkey_hex is not None and claimed_pubkey_hex.lower() != pubkey_hex.lower():
        return Rejected(
            RejectReason.FORGED_SIGNATURE,
            f"reading claims a key that is not the registered key of meter {r.meter_id!r}",
            "pubkey",
        )
    if not verify_reading(signed, pubkey_hex):
        return Rejected(
            RejectReason.FORGED_SIGNATURE,
            f"signature does not verify for meter {r.meter_id!r} seq {r.seq}",
            "signature",
        )
    if head is not None and r.seq <= head.seq:
        if stored is not None and stored == r:
            return Duplicate(r)
        return Rejected(
            RejectReason.REPLAYED_SEQUENCE,
            f"seq {r.seq} was already used (last accepted seq {head.seq}) with different content",
            "seq",
        )
    if head is not None:
        if r.import_wh < head.import_wh:
            return Rejected(
                RejectReason.REGISTER_BACKWARDS,
                f"import_wh {r.import_wh} is below the last accepted {head.import_wh}",
                "import_wh",
            )
        if r.export_wh < head.export_wh:
            return Rejected(
                RejectReason.REGISTER_BACKWARDS,
                f"export_wh {r.export_wh} is below the last accepted {head.export_wh}",
                "export_wh",
            )
        if r.timestamp_ms < head.timestamp_ms:
            return Rejected(
                RejectReason.TIMESTAMP_BACKWARDS,
                f"timestamp_ms {r.timestamp_ms} is before the last accepted {head.timestamp_ms}",
                "timestamp_ms",
            )
        return Accepted(r, seq_gap=r.seq - head.seq - 1)
    return Accepted(r, seq_gap=r.seq - 1)


class StreamBook:
    """In-memory reading streams of known meters, applying :func:`validate_reading`.

    Keeps every accepted reading (by meter and seq) so resends are recognised."""

    def __init__(self, pubkeys: Mapping[str, str]) -> None:
        self._pubkeys = dict(pubkeys)
        self._heads: dict[str, StreamHead] = {}
        self._stored: dict[str, dict[int, Reading]] = {}

    def register(self, meter_id: str, pubkey_hex: str) -> None:
        self._pubkeys[meter_id] = pubkey_hex

    def head(self, meter_id: str) -> StreamHead | None:
        return self._heads.get(meter_id)

    def readings(self, meter_id: str) -> list[Reading]:
        """Accepted readings of a meter, in sequence order."""
        return [r for _, r in sorted(self._stored.get(meter_id, {}).items())]

    def submit(
        self,
        signed: SignedReading,
        stream_meter_id: str | None = None,
        claimed_pubkey_hex: str | None = None,
    ) -> Verdict:
        r = signed.reading
        meter = r.meter_id if isinstance(r.meter_id, str) else ""
        head = self._heads.get(meter)
        stored = None
        if isinstance(r.seq, int) and needs_stored_lookup(r, head):
            stored = self._stored.get(meter, {}).get(r.seq)
        verdict = validate_reading(
            signed,
            pubkey_hex=self._pubkeys.get(meter),
            head=head,
            stored=stored,
            stream_meter_id=stream_meter_id,
            claimed_pubkey_hex=claimed_pubkey_hex,
        )
        if isinstance(verdict, Accepted):
            self._stored.setdefault(meter, {})[r.seq] = r
            self._heads[meter] = StreamHead.of(r)
        return verdict
