"""Order sizing and ids (pure).

At each window boundary (simulated time) a meter asks the market for what its
source says it will need, or offer, over the next window, minus what its open
contracts already cover. Orders expire when the window has passed in real time.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from p2pep.metering.profiles import WMS_PER_WH


def window_index(sim_ms: int, window_ms: int) -> int:
    """Number of the window holding ``sim_ms`` (windows aligned on the unix epoch)."""
    return sim_ms // window_ms


def wh_ceil(wms: int) -> int:
    return -(-wms // WMS_PER_WH)


def wh_floor(wms: int) -> int:
    return wms // WMS_PER_WH


def demand_wh(expected_import_wms: int, contracted_left_wh: int) -> int:
    """Energy a consumer requests: its expected import over the window (rounded up,
    so the relay is not short by a fraction of a Wh) minus the energy left in its
    open contracts; 0 if those cover it."""
    return max(0, wh_ceil(expected_import_wms) - contracted_left_wh)


def supply_wh(expected_export_wms: int, committed_left_wh: int) -> int:
    """Energy a producer offers: its expected export over the window (rounded down:
    never offer what it may not produce) minus what it still owes under open contracts."""
    return max(0, wh_floor(expected_export_wms) - committed_left_wh)


def order_id(meter_id: str, window: int, kind: str, suffix: str | None = None) -> str:
    """Unique, recognisable order id: ``<meter>:w<window>:<kind>:<random>``."""
    return f"{meter_id}:w{window}:{kind}:{suffix or secrets.token_hex(3)}"


@dataclass(frozen=True)
class PlacedOrder:
    """An order this meter placed (kept so SignContract can check contracts against them)."""

    order_id: str
    side: str
    """``supply`` or ``demand``."""
    energy_wh: int
    placed_ms: int
    """Real unix ms."""
    expiry_ms: int


def ordered_wh(orders: list[PlacedOrder], side: str, since_ms: int) -> int:
    """Energy asked for on ``side`` by orders placed since ``since_ms`` (real ms)."""
    return sum(o.energy_wh for o in orders if o.side == side and o.placed_ms >= since_ms)
