"""Numeric bounds shared by every edge that takes numbers from outside (pure).

Every integer P2PEP stores is a signed 64-bit integer (SQLite's INTEGER, protobuf's int64,
lnd's msat amounts), and every time it holds is ms since the epoch that converts back to a
``google.protobuf.Timestamp`` (years 1..9999). Input beyond these bounds is refused at the
edge where it arrives (as INVALID_ARGUMENT, a MALFORMED reading, a bad line...), never
discovered later as an overflow deep inside a store or a conversion.
"""

from __future__ import annotations

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
MIN_TS_SECONDS = -62_135_596_800  # 0001-01-01T00:00:00Z
MAX_TS_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
MAX_MS = MAX_TS_SECONDS * 1000 + 999
"""The latest time P2PEP accepts, in ms since the epoch (the end of year 9999)."""
MAX_DURATION_SECONDS = 315_576_000_000  # 10,000 years, protobuf's bound for Duration
