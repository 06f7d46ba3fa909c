"""Conversions between plain values and protobuf fields, written once for every service.

Times are integers, milliseconds since the Unix epoch, everywhere inside P2PEP; they meet
``google.protobuf.Timestamp`` only at the gRPC edge, through :func:`ts_ms` and :func:`ms_ts`.
Wall-clock "now" is :func:`now_ms` (a meter's *simulated* clock is another thing: see
:mod:`p2pep.metering.clock`).

Proto enums are open integers on the wire but typed per enum by mypy-protobuf; a plain
``int`` from the domain becomes a field value through :func:`enum_value`, which refuses a
number the enum does not define.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, TypeVar

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

if TYPE_CHECKING:  # generic only in the type stubs
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper

V = TypeVar("V", bound=int)


def now_ms() -> int:
    """Wall-clock time, ms since the epoch."""
    return time.time_ns() // 1_000_000


def ts_ms(ts: Timestamp) -> int:
    """A Timestamp as ms since the epoch (sub-millisecond nanos dropped)."""
    return ts.seconds * 1000 + ts.nanos // 1_000_000


def ts_ms_or_none(ts: Timestamp) -> int | None:
    """:func:`ts_ms`, or None for an unset (all-zero) Timestamp."""
    return None if ts.seconds == 0 and ts.nanos == 0 else ts_ms(ts)


def duration_ms(d: Duration) -> int:
    """A Duration as whole milliseconds."""
    return d.seconds * 1000 + d.nanos // 1_000_000


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
