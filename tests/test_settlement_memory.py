"""Settlement's memory is bounded by its open contracts, not by history.

A settled or rejected contract leaves memory; every answer about it (GetContract,
ListContracts, ListPayments, ExportContract, EndContract, the gauges) comes from the store, a
page at a time; a restart loads only the open ones. Against fake meters (in-process gRPC).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import test_settlement_service
from prometheus_client import REGISTRY
from test_settlement_service import match, reading, register, send, settled

from p2pep.paging import follow
from p2pep.regtest import wait_for
from p2pep.v1 import settlement_pb2 as pb
from services.settlement.store import MeterRow, Store

pytestmark = pytest.mark.usefixtures("operator_writes")
world = test_settlement_service.world  # the harness: settlement in-process, two fake meters


def gauge(state: str) -> float:
    return REGISTRY.get_sample_value("p2pep_settlement_contracts", {"state": state}) or 0.0


async def test_only_open_contracts_stay_in_memory(world: Any) -> None:
    h, cons, sup = world
    engine, stub, host = await h.start_settlement()
    await register(stub, cons, sup)
    await send(stub, reading(cons, 1, 0, 0), reading(sup, 1, 0, 0))
    ended = [f"e{i:02d}" for i in range(12)]
    for cid in ended:  # each ends at its end time (1 s), after what is delivered is paid
        await engine.propose(match(cid, energy_wh=1000, price=1_000_000, seconds=1.0))
    await engine.propose(match("open", energy_wh=10_000, price=1_000_000, seconds=600))
    await send(stub, reading(cons, 2, 26, 0), reading(sup, 2, 0, 26))  # shared out over the active ones
    for cid in ended:
        await wait_for(lambda cid=cid: settled(engine, cid), 15, what=f"{cid} settled")
    assert sorted(engine.contracts) == ["open"]
    assert gauge("completed") == 12 and gauge("active") == 1

    # lists come from the store in pages, in the order proposed, the open one as in memory
    first = await stub.ListContracts(pb.ListSettlementContractsRequest(page_size=5))
    assert [c.contract.contract_id for c in first.contracts] == ended[:5] and first.next_page_token
    every = await follow(stub.ListContracts, pb.ListSettlementContractsRequest(page_size=5), "contracts", 10)
    assert [c.contract.contract_id for c in every] == [*ended, "open"]
    assert sum(c.delivered_wh for c in every) == 26
    assert every[-1].state == pb.CONTRACT_STATE_ACTIVE and every[-1].delivered_wh == engine.contracts["open"].ledger.delivered_wh
    done = await follow(stub.ListContracts, pb.ListSettlementContractsRequest(
        meter_id="consumer", states=[pb.CONTRACT_STATE_COMPLETED], page_size=4), "contracts", 10)
    assert [c.contract.contract_id for c in done] == ended
    assert all(c.paid_wh == c.delivered_wh for c in done)  # each ended contract paid what was delivered
    none = await stub.ListContracts(pb.ListSettlementContractsRequest(meter_id="stranger"))
    assert list(none.contracts) == [] and none.next_page_token == ""
    pays = await follow(stub.ListPayments, pb.ListPaymentsRequest(meter_id="supplier", page_size=2), "payments", 10)
    assert len(pays) == sum(c.increments_paid for c in every)
    assert sum(p.amount_msat for p in pays) == sum(c.paid_msat for c in every)
    assert all((p.payer, p.payee) == ("consumer", "supplier") for p in pays)
    assert list((await stub.ListPayments(pb.ListPaymentsRequest(meter_id="stranger"))).payments) == []

    # every answer about an ended contract is read from the store, as it was when it ended
    paid = next(c for c in done if c.delivered_wh > 0)
    cid = paid.contract.contract_id
    rec = await stub.GetContract(pb.GetContractRequest(contract_id=cid))
    assert rec == paid and rec.end_reason == "END_TIME" and rec.paid_msat == rec.delivered_wh * 1000
    again = await stub.EndContract(pb.EndContractRequest(contract_id=cid, meter_id="consumer", reason="late"))
    assert again == paid
    doc = json.loads((await stub.ExportContract(pb.GetContractRequest(contract_id=cid))).json)
    assert (doc["settlement"]["wh_delivered"], doc["settlement"]["msat_paid"]) == (rec.delivered_wh, rec.paid_msat)
    assert cid not in engine.contracts  # reading it did not bring it back into memory

    # a restart loads the open contract only; the gauges still count every contract
    await host.stop(0)
    engine, stub, host = await h.start_settlement()
    assert sorted(engine.contracts) == ["open"]
    assert engine.contracts["open"].ledger.delivered_wh == every[-1].delivered_wh
    assert gauge("completed") == 12 and gauge("active") == 1
    # a match already settled, delivered again by the matcher's feed, is not proposed again
    asked = len(cons.asked_to_sign)
    await engine.propose(match("e00", energy_wh=1000, price=1_000_000))
    assert len(cons.asked_to_sign) == asked and "e00" not in engine.contracts


async def test_list_meters_in_pages(world: Any) -> None:
    h, cons, sup = world
    _, stub, _ = await h.start_settlement()
    await register(stub, cons, sup)
    first = await stub.ListMeters(pb.ListMetersRequest(page_size=1))
    assert [m.meter_id for m in first.meters] == ["consumer"] and first.next_page_token
    every = await follow(stub.ListMeters, pb.ListMetersRequest(page_size=1), "meters", 10)
    assert [m.meter_id for m in every] == ["consumer", "supplier"]


V2 = """
CREATE TABLE contracts (
  contract_id TEXT PRIMARY KEY, terms_json TEXT NOT NULL, state TEXT NOT NULL,
  consumer_sig BLOB, supplier_sig BLOB, activated_ms INTEGER, ended_ms INTEGER, end_reason TEXT,
  consumer_wh INTEGER NOT NULL DEFAULT 0, supplier_wh INTEGER NOT NULL DEFAULT 0,
  closed_at_wh INTEGER, summary_json TEXT, matcher_tier INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE payments (
  contract_id TEXT NOT NULL, increment INTEGER NOT NULL, from_wh INTEGER NOT NULL, to_wh INTEGER NOT NULL,
  amount_msat INTEGER NOT NULL, payment_hash TEXT, payment_request TEXT, preimage TEXT,
  fee_msat INTEGER NOT NULL DEFAULT 0, settled_ms INTEGER, PRIMARY KEY (contract_id, increment)
);
INSERT INTO contracts (contract_id, terms_json, state, summary_json) VALUES
  ('old', '{"consumer": "home", "supplier": "solar"}', 'completed', '{}'),
  ('rejected', '{"consumer": "home", "supplier": "wind"}', 'rejected', NULL),
  ('ending', '{"consumer": "home", "supplier": "wind"}', 'completed', NULL);
PRAGMA user_version = 2;
"""


async def store_written_by(script: str, tmp_path: Path) -> Store:
    """The store opened on a database an older version wrote (``script``): migrated forward."""
    path = tmp_path / "s.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(script)
    conn.close()
    return await Store.open(str(path))


async def test_a_version_2_store_gets_party_columns_from_its_terms(tmp_path: Path) -> None:
    store = await store_written_by(V2, tmp_path)
    try:
        assert [r["contract_id"] for r in await store.contract_page(0, 10, meter_id="solar")] == ["old"]
        assert await store.contract_page(0, 10, meter_id="other") == []
        # settled (a summary) and rejected ones stay in the store; one ended but not yet settled is open
        assert [r["contract_id"] for r in await store.open_contracts()] == ["ending"]
    finally:
        await store.close()


V3_METERS = """
CREATE TABLE meters (
  meter_id TEXT PRIMARY KEY, pubkey TEXT NOT NULL, node_pubkey TEXT NOT NULL,
  address TEXT NOT NULL, role TEXT NOT NULL, node_address TEXT NOT NULL DEFAULT ''
);
INSERT INTO meters VALUES ('home', '02aa', '03bb', 'home:1', 'consumer', 'home:9735');
PRAGMA user_version = 3;
"""


async def test_a_version_3_store_keeps_its_meters_without_a_location_until_they_tell_one(tmp_path: Path) -> None:
    store = await store_written_by(V3_METERS, tmp_path)
    try:
        assert await store.meters() == [MeterRow("home", "02aa", "03bb", "home:1", "consumer", "home:9735")]
        await store.upsert_meter(MeterRow("home", "02aa", "03bb", "home:2", "consumer", "home:9735", 52.5, 13.4))
        await store.upsert_meter(MeterRow("solar", "02cc", "03dd", "solar:1", "producer"))
        assert [(m.meter_id, m.address, m.latitude, m.longitude) for m in await store.meters()] == [
            ("home", "home:2", 52.5, 13.4), ("solar", "solar:1", None, None)]
    finally:
        await store.close()
    conn = sqlite3.connect(tmp_path / "s.sqlite")
    assert conn.execute("PRAGMA user_version").fetchone() == (4,)
    conn.close()
