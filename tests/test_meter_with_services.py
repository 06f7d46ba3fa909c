"""Meters (fake LND nodes) against the real matcher and settlement services, in process:
the whole protocol — orders, matches, contracts signed by both meters, readings,
one Lightning payment per increment — without a regtest network."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from fakes.lightning import FakeLightning
from meter_helpers import nominal_step_wh, own_check_bound_wh, record_import_steps
from tls_helpers import dial

from p2pep.identity import Identity
from p2pep.metering.contract_book import Party
from p2pep.regtest import timeout_scale, wait_for
from p2pep.servicekit import ServiceHost
from p2pep.settings.matcher import MatcherSettings
from p2pep.settings.meter import MeterSettings
from p2pep.settings.settlement import SettlementSettings
from p2pep.settling.contracts import ContractState
from p2pep.v1 import matcher_pb2_grpc, settlement_pb2_grpc
from services.matcher.app import MatcherApp, start_matcher
from services.meter.app import MeterApp, start_meter
from services.settlement.engine import Engine
from services.settlement.matcher_feed import follow_matcher
from services.settlement.server import SettlementServicer
from services.settlement.store import Store

SIM_START = datetime(2026, 6, 1, tzinfo=UTC)
WINDOW_S = 3600
"""The meters' simulated clocks start on an order window boundary, and a window lasts 60 s real
(accel 60): every run trades one whole window, one contract per producer, whatever the time of
day and however busy the machine. (Started at the real "now", the first window lasted anywhere
from 0 to 5 s real, so the contracts' sizes, and whether a second round of contracts was being
signed when the test looked, depended on the wall clock.)"""


class Settlement:
    def __init__(self, engine: Engine, host: ServiceHost, channel: grpc.aio.Channel, store: Store) -> None:
        self.engine, self.host, self.channel, self.store = engine, host, channel, store

    @classmethod
    async def start(cls, tmp: Path, matcher_target: str) -> Settlement:
        s = SettlementSettings(db_path=str(tmp / "settlement.sqlite"), matcher_target=matcher_target,
                               increment_wh=10, payment_timeout_s=max(5, round(5 * timeout_scale())),
                               sweep_interval_s=0.2, log_json=False)
        store = await Store.open(s.db_path)
        ch = dial(matcher_target, "matcher", as_=Identity("service", "settlement"))
        engine = Engine(s, store, matcher_pb2_grpc.MatcherServiceStub(ch))
        await engine.load()
        host = ServiceHost(s, name="settlement")
        settlement_pb2_grpc.add_SettlementServiceServicer_to_server(SettlementServicer(engine), host.grpc_server)
        await host.start()
        engine.spawn(engine.sweep_forever())
        engine.spawn(follow_matcher(engine, matcher_pb2_grpc.MatcherServiceStub(ch)))
        return cls(engine, host, ch, store)

    async def stop(self) -> None:
        await self.host.stop(0)
        await self.engine.stop()
        await self.channel.close()
        await self.store.close()


@pytest.fixture
async def grid(tmp_path: Path) -> AsyncIterator[tuple[MatcherApp, Settlement, FakeLightning, dict[str, MeterApp]]]:
    matcher = await start_matcher(MatcherSettings(db_path=str(tmp_path / "matcher.sqlite"),
                                                  housekeeping_interval_s=0.2, log_json=False))
    settlement = await Settlement.start(tmp_path, matcher.target)
    net = FakeLightning()
    meters: dict[str, MeterApp] = {}
    for name, role, watts, price in (("solar", "producer", 1200, 250_000), ("wind", "producer", 1200, 280_000),
                                     ("home", "consumer", 2000, 350_000)):
        s = MeterSettings(
            meter_id=name, role=role, key_path=tmp_path / f"{name}.key", db_path=str(tmp_path / f"{name}.sqlite"),
            settlement_target=settlement.host.grpc_target, matcher_target=matcher.target, hub="",
            source="constant", constant_w=watts, price_msat_per_kwh=price, accel=60, tick_s=0.05,
            sim_start=SIM_START, window_s=WINDOW_S, contract_poll_s=0.3, balance_refresh_s=0.3,
            # leaving waits (bounded) until settlement has paid the last increment; if the bound
            # passes first the meter is gone and that payment fails (the contract defaults)
            leave_timeout_s=30 * timeout_scale(), log_json=False,
        )
        meters[name] = await start_meter(s, net.node(name))
    yield matcher, settlement, net, meters
    for app in meters.values():
        await app.stop()
    await settlement.stop()
    await matcher.stop(0)


async def test_demand_split_across_two_producers_paid_per_increment(grid, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    matcher, settlement, net, meters = grid
    engine = settlement.engine
    home = meters["home"].meter
    steps = record_import_steps(home, monkeypatch)

    def paid_by_supplier() -> dict[str, int]:
        out: dict[str, int] = {}
        for lc in engine.contracts.values():
            out[lc.terms.supplier] = out.get(lc.terms.supplier, 0) + lc.ledger.increments_paid
        return out

    disagreements: list[str] = []

    def check_views() -> None:
        """Home's view against settlement's, at one instant (no await in between); run at every poll.

        Payments: home records one before it answers settlement, settlement after the answer,
        and asks for the next only once it has recorded the last: home is ahead by at most the
        increment in flight. The gate, as home enforces it (by its own count): exactly, however
        late its ticks come (tests/meter_helpers.py)."""
        if home.sim is None or not steps:
            return
        for lc in engine.contracts.values():
            if lc.contract.state is ContractState.PROPOSED:  # home may not have signed it yet
                continue
            view = home.book.get(lc.cid)
            if view is None or view.party is not Party.CONSUMER:
                disagreements.append(f"{lc.cid} ({lc.contract.state}): home has {view}")
                continue
            inc = lc.terms.increment_wh
            if not lc.ledger.paid_wh <= view.paid_wh <= lc.ledger.paid_wh + inc:
                disagreements.append(f"{lc.cid}: home paid {view.paid_wh} Wh, settlement {lc.ledger.paid_wh} Wh")
            if view.active and view.unpaid_wh >= own_check_bound_wh(home, inc, steps):
                disagreements.append(f"{lc.cid}: {view.unpaid_wh} Wh unpaid by home's count (steps of "
                                     f"{nominal_step_wh(home)} Wh nominal, {max(steps)} Wh at most)")

    def both_paid_twice() -> bool:
        check_views()
        paid = paid_by_supplier()
        return len(paid) == 2 and all(n >= 2 for n in paid.values())

    await wait_for(both_paid_twice, 20, interval=0.02, what="increments paid to both producers")
    assert not disagreements, disagreements[:10]
    assert home.relay_changes >= 1
    assert sorted((lc.terms.supplier, lc.contract.state) for lc in engine.contracts.values()) == [
        ("solar", ContractState.ACTIVE), ("wind", ContractState.ACTIVE)]
    # leave: the consumer ends its contracts, settlement pays what was delivered, nothing more
    await meters.pop("home").stop()
    # settled contracts leave settlement's memory: read them back from its store
    await wait_for(lambda: not engine.contracts, 10, what="contracts settled")
    for row in await engine.store.contracts():
        lc = await engine.contract(row["contract_id"])
        assert lc.finished
        if lc.contract.state is ContractState.REJECTED:
            continue
        assert lc.ledger.paid_wh == lc.ledger.delivered_wh, (lc.cid, lc.contract.state, lc.ledger.paid_wh)
        # what the supplier's node received equals what settlement recorded, to the msat
        supplier = net.nodes[lc.terms.supplier]
        settled = [i for i in supplier.invoices.values() if i.memo.startswith(f"p2pep {lc.cid} #") and i.settled]
        assert sum(i.value_msat for i in settled) == lc.ledger.paid_msat
        for p in lc.ledger.paid:
            inv = supplier.invoices[p.payment_hash]
            assert hashlib.sha256(inv.r_preimage).hexdigest() == p.payment_hash
    await asyncio.sleep(0)
