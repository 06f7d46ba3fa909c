"""The meter's relay gate, checked exactly however late its ticks come.

The meter's own check lets the next step flow only if, after a step of the *nominal* size (one
tick at the source's power), less than two increments of any contract would be unpaid by its
own count. A tick that comes late (a busy machine: the event loop ran something else) covers
more simulated time, so it imports more than the nominal step, and two full increments unpaid
is then what the design allows, not a failure. The exact bound is

    unpaid_wh < 2 * increment_wh - nominal step + the largest step actually taken

which :func:`own_check_bound_wh` gives from the steps :func:`record_import_steps` records.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from services.meter.meter import Meter


def record_import_steps(meter: Meter, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on, every tick's import (Wh) as the meter attributes it to its contracts."""
    steps: list[int] = []
    attribute_import = meter.book.attribute_import

    def recording(delta_wh: int) -> dict[str, int]:
        steps.append(delta_wh)
        return attribute_import(delta_wh)

    monkeypatch.setattr(meter.book, "attribute_import", recording)
    return steps


def nominal_step_wh(meter: Meter) -> int:
    assert meter.metering is not None
    return meter.metering.next_step_wh()


def own_check_bound_wh(meter: Meter, increment_wh: int, steps: Sequence[int]) -> int:
    """A contract's unpaid Wh by the meter's own count stays below this (see the module)."""
    nominal = nominal_step_wh(meter)
    return 2 * increment_wh - nominal + max(steps, default=nominal)
