"""Conversions between plain values and protobuf fields, written once for every service.

Times are integers, milliseconds since the Unix epoch, everywhere inside P2PEP; they meet
``google.protobuf.Timestamp`` only at the gRPC edge, through :func:`ts_ms` and :func:`ms_ts`.
Wall-clock "now" is :func:`now_ms` (a meter's *simulated* clock is another thing: see
:mod:`p2pep.metering.clock`).

Proto enums are open integers on the wire but typed per enum by mypy-protobuf; a plain
``int`` from the domain becomes a field value through :func:`enum_value`, which refuses a
number the enum does not define.

Every Timestamp or Duration read from a request goes through :func:`ts_ms` or
:func:`duration_ms`, which refuse values outside protobuf's documented ranges (years 1..9999,
±10,000 years) with :class:`~p2pep.refusals.InvalidArgument` naming the field: so every time
P2PEP holds fits a signed 64-bit integer (SQLite's INTEGER) and converts back to a Timestamp.
Unsigned 64-bit request fields that end up in storage go through :func:`int64`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, TypeVar

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from p2pep.bounds import INT64_MAX, INT64_MIN, MAX_DURATION_SECONDS, MAX_TS_SECONDS, MIN_TS_SECONDS
from p2pep.refusals import InvalidArgument

if TYPE_CHECKING:  # generic only in the type stubs
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper

V = TypeVar("V", bound=int)



def now_ms() -> int:
    """Wall-clock time, ms since the epoch."""
    return time.time_ns() // 1_000_000


def ts_ms(ts: Timestamp, field: str = "timestamp") -> int:
    """A Timestamp as ms since the epoch (sub-millisecond nanos dropped); InvalidArgument
    naming ``field`` if it is outside years 1..9999 or its nanos are not 0..999,999,999."""
    if not MIN_TS_SECONDS <= ts.seconds <= MAX_TS_SECONDS:
        raise InvalidArgument(field, f"seconds {ts.seconds} is outside years 1..9999")
    if not 0 <= ts.nanos <= 999_999_999:
        raise InvalidArgument(field, f"nanos {ts.nanos} is outside 0..999999999")
    return ts.seconds * 1000 + ts.nanos // 1_000_000


def ts_ms_or_none(ts: Timestamp, field: str = "timestamp") -> int | None:
    """:func:`ts_ms`, or None for an unset (all-zero) Timestamp."""
    return None if ts.seconds == 0 and ts.nanos == 0 else ts_ms(ts, field)


def duration_ms(d: Duration, field: str = "duration") -> int:
    """A Duration as whole milliseconds; InvalidArgument naming ``field`` if it is outside
    ±10,000 years or its nanos are out of range (or of another sign than its seconds)."""
    if not -MAX_DURATION_SECONDS <= d.seconds <= MAX_DURATION_SECONDS:
        raise InvalidArgument(field, f"seconds {d.seconds} is outside ±{MAX_DURATION_SECONDS}")
    if not -999_999_999 <= d.nanos <= 999_999_999 or (d.seconds > 0 > d.nanos) or (d.seconds < 0 < d.nanos):
        raise InvalidArgument(field, f"nanos {d.nanos} is out of range for seconds {d.seconds}")
    return d.seconds * 1000 + d.nanos // 1_000_000


def int64(field: str, value: int) -> int:
    """``value`` (e.g. of a ``uint64`` request field) if it fits a signed 64-bit integer, as
    everything P2PEP stores must; InvalidArgument naming ``field`` otherwise."""
    if not INT64_MIN <= value <= INT64_MAX:
        raise InvalidArgument(field, f"{value} does not fit a signed 64-bit integer")
    return value


def ms_ts(ms: int) -> Timestamp:
    ts = Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def enum_value(enum: _EnumTypeWrapper[V], number: int) -> V:
    """``number`` as a value of the proto enum ``enum``; ValueError if it defines no such value."""
    for value in enum.values():
        if value == number:
            return value
    raise ValueError(f"{number} is not a value of {enum.DESCRIPTOR.name}")
