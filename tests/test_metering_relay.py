"""The relay is never energized without cover, and records every transition."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from p2pep.metering.relay import ContractCover, Demand, Relay, RelayReason, RelayState, decide

covers_st = st.lists(
    st.builds(
        ContractCover,
        contract_id=st.sampled_from(["c1", "c2", "c3", "c4"]),
        power_w=st.integers(0, 5000),
        energy_left_wh=st.integers(0, 500),
        active=st.booleans(),
        paid_up=st.booleans(),
    ),
    max_size=4,
)
demand_st = st.builds(Demand, power_w=st.integers(0, 6000), energy_wh=st.integers(0, 200))


@given(st.lists(st.tuples(demand_st, covers_st, st.booleans()), min_size=1, max_size=30))
def test_never_energized_without_cover(steps: list[tuple[Demand, list[ContractCover], bool]]) -> None:
    relay = Relay(started_at_ms=0)
    for t, (demand, covers, manual_off) in enumerate(steps, start=1):
        relay.set_manual_off(manual_off)
        relay.evaluate(t, demand, covers)
        if relay.energized:
            eligible = [c for c in covers if c.active and c.paid_up and c.energy_left_wh > 0]
            assert eligible and not manual_off
            assert sum(c.power_w for c in eligible) >= demand.power_w
            assert sum(c.energy_left_wh for c in eligible) >= demand.energy_wh
    # the history is consistent: alternating states, times non-decreasing
    prev = RelayState.BLOCKED
    for tr in relay.transitions:
        assert tr.from_state is prev and tr.to_state is not prev
        prev = tr.to_state
    assert prev is relay.state


def test_reasons() -> None:
    d = Demand(power_w=1000, energy_wh=5)
    assert decide(d, []).reason is RelayReason.NO_CONTRACT
    assert decide(d, [ContractCover("a", 2000, 100, active=False)]).reason is RelayReason.NO_CONTRACT
    assert decide(d, [ContractCover("a", 2000, 100, paid_up=False)]).reason is RelayReason.NOT_PAID_UP
    assert decide(d, [ContractCover("a", 600, 100)]).reason is RelayReason.INSUFFICIENT_POWER
    assert decide(d, [ContractCover("a", 2000, 4)]).reason is RelayReason.INSUFFICIENT_ENERGY
    two = decide(d, [ContractCover("b", 600, 100), ContractCover("a", 600, 100)])
    assert two.state is RelayState.ENERGIZED and two.covering == ("a", "b")


def test_transitions_are_recorded_with_reason_and_time() -> None:
    relay = Relay(started_at_ms=100)
    assert relay.state is RelayState.BLOCKED and relay.reason is RelayReason.STARTUP
    cover = [ContractCover("a", 2000, 100)]
    t1 = relay.evaluate(200, Demand(500), cover)
    assert t1 is not None and t1.to_state is RelayState.ENERGIZED and t1.at_ms == 200
    assert relay.evaluate(300, Demand(600), cover) is None
    t2 = relay.block(400, RelayReason.PAYMENT_FAILED, "increment 3 failed")
    assert t2 is not None and t2.reason is RelayReason.PAYMENT_FAILED and relay.since_ms == 400
    relay.set_manual_off(True)
    assert relay.evaluate(500, Demand(100), cover) is None
    assert relay.reason is RelayReason.MANUAL_OFF
    assert [t.at_ms for t in relay.transitions] == [200, 400]


def test_history_is_bounded() -> None:
    relay = Relay(0, history_limit=3)
    cover = [ContractCover("a", 2000, 100)]
    for t in range(10):
        relay.evaluate(t, Demand(100 if t % 2 == 0 else 5000), cover)
    assert len(relay.transitions) == 3 and relay.transitions[-1].at_ms == 9
