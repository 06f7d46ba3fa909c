"""The meter's relay: household power flows only while contracts cover it.

"If no supplier can supply the requested demand, the meter blocks usage until one is
found." The relay is energized only while the *current* demand is covered by
contracts that are active and paid up:

- at least one eligible contract (active, paid up, energy left > 0), and
- the eligible contracts' contracted power adds up to at least the demand power, and
- their energy left adds up to at least the energy the next metering step needs.

Anything else blocks it. Every change of state is recorded as a
:class:`RelayTransition` with a reason code and the (simulated) time; the service
logs and exposes them. The relay is pure: the service feeds it the demand and the
contract cover it knows and applies the resulting state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


class RelayState(StrEnum):
    ENERGIZED = "energized"
    BLOCKED = "blocked"


class RelayReason(StrEnum):
    COVERED = "COVERED"
    """Eligible contracts cover the demand."""
    NO_CONTRACT = "NO_CONTRACT"
    """No active contract with energy left."""
    NOT_PAID_UP = "NOT_PAID_UP"
    """Active contracts exist but none is paid up (an increment is overdue)."""
    INSUFFICIENT_POWER = "INSUFFICIENT_POWER"
    """Eligible contracts' power is less than the demand."""
    INSUFFICIENT_ENERGY = "INSUFFICIENT_ENERGY"
    """Eligible contracts' energy left is less than the next step needs."""
    PAYMENT_FAILED = "PAYMENT_FAILED"
    """A payment for an increment failed or timed out (blocked at once)."""
    MANUAL_OFF = "MANUAL_OFF"
    """Blocked by the household or the operator."""
    STARTUP = "STARTUP"
    """Initial state: a meter starts blocked."""


@dataclass(frozen=True)
class ContractCover:
    """What one contract offers the consumer right now.

    ``power_w`` is the contracted power (e.g. ``energy_wh`` spread over the contract's
    duration, see :func:`p2pep.settling.contracts.ContractTerms.average_power_w`);
    ``paid_up`` comes from the increments gate
    (:meth:`p2pep.settling.increments.DeliveryLedger.may_deliver`)."""

    contract_id: str
    power_w: int
    energy_left_wh: int
    active: bool = True
    paid_up: bool = True

    @property
    def eligible(self) -> bool:
        return self.active and self.paid_up and self.energy_left_wh > 0


@dataclass(frozen=True)
class Demand:
    """The household's current demand: power now, and energy for the next step."""

    power_w: int
    energy_wh: int = 0


@dataclass(frozen=True)
class RelayDecision:
    state: RelayState
    reason: RelayReason
    detail: str
    covering: tuple[str, ...]
    """Contract ids of the eligible contracts that cover the demand."""


@dataclass(frozen=True)
class RelayTransition:
    at_ms: int
    from_state: RelayState
    to_state: RelayState
    reason: RelayReason
    detail: str


def decide(demand: Demand, covers: Sequence[ContractCover], manual_off: bool = False) -> RelayDecision:
    """Whether the relay may be energized for ``demand`` given ``covers`` (pure)."""
    if manual_off:
        return RelayDecision(RelayState.BLOCKED, RelayReason.MANUAL_OFF, "switched off", ())
    active = [c for c in covers if c.active and c.energy_left_wh > 0]
    if not active:
        return RelayDecision(RelayState.BLOCKED, RelayReason.NO_CONTRACT, "no active contract with energy left", ())
    eligible = [c for c in active if c.paid_up]
    if not eligible:
        ids = ", ".join(sorted(c.contract_id for c in active))
        return RelayDecision(RelayState.BLOCKED, RelayReason.NOT_PAID_UP, f"contracts not paid up: {ids}", ())
    power = sum(c.power_w for c in eligible)
    energy = sum(c.energy_left_wh for c in eligible)
    ids_t = tuple(sorted(c.contract_id for c in eligible))
    if power < demand.power_w:
        return RelayDecision(
            RelayState.BLOCKED,
            RelayReason.INSUFFICIENT_POWER,
            f"demand {demand.power_w} W > contracted {power} W",
            (),
        )
    if energy < demand.energy_wh:
        return RelayDecision(
            RelayState.BLOCKED,
            RelayReason.INSUFFICIENT_ENERGY,
            f"next step needs {demand.energy_wh} Wh > {energy} Wh left",
            (),
        )
    return RelayDecision(
        RelayState.ENERGIZED,
        RelayReason.COVERED,
        f"{demand.power_w} W covered by {power} W from {len(eligible)} contract(s)",
        ids_t,
    )


class Relay:
    """The relay's state and its history of transitions (starts blocked)."""

    def __init__(self, started_at_ms: int, history_limit: int = 1000) -> None:
        self._state = RelayState.BLOCKED
        self._reason = RelayReason.STARTUP
        self._since_ms = started_at_ms
        self._limit = history_limit
        self._transitions: list[RelayTransition] = []
        self._manual_off = False

    @property
    def state(self) -> RelayState:
        return self._state

    @property
    def energized(self) -> bool:
        return self._state is RelayState.ENERGIZED

    @property
    def reason(self) -> RelayReason:
        return self._reason

    @property
    def since_ms(self) -> int:
        return self._since_ms

    @property
    def transitions(self) -> tuple[RelayTransition, ...]:
        """Recent transitions, oldest first (at most ``history_limit``)."""
        return tuple(self._transitions)

    def set_manual_off(self, off: bool) -> None:
        """Household/operator switch; takes effect at the next :meth:`evaluate`."""
        self._manual_off = off

    def evaluate(
        self, now_ms: int, demand: Demand, covers: Sequence[ContractCover]
    ) -> RelayTransition | None:
        """Apply :func:`decide`; returns the transition if the state changed."""
        decision = decide(demand, covers, self._manual_off)
        return self._apply(now_ms, decision.state, decision.reason, decision.detail)

    def block(self, now_ms: int, reason: RelayReason, detail: str) -> RelayTransition | None:
        """Block at once (e.g. a payment failed) without waiting for the next evaluation."""
        return self._apply(now_ms, RelayState.BLOCKED, reason, detail)

    def _apply(
        self, now_ms: int, state: RelayState, reason: RelayReason, detail: str
    ) -> RelayTransition | None:
        if state is self._state:
            self._reason = reason
            return None
        transition = RelayTransition(now_ms, self._state, state, reason, detail)
        self._state, self._reason, self._since_ms = state, reason, now_ms
        self._transitions.append(transition)
        if len(self._transitions) > self._limit:
            del self._transitions[: len(self._transitions) - self._limit]
        return transition
