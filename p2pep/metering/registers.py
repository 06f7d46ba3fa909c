"""Cumulative import/export registers of a meter.

Registers count whole Wh, like a real meter's display, but the energy behind them
arrives in W·ms (see :mod:`p2pep.metering.profiles`). The sub-Wh remainder is
carried, never dropped, so after any sequence of ticks
``register_wh * 3_600_000 + remainder_wms`` equals the energy accumulated, exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pep.metering.profiles import WMS_PER_WH
from p2pep.metering.readings import Reading


class RegisterError(ValueError):
    """Energy that cannot be accumulated (negative) or a reading out of time order."""


@dataclass(frozen=True)
class RegisterSnapshot:
    """Everything a meter must persist to resume its registers after a restart
    (resuming ``seq`` is what keeps settlement from seeing a replay)."""

    meter_id: str
    seq: int = 0
    import_wh: int = 0
    export_wh: int = 0
    import_remainder_wms: int = 0
    export_remainder_wms: int = 0
    last_timestamp_ms: int | None = None


class Registers:
    """Cumulative registers with a monotonic reading sequence number."""

    def __init__(self, snapshot: RegisterSnapshot) -> None:
        for name in ("seq", "import_wh", "export_wh"):
            if getattr(snapshot, name) < 0:
                raise RegisterError(f"{name} must not be negative")
        for name in ("import_remainder_wms", "export_remainder_wms"):
            if not 0 <= getattr(snapshot, name) < WMS_PER_WH:
                raise RegisterError(f"{name} must be in [0, {WMS_PER_WH})")
        self._meter_id = snapshot.meter_id
        self._seq = snapshot.seq
        self._import_wh = snapshot.import_wh
        self._export_wh = snapshot.export_wh
        self._import_rem = snapshot.import_remainder_wms
        self._export_rem = snapshot.export_remainder_wms
        self._last_ts = snapshot.last_timestamp_ms

    @classmethod
    def new(cls, meter_id: str) -> Registers:
        return cls(RegisterSnapshot(meter_id))

    @property
    def meter_id(self) -> str:
        return self._meter_id

    @property
    def seq(self) -> int:
        """Sequence number of the last reading taken (0 before the first)."""
        return self._seq

    @property
    def import_wh(self) -> int:
        return self._import_wh

    @property
    def export_wh(self) -> int:
        return self._export_wh

    @property
    def import_total_wms(self) -> int:
        """All imported energy, including the part not yet a whole Wh."""
        return self._import_wh * WMS_PER_WH + self._import_rem

    @property
    def export_total_wms(self) -> int:
        return self._export_wh * WMS_PER_WH + self._export_rem

    def accumulate(self, import_wms: int, export_wms: int) -> tuple[int, int]:
        """Add energy (W·ms) to the registers; returns the whole Wh each register advanced."""
        if import_wms < 0 or export_wms < 0:
            raise RegisterError("energy added to a register must not be negative")
        di, self._import_rem = divmod(self._import_rem + import_wms, WMS_PER_WH)
        de, self._export_rem = divmod(self._export_rem + export_wms, WMS_PER_WH)
        self._import_wh += di
        self._export_wh += de
        return di, de

    def read(self, timestamp_ms: int) -> Reading:
        """Take the next reading (``seq`` + 1). Timestamps must not go backwards."""
        if self._last_ts is not None and timestamp_ms < self._last_ts:
            raise RegisterError(
                f"timestamp_ms {timestamp_ms} is before the previous reading's {self._last_ts}"
            )
        self._seq += 1
        self._last_ts = timestamp_ms
        return Reading(self._meter_id, self._seq, self._import_wh, self._export_wh, timestamp_ms)

    def snapshot(self) -> RegisterSnapshot:
        return RegisterSnapshot(
            self._meter_id,
            self._seq,
            self._import_wh,
            self._export_wh,
            self._import_rem,
            self._export_rem,
            self._last_ts,
        )
