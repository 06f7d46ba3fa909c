"""Increments: amounts, rounding bound, exact sums, early ends, the unpaid gate."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pep.settling.increments import (
    DeliveryLedger,
    IncrementClaimError,
    IncrementError,
    amount_msat,
    check_increment_claim,
    cumulative_msat,
    increment_amount_msat,
    may_deliver,
)

prices = st.integers(0, 10**9)  # msat per kWh (up to 1,000 sat per Wh)


@given(energy=st.integers(1, 20_000), inc=st.integers(1, 500), price=prices)
def test_increment_amounts_sum_exactly_and_stay_within_one_msat(energy: int, inc: int, price: int) -> None:
    n = -(-energy // inc)
    amounts = [increment_amount_msat(k, inc, energy, price) for k in range(1, n + 1)]
    assert sum(amounts) == energy * price // 1000
    exact_total = Fraction(energy * price, 1000)
    assert 0 <= exact_total - sum(amounts) < 1  # never above exact, less than 1 msat below
    for k, a in enumerate(amounts, start=1):
        wh = min(k * inc, energy) - (k - 1) * inc
        assert abs(a - Fraction(wh * price, 1000)) < 1


def test_worked_example() -> None:
    # 10 Wh at 123_457 msat/kWh = 1234.57 msat exact
    assert [increment_amount_msat(k, 10, 30, 123_457) for k in (1, 2, 3)] == [1234, 1235, 1234]
    assert cumulative_msat(30, 123_457) == 3703
    assert amount_msat(30, 37, 123_457) == cumulative_msat(37, 123_457) - 3703
    with pytest.raises(IncrementError):
        increment_amount_msat(4, 10, 30, 1)


def ledger(energy: int = 100, inc: int = 10, price: int = 200_000, **kw: int) -> DeliveryLedger:
    return DeliveryLedger("ct", energy, inc, price, **kw)


def test_delivery_needs_both_sides_and_is_capped() -> None:
    led = ledger()
    led.add_consumer_wh(30)
    assert led.delivered_wh == 0  # supplier exported nothing yet
    led.add_supplier_wh(25)
    assert led.delivered_wh == 25 and led.unpaid_wh == 25
    led.add_supplier_wh(500)
    led.add_consumer_wh(500)
    assert led.delivered_wh == 100 and led.energy_left_wh == 0
    assert led.consumer_room_wh == 0 and led.supplier_room_wh == 0


def pay_all_due(led: DeliveryLedger) -> None:
    while (due := led.next_due()) is not None:
        assert led.record_payment(due.number, due.amount_msat, f"h{due.number}")


def test_full_contract_pays_exactly() -> None:
    led = ledger(energy=95, inc=10, price=123_457)
    for _ in range(19):
        led.add_consumer_wh(5)
        led.add_supplier_wh(5)
        pay_all_due(led)
    assert led.increments_paid == 10 and led.paid[-1].to_wh == 95 and led.paid[-1].to_wh - led.paid[-1].from_wh == 5
    assert led.paid_msat == 95 * 123_457 // 1000 and led.settled
    assert led.next_due() is None and not led.may_deliver()


def test_early_end_pays_only_what_was_delivered() -> None:
    led = ledger(energy=100, inc=10, price=250_000)
    led.add_consumer_wh(37)
    led.add_supplier_wh(34)
    pay_all_due(led)
    assert led.increments_paid == 3 and led.paid_wh == 30
    final = led.close()
    assert final is not None and final.final and (final.from_wh, final.to_wh, final.number) == (30, 34, 4)
    assert final.amount_msat == 34 * 250 - 30 * 250
    assert "contract=ct" in final.memo() and "increment=4" in final.memo()
    led.record_payment(4, final.amount_msat, "h4")
    assert led.paid_msat == 34 * 250 and led.settled and led.next_due() is None
    with pytest.raises(IncrementError, match="closed"):
        led.add_consumer_wh(1)
    led.add_consumer_wh(0)  # nothing flows: fine


def test_closing_on_a_boundary_has_no_final_increment() -> None:
    led = ledger()
    led.add_consumer_wh(20)
    led.add_supplier_wh(20)
    pay_all_due(led)
    assert led.close() is None and led.settled


def test_payments_are_in_order_idempotent_and_exact() -> None:
    led = ledger(price=100_000)
    led.add_consumer_wh(25)
    led.add_supplier_wh(25)
    with pytest.raises(IncrementError, match="not due"):
        led.record_payment(2, 1000, "x")
    with pytest.raises(IncrementError, match="not 999"):
        led.record_payment(1, 999, "x")
    assert led.record_payment(1, 1000, "h1")
    assert not led.record_payment(1, 1000, "h1")  # replayed after a restart: no-op
    with pytest.raises(IncrementError, match="already paid"):
        led.record_payment(1, 1000, "other-hash")
    assert led.record_payment(2, 1000, "h2")
    with pytest.raises(IncrementError, match="not due"):
        led.record_payment(3, 1000, "h3")  # only 25 Wh delivered
    assert led.paid_msat == 2000 and led.increments_paid == 2


def test_gate_blocks_at_one_unpaid_increment() -> None:
    led = ledger(inc=10)
    led.add_supplier_wh(1000)
    led.add_consumer_wh(9)
    assert led.may_deliver()
    led.add_consumer_wh(1)  # increment 1 complete and unpaid
    assert not led.may_deliver()
    pay_all_due(led)
    assert led.may_deliver()
    wide = ledger(inc=10, max_unpaid_wh=20)
    wide.add_supplier_wh(1000)
    wide.add_consumer_wh(15)
    assert wide.may_deliver()
    assert may_deliver(19, 10, 10) and not may_deliver(20, 10, 10)


@given(
    energy=st.integers(1, 3000),
    inc=st.integers(1, 100),
    price=prices,
    steps=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40), st.booleans()), max_size=80),
    end_early=st.booleans(),
)
@settings(max_examples=150)
def test_ledger_property(
    energy: int, inc: int, price: int, steps: list[tuple[int, int, bool]], end_early: bool
) -> None:
    """Delivery that respects the gate never leaves more than one increment unpaid,
    and at the end exactly the delivered Wh are paid, to the floored msat."""
    led = DeliveryLedger("ct", energy, inc, price)
    for c, s, pay in steps:
        if led.may_deliver():
            step = min(c, inc)  # the service consults the gate at least once per increment
            led.add_consumer_wh(step)
            led.add_supplier_wh(min(s, inc))
        assert led.unpaid_wh < 2 * inc  # at most one completed increment unpaid
        if pay:
            pay_all_due(led)
            assert led.unpaid_wh < inc
        assert led.delivered_wh <= energy
    if end_early:
        led.close()
    pay_all_due(led)
    if end_early or led.delivered_wh == energy:
        assert led.unpaid_wh == 0 and led.settled
    assert led.paid_msat == cumulative_msat(led.paid_wh, price)
    assert all(abs(p.amount_msat - Fraction((p.to_wh - p.from_wh) * price, 1000)) < 1 for p in led.paid)


def claim(**changes: object) -> int:
    args: dict[str, object] = dict(
        number=3, from_wh=20, to_wh=30, amount_msat_=1234, energy_wh=95, increment_wh=10,
        price_msat_per_kwh=123_457, last_paid_number=2, last_paid_to_wh=20,
    )
    args.update(changes)
    return check_increment_claim(**args)  # type: ignore[arg-type]


def test_meter_checks_invoice_and_payment_requests() -> None:
    assert claim() == amount_msat(20, 30, 123_457) == 1234
    assert claim(amount_msat_=None) == 1234
    assert claim(number=10, from_wh=90, to_wh=95, amount_msat_=None, last_paid_number=9, last_paid_to_wh=90) == 617
    assert claim(to_wh=27, amount_msat_=None, contract_ended=True) == amount_msat(20, 27, 123_457)
    for changes, field in [
        ({"number": 4}, "increment"),  # ahead of what was paid
        ({"number": 2}, "increment"),  # already paid
        ({"from_wh": 10}, "from_wh"),
        ({"to_wh": 31}, "to_wh"),
        ({"to_wh": 27, "amount_msat_": None}, "to_wh"),  # partial while the contract runs
        ({"observed_wh": 29}, "to_wh"),  # more than this meter saw
        ({"amount_msat_": 1235}, "amount_msat"),
    ]:
        with pytest.raises(IncrementClaimError) as info:
            claim(**changes)
        assert info.value.field == field


def test_ledger_increments_pass_the_meter_check() -> None:
    led = ledger(energy=95, inc=10, price=123_457)
    led.add_consumer_wh(62)
    led.add_supplier_wh(62)
    last_n = last_to = 0
    for due in iter(led.next_due, None):
        assert claim(number=due.number, from_wh=due.from_wh, to_wh=due.to_wh, amount_msat_=due.amount_msat,
                     last_paid_number=last_n, last_paid_to_wh=last_to, observed_wh=62) == due.amount_msat
        led.record_payment(due.number, due.amount_msat, "h")
        last_n, last_to = due.number, due.to_wh
    final = led.close()
    assert final is not None
    claim(number=final.number, from_wh=final.from_wh, to_wh=final.to_wh, amount_msat_=final.amount_msat,
          last_paid_number=last_n, last_paid_to_wh=last_to, contract_ended=True)
