"""The meter's relay: when household usage may flow.

Energized only while active, paid-up contracts with energy left cover the next step *and* the
meter's own check holds: after a next step of nominal size (one tick at the source's power),
less than two increments of any contract may be unpaid by its own count (one full increment
while it is being paid; per contract, see :func:`p2pep.metering.request_checks.own_check_blocks`).
The check is judged before the step, as a real relay controller judges it: a tick that comes
late (the event loop was busy) covers more time and imports more than the nominal step, so
unpaid energy can then exceed the bound by that extra (exactly: ``2 * increment - nominal step
+ the step actually taken``, what tests/meter_helpers.py checks), until the next tick blocks. A failed payment blocks it at once until a
contract signed after the failure becomes active (the latch).
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from p2pep.metering.contract_book import ContractBook
from p2pep.metering.relay import Demand, Relay, RelayReason, RelayTransition
from p2pep.metering.request_checks import own_check_blocks
from p2pep.pbconv import now_ms
from services.meter import metrics

log = structlog.get_logger("meter")


class RelayControl:
    def __init__(self, book: ContractBook, changed: Callable[[], None]) -> None:
        self.book = book
        self.changed = changed
        self.relay = Relay(0)
        self.changes = 0
        self.payment_failed_ms: int | None = None  # real time of the failure that latched the relay
        self.payment_failed_detail = ""

    def start(self, sim_ms: int) -> None:
        self.relay = Relay(sim_ms)

    def evaluate(self, sim_ms: int, demand_wh: int) -> RelayTransition | None:
        """Decide for the next step, which would draw ``demand_wh`` (and count demand left waiting)."""
        t = self._decide(sim_ms, demand_wh)
        metrics.DEMAND_UNCOVERED.set(1 if demand_wh > 0 and not self.relay.energized else 0)
        return t

    def _decide(self, sim_ms: int, demand_wh: int) -> RelayTransition | None:
        if self.payment_failed_ms is not None:
            return self._applied(self.relay.block(sim_ms, RelayReason.PAYMENT_FAILED, self.payment_failed_detail))
        why = own_check_blocks(self.book.exposure(), demand_wh)
        if why is not None:
            return self._applied(self.relay.block(sim_ms, RelayReason.NOT_PAID_UP, why))
        # Contracts run on settlement's real clock, demand power on the simulated one:
        # cover is judged by energy (the next step must fit in paid-up contracts).
        return self._applied(self.relay.evaluate(sim_ms, Demand(0, demand_wh), self.book.covers()))

    def block(self, sim_ms: int, reason: RelayReason, detail: str) -> None:
        self._applied(self.relay.block(sim_ms, reason, detail))

    def payment_failed(self, sim_ms: int | None, detail: str) -> None:
        """Block at once; stays blocked until a contract signed after now becomes active."""
        self.payment_failed_ms = now_ms()
        self.payment_failed_detail = detail
        if sim_ms is not None:
            self.block(sim_ms, RelayReason.PAYMENT_FAILED, detail)

    def contract_activated(self, signed_ms: int) -> None:
        """Lift the latch if this contract was signed after the failure."""
        if self.payment_failed_ms is not None and signed_ms >= self.payment_failed_ms:
            log.info("new contract after a failed payment: relay may energize again")
            self.payment_failed_ms = None
            self.payment_failed_detail = ""

    def _applied(self, t: RelayTransition | None) -> RelayTransition | None:
        metrics.RELAY_ENERGIZED.set(1 if self.relay.energized else 0)
        if t is not None:
            self.changes += 1
            metrics.RELAY_TRANSITIONS.labels(t.to_state.value, t.reason.value).inc()
            log.info("relay " + t.to_state.value, reason=t.reason.value, detail=t.detail, sim_ms=t.at_ms,
                     changes=self.changes)
            self.changed()
        return t
