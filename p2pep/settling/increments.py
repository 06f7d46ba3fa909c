"""Delivery accounting and payment increments of one contract.

**Delivered energy.** The consumer's import and the supplier's export are each
attributed to contracts (:mod:`p2pep.settling.allocation`). Energy counts as
delivered under a contract only when both sides show it, and never beyond the
contracted energy::

    delivered_wh = min(consumer_attributed_wh, supplier_attributed_wh, energy_wh)

Both inputs are cumulative and never decrease, so neither does ``delivered_wh``: a
supplier that stops exporting stops delivery, whatever the consumer imports.

**Increments.** Increment ``k`` (1-based) covers cumulative Wh
``((k-1)·inc, min(k·inc, energy_wh)]``. It is due once delivery reaches its end.

**Rounding rule.** With ``price`` in msat per kWh, the exact value of ``w`` Wh is
``w·price/1000`` msat. Amounts are differences of the *floored cumulative* value::

    cum_msat(w)   = floor(w · price / 1000)
    amount(a, b)  = cum_msat(b) - cum_msat(a)       # for Wh (a, b]

Every amount is within 1 msat of its exact value (strictly: ``|amount - exact| < 1``),
and the amounts of consecutive increments telescope, so whatever has been paid for
``w`` Wh is exactly ``cum_msat(w)``: at most 1 msat below the exact total, over the
whole contract, never above it. Neither side gains more than 1 msat per increment,
and the errors never accumulate.

**Early end.** When a contract ends before all increments are complete, a final
increment covers the delivered Wh not yet paid (``amount(paid_wh, delivered_wh)``):
only what was delivered is paid.

**Gate.** Delivery may continue only while the supplier is owed less than
``max_unpaid_wh`` (default: one increment). See :meth:`DeliveryLedger.may_deliver`.
"""

from __future__ import annotations

from dataclasses import dataclass


class IncrementError(ValueError):
    """An accounting step that is not allowed (paying out of order, a wrong amount...)."""


def cumulative_msat(wh: int, price_msat_per_kwh: int) -> int:
    """Value of ``wh`` Wh at ``price_msat_per_kwh``, rounded down to whole msat."""
    if wh < 0 or price_msat_per_kwh < 0:
        raise IncrementError("energy and price must not be negative")
    return wh * price_msat_per_kwh // 1000


def amount_msat(from_wh: int, to_wh: int, price_msat_per_kwh: int) -> int:
    """Amount for the Wh in ``(from_wh, to_wh]`` under the rounding rule above."""
    if to_wh < from_wh:
        raise IncrementError("to_wh must not be below from_wh")
    return cumulative_msat(to_wh, price_msat_per_kwh) - cumulative_msat(from_wh, price_msat_per_kwh)


def increment_bounds(k: int, increment_wh: int, energy_wh: int) -> tuple[int, int]:
    """Cumulative Wh ``(from, to]`` covered by full increment ``k`` (1-based)."""
    if k < 1 or (k - 1) * increment_wh >= energy_wh:
        raise IncrementError(f"increment {k} is outside the contract")
    return (k - 1) * increment_wh, min(k * increment_wh, energy_wh)


def increment_amount_msat(k: int, increment_wh: int, energy_wh: int, price_msat_per_kwh: int) -> int:
    """``amount_k = floor(cum_k·p/1000) - floor(cum_{k-1}·p/1000)``."""
    a, b = increment_bounds(k, increment_wh, energy_wh)
    return amount_msat(a, b, price_msat_per_kwh)


class IncrementClaimError(IncrementError):
    """An invoice or payment request that does not match the contract's accounting;
    ``field`` names the request field that is wrong."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def check_increment_claim(
    *,
    number: int,
    from_wh: int,
    to_wh: int,
    amount_msat_: int | None,
    energy_wh: int,
    increment_wh: int,
    price_msat_per_kwh: int,
    last_paid_number: int,
    last_paid_to_wh: int,
    contract_ended: bool = False,
    observed_wh: int | None = None,
) -> int:
    """A meter's own check of a request to invoice or pay increment ``number``
    (CreateInvoice / PayInvoice); returns the amount in msat its accounting gives.

    The increment must be the next one after the last paid (never ahead), start where
    the last paid one ended, cover a whole increment (or the contract's last Wh; a
    shorter final one only once the contract has ended), not exceed what the meter
    itself observed (``observed_wh``, if given), and ``amount_msat_`` (if given) must
    be exactly the rounding rule's amount. Raises :class:`IncrementClaimError`."""
    if number != last_paid_number + 1:
        raise IncrementClaimError(
            f"increment {number} is not the next one to pay ({last_paid_number + 1})", "increment"
        )
    if from_wh != last_paid_to_wh:
        raise IncrementClaimError(f"from_wh {from_wh} must be {last_paid_to_wh}", "from_wh")
    full_to = min(from_wh + increment_wh, energy_wh)
    if not from_wh < to_wh <= full_to:
        raise IncrementClaimError(f"to_wh {to_wh} must be in ({from_wh}, {full_to}]", "to_wh")
    if to_wh < full_to and not contract_ended:
        raise IncrementClaimError(
            f"to_wh {to_wh} is a partial increment but the contract has not ended", "to_wh"
        )
    if observed_wh is not None and to_wh > observed_wh:
        raise IncrementClaimError(f"to_wh {to_wh} is beyond the {observed_wh} Wh observed here", "to_wh")
    expected = amount_msat(from_wh, to_wh, price_msat_per_kwh)
    if amount_msat_ is not None and amount_msat_ != expected:
        raise IncrementClaimError(f"amount_msat must be {expected}, not {amount_msat_}", "amount_msat")
    return expected


@dataclass(frozen=True)
class IncrementDue:
    """An increment to invoice and pay."""

    contract_id: str
    number: int
    from_wh: int
    to_wh: int
    amount_msat: int
    final: bool
    """True for the last increment of the contract (full or partial)."""

    @property
    def wh(self) -> int:
        return self.to_wh - self.from_wh

    def memo(self) -> str:
        """Invoice memo: carries the contract id and increment number."""
        return f"p2pep contract={self.contract_id} increment={self.number}"


@dataclass(frozen=True)
class PaidIncrement:
    number: int
    from_wh: int
    to_wh: int
    amount_msat: int
    payment_hash: str


class DeliveryLedger:
    """Delivery and payments of one contract (pure state; the service persists it).

    Increments are paid strictly in order. Recording the payment of an increment that
    is already recorded with the same payment hash is a no-op (returns False), so a
    restarted settlement can replay its log without paying anything twice."""

    def __init__(
        self,
        contract_id: str,
        energy_wh: int,
        increment_wh: int,
        price_msat_per_kwh: int,
        *,
        max_unpaid_wh: int | None = None,
    ) -> None:
        if energy_wh <= 0 or increment_wh <= 0 or price_msat_per_kwh < 0:
            raise IncrementError("energy_wh and increment_wh must be positive, price not negative")
        self.contract_id = contract_id
        self.energy_wh = energy_wh
        self.increment_wh = increment_wh
        self.price_msat_per_kwh = price_msat_per_kwh
        self.max_unpaid_wh = increment_wh if max_unpaid_wh is None else max_unpaid_wh
        if self.max_unpaid_wh <= 0:
            raise IncrementError("max_unpaid_wh must be positive")
        self._consumer_wh = 0
        self._supplier_wh = 0
        self._paid: list[PaidIncrement] = []
        self._closed_at_wh: int | None = None

    # -- delivery -------------------------------------------------------------------

    @property
    def consumer_wh(self) -> int:
        """Consumer import attributed to this contract (cumulative)."""
        return self._consumer_wh

    @property
    def supplier_wh(self) -> int:
        """Supplier export attributed to this contract (cumulative)."""
        return self._supplier_wh

    @property
    def delivered_wh(self) -> int:
        if self._closed_at_wh is not None:
            return self._closed_at_wh
        return min(self._consumer_wh, self._supplier_wh, self.energy_wh)

    @property
    def energy_left_wh(self) -> int:
        return self.energy_wh - self.delivered_wh

    @property
    def closed(self) -> bool:
        return self._closed_at_wh is not None

    @property
    def consumer_room_wh(self) -> int:
        """How much more consumer import this contract can take (allocation cap)."""
        return 0 if self.closed else max(0, self.energy_wh - self._consumer_wh)

    @property
    def supplier_room_wh(self) -> int:
        """How much more supplier export this contract can take (allocation cap)."""
        return 0 if self.closed else max(0, self.energy_wh - self._supplier_wh)

    def add_consumer_wh(self, wh: int) -> None:
        self._add("consumer", wh)

    def add_supplier_wh(self, wh: int) -> None:
        self._add("supplier", wh)

    def _add(self, side: str, wh: int) -> None:
        if wh < 0:
            raise IncrementError("attributed energy must not be negative")
        if self._closed_at_wh is not None:
            if wh:
                raise IncrementError(f"contract {self.contract_id} is closed to further delivery")
            return
        if side == "consumer":
            self._consumer_wh += wh
        else:
            self._supplier_wh += wh

    # -- payments -------------------------------------------------------------------

    @property
    def paid(self) -> tuple[PaidIncrement, ...]:
        return tuple(self._paid)

    @property
    def increments_paid(self) -> int:
        return len(self._paid)

    @property
    def paid_wh(self) -> int:
        return self._paid[-1].to_wh if self._paid else 0

    @property
    def paid_msat(self) -> int:
        return sum(p.amount_msat for p in self._paid)

    @property
    def unpaid_wh(self) -> int:
        return self.delivered_wh - self.paid_wh

    @property
    def settled(self) -> bool:
        """Everything delivered is paid and nothing more can be delivered."""
        return self.unpaid_wh == 0 and (self.closed or self.delivered_wh == self.energy_wh)

    def next_due(self) -> IncrementDue | None:
        """The next increment to pay, if delivery has completed it (or the contract was
        closed with delivered Wh unpaid)."""
        frm = self.paid_wh
        number = len(self._paid) + 1
        if self._closed_at_wh is not None:
            to = min(frm + self.increment_wh, self._closed_at_wh)
            if to <= frm:
                return None
            final = to == self._closed_at_wh
        else:
            if frm >= self.energy_wh:
                return None
            to = min(frm + self.increment_wh, self.energy_wh)
            if self.delivered_wh < to:
                return None
            final = to == self.energy_wh
        return IncrementDue(
            self.contract_id, number, frm, to, amount_msat(frm, to, self.price_msat_per_kwh), final
        )

    def record_payment(self, number: int, amount_msat_: int, payment_hash: str) -> bool:
        """Record that increment ``number`` was paid (preimage checked by the caller).

        Returns True if recorded now, False if it was already recorded with the same
        payment hash. Raises :class:`IncrementError` for anything else: an increment
        not due, out of order, or a wrong amount."""
        if 1 <= number <= len(self._paid):
            done = self._paid[number - 1]
            if done.payment_hash == payment_hash and done.amount_msat == amount_msat_:
                return False
            raise IncrementError(f"increment {number} of {self.contract_id} was already paid differently")
        due = self.next_due()
        if due is None or due.number != number:
            raise IncrementError(f"increment {number} of {self.contract_id} is not due")
        if amount_msat_ != due.amount_msat:
            raise IncrementError(
                f"increment {number} of {self.contract_id} is {due.amount_msat} msat, not {amount_msat_}"
            )
        self._paid.append(PaidIncrement(number, due.from_wh, due.to_wh, due.amount_msat, payment_hash))
        return True

    def close(self) -> IncrementDue | None:
        """Stop delivery at what has been delivered (contract ended); returns the final,
        possibly partial, increment still to pay, if any."""
        if self._closed_at_wh is None:
            self._closed_at_wh = self.delivered_wh
        return self.next_due()

    # -- gate -----------------------------------------------------------------------

    def may_deliver(self) -> bool:
        """The "never more than one increment unpaid" gate: delivery may continue iff the
        contract is open, has energy left and the supplier is owed less than
        ``max_unpaid_wh`` (default one increment).

        With the default, the consumer's relay blocks as soon as a completed increment
        is unpaid, and the supplier is never owed more than one increment plus what
        flows before the gate is consulted again (one metering step). Pass
        ``max_unpaid_wh=2*increment_wh`` to let the next increment flow while the last
        one is being paid, at twice the exposure."""
        return (
            self._closed_at_wh is None
            and self.delivered_wh < self.energy_wh
            and self.unpaid_wh < self.max_unpaid_wh
        )


def may_deliver(delivered_wh: int, paid_wh: int, max_unpaid_wh: int) -> bool:
    """Stateless form of the gate: the supplier is owed less than ``max_unpaid_wh``."""
    return delivered_wh - paid_wh < max_unpaid_wh
