"""A reading being stored while one of its contracts ends (found by the service-log check, issue 10).

``Engine.ingest`` attributes a reading to the contracts active *before* it awaits
``store.accept_reading``, and adds the shares to their ledgers *after*: a contract ended in
between (``end_contract``: the consumer leaves, the sweeper, a supplier gone) has a closed ledger
by then, ``add_*_wh`` raises ``IncrementError: contract ... is closed to further delivery``, and

* the error escapes the StreamReadings servicer (grpc logs it at ERROR, the meter's stream
  breaks and it resends; the reading was stored, so it is acked as a duplicate then);
* the shares of the reading's other contracts, after the closed one, are stored in the
  database but never reach their in-memory ledgers: those contracts are under-delivered (and
  their suppliers under-paid) until settlement restarts and reloads them.

In the in-process grid (tests/test_meter_with_services.py) it happened in about every third
run, when the consumer leaves while the producers' readings stream in. Fixed by the engine's
ledger lock (held from a reading's attribution to its ledgers, and by whatever ends a contract);
this test holds the reading in the store while the contract ends and sees nothing lost.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import test_settlement_service as svc
from test_settlement_service import match, reading, register, send

from p2pep.metering.readings import Reading
from p2pep.regtest import wait_for
from p2pep.settling.contracts import EndReason
from p2pep.v1 import settlement_pb2 as pb

# settlement's own behaviour: who may call it is tested in tests/test_access_services.py
pytestmark = pytest.mark.usefixtures("operator_writes")

world = svc.world  # the fixture: a settlement harness with a fake consumer and supplier meter


async def test_a_contract_ending_while_a_reading_is_stored_loses_nothing(world: Any,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    h, cons, sup = world
    engine, stub, _ = await h.start_settlement()
    await register(stub, cons, sup)
    await send(stub, reading(cons, 1, 0, 0), reading(sup, 1, 0, 0))
    await engine.propose(match("c1", energy_wh=5, price=1_000_000))  # room for part of the reading
    await engine.propose(match("c2", energy_wh=100, price=1_000_000))

    stored = engine.store.accept_reading
    held, release = asyncio.Event(), asyncio.Event()

    async def accept_reading_held(r: Reading, signature: bytes, attributions: Any) -> None:
        if (r.meter_id, r.seq) == ("consumer", 2):  # held between attribution and the ledgers
            held.set()
            await release.wait()
        await stored(r, signature, attributions)

    monkeypatch.setattr(engine.store, "accept_reading", accept_reading_held)
    streaming = asyncio.create_task(send(stub, reading(cons, 2, 8, 0)))  # 8 Wh, split over c1 and c2
    await wait_for(held.is_set, 10, what="the reading held in the store")
    ending = asyncio.create_task(engine.end_contract("c1", EndReason.ENDED_BY_CONSUMER))
    release.set()  # the end waited for the reading: no contract changes state under one being stored
    await ending

    acks = await streaming  # before the fix: the stream was aborted (grpc StatusCode.UNKNOWN)
    assert [a.status for a in acks] == [pb.ReadingAck.STATUS_ACCEPTED]
    in_db = {row["contract_id"]: row["consumer_wh"] for row in await engine.store.contracts()}
    assert engine.contracts["c2"].ledger.consumer_wh == in_db["c2"] > 0
