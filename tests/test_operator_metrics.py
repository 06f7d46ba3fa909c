"""The operator's metrics the services add for monitoring (issue 12): settlement's exposure,
meter silence and defaults; the anchoring lag; lnd liquidity and the hub's forwarding fees;
the meter's uncovered demand. Pure aggregates first, then each where it is kept."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from fakes.chain import FakeChain, FakeWallet
from fakes.lightning import FakeLightning
from prometheus_client import REGISTRY, CollectorRegistry

from p2pep.anchor.batching import BatchPolicy
from p2pep.canonical import contract_hash
from p2pep.lndrpc import lightning_pb2 as ln
from p2pep.metering.contract_book import ContractBook
from p2pep.settling.contracts import ContractState
from services.anchor.anchorer import Anchorer, AnchorerConfig
from services.anchor.hub import HubMonitor
from services.meter.lightning import BalanceCache
from services.meter.relay_control import RelayControl
from services.settlement.metrics import OperatorCollector, defaults_by_consumer, exposure_of


def value(name: str, registry: CollectorRegistry = REGISTRY, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_exposure_is_a_bounded_aggregate() -> None:
    e = exposure_of([(4, 10, 99.0), (15, 10, 2.5), (0, 10, 0.0), (10, 10, 50.0), (12, 10, 7.0)])
    assert (e.unpaid_wh_max, e.unpaid_wh_sum, e.over_one_increment, e.active) == (15, 41, 2, 5)
    assert e.stalled_s == 7.0  # only contracts owing more than one increment count
    assert exposure_of([]) == exposure_of(())  # nothing active: zeros
    assert exposure_of([]).unpaid_wh_max == 0


def test_defaults_counted_per_enrolled_consumer() -> None:
    got = defaults_by_consumer([("meter-3", ContractState.DEFAULTED), ("meter-3", ContractState.COMPLETED),
                                ("meter-2", ContractState.ACTIVE)], ["meter-1", "meter-2", "meter-3"])
    assert got == {"meter-1": 0, "meter-2": 0, "meter-3": 1}


def contract(consumer: str, state: ContractState, unpaid: int, increment: int = 10, last_payment: float = 0.0) -> Any:
    return SimpleNamespace(contract=SimpleNamespace(state=state), ledger=SimpleNamespace(unpaid_wh=unpaid),
                           terms=SimpleNamespace(consumer=consumer, increment_wh=increment), last_payment=last_payment)


def link(meter_id: str, last_seen: float) -> Any:
    return SimpleNamespace(row=SimpleNamespace(meter_id=meter_id), last_seen=last_seen)


def test_settlement_operator_collector_reads_memory_at_scrape_time() -> None:
    contracts = {"a": contract("meter-3", ContractState.ACTIVE, 14, last_payment=30.5), "b": contract("meter-3", ContractState.ACTIVE, 3),
                 "c": contract("meter-3", ContractState.DEFAULTED, 30), "d": contract("meter-1", ContractState.COMPLETED, 0)}
    links = [link("meter-1", 100.0), link("meter-2", 40.0), link("meter-3", 99.5)]
    reg = CollectorRegistry()
    reg.register(OperatorCollector(contracts, SimpleNamespace(values=lambda: links), clock=lambda: 100.5))
    assert value("p2pep_settlement_unpaid_wh_max", reg) == 14  # the defaulted contract is not active
    assert value("p2pep_settlement_unpaid_wh_sum", reg) == 17
    assert value("p2pep_settlement_contracts_unpaid_over_increment", reg) == 1
    assert value("p2pep_settlement_unpaid_stalled_seconds", reg) == 70.0
    assert value("p2pep_settlement_meter_silence_seconds", reg, meter="meter-2") == 60.5
    assert value("p2pep_settlement_meter_silence_seconds", reg, meter="meter-1") == 0.5
    assert value("p2pep_settlement_consumer_defaults", reg, consumer="meter-3") == 1
    assert value("p2pep_settlement_consumer_defaults", reg, consumer="meter-2") == 0
    contracts["a"].ledger.unpaid_wh = 2  # paid: the next scrape sees it
    assert value("p2pep_settlement_contracts_unpaid_over_increment", reg) == 0
    assert value("p2pep_settlement_unpaid_stalled_seconds", reg) == 0


def test_defaults_that_left_memory_are_counted_from_the_engines_own_counter() -> None:
    """The collector reads the counter the engine fills as defaulted contracts leave memory,
    including one that was still empty when the collector was made (a fresh settlement: the
    regression behind P2PEPConsumerDefaulted never firing)."""
    from collections import Counter

    settled: Counter[str] = Counter()  # empty, hence falsy
    reg = CollectorRegistry()
    reg.register(OperatorCollector({}, SimpleNamespace(values=lambda: [link("meter-3", 1.0)]), clock=lambda: 2.0,
                                   settled_defaults=settled))
    assert value("p2pep_settlement_consumer_defaults", reg, consumer="meter-3") == 0
    settled["meter-3"] += 1  # the engine retires a defaulted contract
    assert value("p2pep_settlement_consumer_defaults", reg, consumer="meter-3") == 1


async def test_anchor_lag_after_each_block(tmp_path: Path) -> None:
    chain = FakeChain()
    chain.mine(100)
    cfg = AnchorerConfig(policy=BatchPolicy(every_blocks=1, max_leaves=1000), min_confirmations=3, watch_depth=50)
    anchorer = await Anchorer(str(tmp_path / "a.sqlite"), FakeWallet(chain), chain, cfg).open()
    try:
        before = value("p2pep_anchor_leaves_added_total", kind="contract") or 0
        await anchorer.add_leaves([("contract", f"c-{i}", contract_hash({"i": i})) for i in range(3)])
        assert value("p2pep_anchor_leaves_added_total", kind="contract") == before + 3
        await anchorer.on_block(chain.mine())  # closed and sent
        assert value("p2pep_anchor_batches", state="broadcast") == 1
        assert value("p2pep_anchor_newest_batch_confirmations") == 0
        assert value("p2pep_anchor_oldest_unconfirmed_blocks") == 0
        await anchorer.on_block(chain.mine())  # mined
        assert value("p2pep_anchor_batches", state="mined") == 1
        assert value("p2pep_anchor_newest_batch_confirmations") == 1
        assert value("p2pep_anchor_oldest_unconfirmed_blocks") == 1
        await anchorer.on_block(chain.mine(2))  # 3 deep: confirmed, nothing unconfirmed
        assert value("p2pep_anchor_batches", state="confirmed") == 1
        assert value("p2pep_anchor_newest_batch_confirmations") == 3
        assert value("p2pep_anchor_oldest_unconfirmed_blocks") == 0
        assert value("p2pep_anchor_min_confirmations") == 3
    finally:
        await anchorer.close()


class FakeHub:
    def __init__(self, fees: list[int]) -> None:
        self.events = [ln.ForwardingEvent(fee_msat=f, amt_out_msat=f * 1000) for f in fees]
        self.calls: list[tuple[int, int]] = []

    async def channel_balance(self) -> ln.ChannelBalanceResponse:
        return ln.ChannelBalanceResponse(local_balance=ln.Amount(sat=700), remote_balance=ln.Amount(sat=300))

    async def wallet_balance(self) -> ln.WalletBalanceResponse:
        return ln.WalletBalanceResponse(confirmed_balance=5000)

    async def forwarding_history(self, index_offset: int = 0, max_events: int = 10_000) -> ln.ForwardingHistoryResponse:
        self.calls.append((index_offset, max_events))
        page = self.events[index_offset:index_offset + max_events]
        return ln.ForwardingHistoryResponse(forwarding_events=page, last_offset_index=index_offset + len(page))


async def test_hub_monitor_exports_liquidity_and_counts_each_forward_once() -> None:
    hub = FakeHub([1, 2, 3, 4, 5])
    mon = HubMonitor(hub, name="hub-test", page=2)
    await mon.poll_once()
    assert value("p2pep_lnd_channel_balance_sat", node="hub-test", side="local") == 700
    assert value("p2pep_lnd_channel_balance_sat", node="hub-test", side="remote") == 300
    assert value("p2pep_lnd_wallet_balance_sat", node="hub-test") == 5000
    assert value("p2pep_lnd_forwarding_fees_msat_total", node="hub-test") == 15
    assert value("p2pep_lnd_forwards_total", node="hub-test") == 5
    assert hub.calls == [(0, 2), (2, 2), (4, 2)]  # paged until a short page
    hub.events.append(ln.ForwardingEvent(fee_msat=10, amt_out_msat=10_000))
    await mon.poll_once()
    assert value("p2pep_lnd_forwarding_fees_msat_total", node="hub-test") == 25
    assert value("p2pep_lnd_forwards_total", node="hub-test") == 6
    assert value("p2pep_lnd_forwarded_msat_total", node="hub-test") == 25_000


async def test_meter_exports_its_own_nodes_liquidity() -> None:
    node = FakeLightning().node("meter-test")
    node.local_sat = 1234
    await BalanceCache(node, "meter-test").refresh()
    assert value("p2pep_lnd_channel_balance_sat", node="meter-test", side="local") == 1234
    assert value("p2pep_lnd_wallet_balance_sat", node="meter-test") == 10_000_000


def test_relay_blocked_with_demand_waiting_is_uncovered_demand() -> None:
    rc = RelayControl(ContractBook(), changed=lambda: None)
    rc.start(0)
    rc.evaluate(1000, demand_wh=4)  # no contract: blocked, the household wants 4 Wh
    assert not rc.relay.energized
    assert value("p2pep_meter_demand_uncovered") == 1
    rc.evaluate(2000, demand_wh=0)  # nothing wanted: nothing uncovered
    assert value("p2pep_meter_demand_uncovered") == 0


async def test_hub_monitor_counts_failed_polls_and_keeps_polling() -> None:
    import asyncio

    from p2pep.lnd.client import LndError
    from p2pep.regtest import wait_for

    class Denied(FakeHub):
        async def channel_balance(self) -> ln.ChannelBalanceResponse:
            raise LndError("hub", "ChannelBalance", "PERMISSION_DENIED: permission denied")

    stop = asyncio.Event()
    task = asyncio.create_task(HubMonitor(Denied([]), name="hub-denied", interval_s=0.01).run(stop))
    await wait_for(lambda: (value("p2pep_lnd_poll_errors_total", node="hub-denied") or 0) >= 3, timeout=10,
                   what="failed polls counted")
    stop.set()
    await asyncio.wait_for(task, 5)
    assert value("p2pep_lnd_channel_balance_sat", node="hub-denied", side="local") is None  # nothing made up
