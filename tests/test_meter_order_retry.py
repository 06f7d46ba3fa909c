"""A meter on a lossy link keeps sending its order while the matcher is unreachable
(services/meter/trader.py): until the order expires, not for a few seconds.

Before: three attempts, 0.5-1 s apart. A GPRS link whose connection stalls for 5 s (or is
reset) refused the consumer's demand for the whole window, and the household had no
energy for 15 simulated minutes (scenarios/lossy.toml). The matcher here is a fake stub:
the first calls fail as an unreachable peer does, then it answers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

import services.meter.trader as trader_mod
from p2pep.metering.contract_book import ContractBook
from p2pep.pbconv import now_ms
from p2pep.servicekit.supervise import Backoff
from p2pep.settings.meter import MeterSettings
from p2pep.v1 import matcher_pb2
from services.meter.store import MeterStore
from services.meter.trader import Trader


class Unreachable(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "failed to connect to all addresses")


class FlakyMatcher:
    """Fails the first ``failures`` demands (UNAVAILABLE, then DEADLINE_EXCEEDED), then rests them."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[tuple[str, float | None]] = []

    async def SubmitDemand(self, req: matcher_pb2.SubmitOrderRequest, timeout: float | None = None,
                           **_: Any) -> matcher_pb2.SubmitOrderResponse:
        self.calls.append((req.order.order_id, timeout))
        if len(self.calls) <= self.failures:
            raise Unreachable(grpc.StatusCode.UNAVAILABLE if len(self.calls) % 2 else grpc.StatusCode.DEADLINE_EXCEEDED)
        return matcher_pb2.SubmitOrderResponse(status=matcher_pb2.ORDER_STATUS_RESTING, order=req.order)


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    s = await MeterStore.open(str(tmp_path / "meter.db"), "meter-3")
    yield s
    await s.close()


def consumer(matcher: FlakyMatcher, store: MeterStore) -> Trader:
    settings = MeterSettings(meter_id="meter-3", role="consumer", settlement_target="127.0.0.1:1",
                             price_msat_per_kwh=350_000, accel=15, window_s=900)
    return Trader(settings, store, ContractBook(), matcher, lambda t0, t1: (500 * 3_600_000, 0))  # type: ignore[arg-type]


async def test_an_order_is_sent_again_until_the_matcher_answers(store: MeterStore,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trader_mod, "ORDER_RETRY", Backoff(0.01, 0.02))
    matcher = FlakyMatcher(failures=8)  # far more than the old three attempts
    t = consumer(matcher, store)
    plan = await t.place_window(1, 0, 900_000)
    assert plan.demand_wh > 0
    ids = {oid for oid, _ in matcher.calls}
    assert len(matcher.calls) == 9 and len(ids) == 1  # the same order, sent again
    assert t.resting == ids
    assert [o.order_id for o in await store.orders()] == list(ids)
    # each attempt waits no longer than the order lives (60 real s: 15 simulated minutes at 15x)
    assert all(timeout is not None and 1.0 <= timeout <= 10.0 for _, timeout in matcher.calls)


async def test_an_order_that_expired_unsent_is_given_up(store: MeterStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trader_mod, "ORDER_RETRY", Backoff(0.01, 0.02))
    matcher = FlakyMatcher(failures=10**9)
    t = consumer(matcher, store)
    clock = {"now": now_ms()}
    start = clock["now"]

    def later() -> int:  # every look at the clock is 5 real seconds later
        clock["now"] += 5_000
        return clock["now"]

    monkeypatch.setattr(trader_mod, "now_ms", later)
    await t.place_window(1, 0, 900_000)
    assert not t.resting
    assert 3 <= len(matcher.calls) <= 13  # kept trying for the order's 60 s, then stopped
    assert clock["now"] - start >= 60_000
    # it may have reached the matcher (a deadline): the record stays, as for any refusal that may not be final
    assert len(await store.orders()) == 1
