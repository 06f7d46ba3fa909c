"""Settlement crashes between a state change and telling others of it, and resumes.

Before, the anchor's contract and settlement leaves and the matcher's ReportContractEnd were
sent by tasks in memory only (a crash lost them), and the matcher feed stored its position
before the match it had read was stored. Now they go through the store's outbox, written in
the transaction of the state change, and the feed stores a match before moving on. Each test
stops settlement at the point of the crash (the receiver unreachable or hanging) and starts it
again on the same file.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import test_settlement_service
from test_settlement_service import match, reading, register, send

from p2pep.regtest import wait_for
from p2pep.v1 import matcher_pb2
from p2pep.v1 import settlement_pb2 as pb
from services.settlement.engine import Engine
from services.settlement.matcher_feed import _follow
from services.settlement.store import TABLES, Store

pytestmark = pytest.mark.usefixtures("operator_writes")
world = test_settlement_service.world  # the harness: settlement in-process, two fake meters


def unavailable() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                "connection refused")


class FakeAnchor:
    def __init__(self, hang: bool = False) -> None:
        self.hang = hang
        self.leaves: list[tuple[str, str, bytes]] = []

    async def add_leaf(self, kind: str, contract_id: str, leaf_hash: bytes) -> bool:
        if self.hang:
            await asyncio.Event().wait()  # the anchor service never answers: settlement dies first
        self.leaves.append((kind, contract_id, leaf_hash))
        return True


class FakeMatcher:
    def __init__(self, down: bool = False, events: list[matcher_pb2.MatchEvent] | None = None) -> None:
        self.down = down
        self.ends: list[matcher_pb2.ReportContractEndRequest] = []
        self.events = events or []

    async def ReportContractEnd(self, req: matcher_pb2.ReportContractEndRequest, timeout: Any = None) -> Any:
        if self.down:
            raise unavailable()
        self.ends.append(req)
        return matcher_pb2.ReportContractEndResponse()

    def StreamEvents(self, req: matcher_pb2.StreamEventsRequest) -> AsyncIterator[matcher_pb2.MatchEvent]:
        async def events() -> AsyncIterator[matcher_pb2.MatchEvent]:
            for ev in self.events:
                if ev.seq >= req.from_seq:
                    yield ev
        return events()


async def test_a_crash_before_the_contract_leaf_is_anchored_anchors_it_after_restart(world: Any) -> None:
    h, cons, sup = world
    hanging = FakeAnchor(hang=True)
    engine, stub, host = await h.start_settlement(anchor=hanging)
    await register(stub, cons, sup)
    await send(stub, reading(cons, 1, 0, 0), reading(sup, 1, 0, 0))
    await engine.propose(match("c1", energy_wh=100, price=1_000_000))
    assert engine.contracts["c1"].contract.state.value == "active"
    terms_hash = engine.contracts["c1"].terms.hash()
    await host.stop(0)  # the crash: active, its leaf not yet with the anchor
    assert hanging.leaves == []
    anchor = FakeAnchor()
    engine, stub, host = await h.start_settlement(anchor=anchor)
    await wait_for(lambda: anchor.leaves == [("contract", "c1", terms_hash)], 10, what="the contract leaf anchored")
    await wait_for(lambda: _outbox_empty(engine), 10, what="the outbox drained")
    await host.stop(0)
    engine, stub, host = await h.start_settlement(anchor=(again := FakeAnchor()))
    await asyncio.sleep(0.2)  # nothing left to send: no delivery repeats
    assert again.leaves == []


async def test_a_crash_before_the_matcher_hears_of_an_end_tells_it_after_restart(world: Any) -> None:
    h, cons, sup = world
    down = FakeMatcher(down=True)
    engine, stub, host = await h.start_settlement(matcher=down, anchor=FakeAnchor(), worker_backoff_initial_s=0.05)
    await register(stub, cons, sup)
    await send(stub, reading(cons, 1, 0, 0), reading(sup, 1, 0, 0))
    await engine.propose(match("c1", energy_wh=100, price=1_000_000))
    await send(stub, reading(cons, 2, 20, 0), reading(sup, 2, 0, 20))
    await wait_for(lambda: engine.contracts["c1"].ledger.increments_paid == 2, 10, what="2 increments paid")
    await stub.EndContract(pb.EndContractRequest(contract_id="c1", meter_id="consumer", reason="leaving"))
    await wait_for(lambda: "c1" not in engine.contracts, 10, what="contract settled (out of memory)")
    await asyncio.sleep(0.3)  # a few failed attempts to reach the matcher
    await host.stop(0)  # the crash: settled, the matcher not told
    assert down.ends == []
    matcher, anchor = FakeMatcher(), FakeAnchor()
    engine, stub, host = await h.start_settlement(matcher=matcher, anchor=anchor)
    await wait_for(lambda: len(matcher.ends) == 1, 10, what="the matcher told of the end")
    end = matcher.ends[0]
    assert (end.contract_id, end.delivered_wh) == ("c1", 20)
    assert end.outcome == matcher_pb2.CONTRACT_OUTCOME_CONSUMER_DEFAULTED
    await wait_for(lambda: _outbox_empty(engine), 10, what="the outbox drained")
    assert anchor.leaves == []  # both leaves were anchored before the crash: not again



def _outbox_empty(engine: Engine) -> bool:
    """Polled by wait_for: whether the store's outbox is empty (read on the side)."""
    conn = sqlite3.connect(engine.store.db.path)
    try:
        return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0]) == 0
    finally:
        conn.close()


def event(seq: int, cid: str) -> matcher_pb2.MatchEvent:
    return matcher_pb2.MatchEvent(seq=seq, kind=matcher_pb2.MatchEvent.KIND_MATCHED,
                                  contract=match(cid, energy_wh=100, price=1_000_000))


async def test_the_feed_position_does_not_pass_a_match_that_was_not_stored(
        world: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    h, cons, sup = world
    feed = FakeMatcher(events=[event(1, "m1"), event(2, "m2")])
    engine, stub, host = await h.start_settlement(matcher=feed)
    await register(stub, cons, sup)

    async def disk_full(row: dict[str, Any], outbox: Any = ()) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(engine.store, "save_contract", disk_full)
    with pytest.raises(sqlite3.OperationalError):
        await _follow(engine, feed)  # type: ignore[arg-type]
    assert await engine.store.get("matcher_seq", "0") == "0"  # m1 not stored: the position stays before it
    monkeypatch.undo()
    await host.stop(0)  # the crash
    engine, stub, host = await h.start_settlement(matcher=feed)
    assert engine.contracts == {}
    with pytest.raises(ConnectionError):
        await _follow(engine, feed)  # type: ignore[arg-type]
    assert await engine.store.get("matcher_seq") == "2"
    await wait_for(lambda: all(c in engine.contracts and engine.contracts[c].contract.state.value == "active"
                               for c in ("m1", "m2")), 10, what="both matches active")
    # the stream replayed from the start: nothing proposed twice
    with pytest.raises(ConnectionError):
        await _follow(engine, FakeMatcher(events=[event(1, "m1"), event(2, "m2")]))  # type: ignore[arg-type]
    assert sorted(engine.contracts) == ["m1", "m2"]


async def test_a_settlement_store_of_version_1_gains_the_outbox_and_the_party_columns(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(TABLES)
    conn.execute("INSERT INTO kv VALUES ('matcher_seq', '41')")
    conn.execute("PRAGMA user_version = 1")
    conn.close()
    store = await Store.open(str(path))
    try:
        assert await store.get("matcher_seq") == "41" and await store.outbox() == []
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    # steps 1 (outbox), 2 (party columns) and 3 (meter locations): the current version
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 4
    conn.close()
