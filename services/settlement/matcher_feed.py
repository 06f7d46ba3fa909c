"""Follows the matcher's event stream (all meters) and turns each new match into a contract.

The last handled event's sequence number is stored, so a restarted settlement
resumes the stream where it left off and misses no match.
"""

from __future__ import annotations

import asyncio

import grpc
import structlog

from p2pep.v1 import matcher_pb2, matcher_pb2_grpc
from services.settlement.engine import Engine

log = structlog.get_logger("settlement")
CONTRACT_KINDS = (matcher_pb2.MatchEvent.KIND_MATCHED, matcher_pb2.MatchEvent.KIND_PARTIALLY_MATCHED)


async def follow_matcher(engine: Engine, stub: matcher_pb2_grpc.MatcherServiceStub) -> None:
    backoff = 0.2
    while True:
        last = int(await engine.store.get("matcher_seq", "0"))
        try:
            stream = stub.StreamEvents(matcher_pb2.StreamEventsRequest(from_seq=last + 1))
            log.info("following matcher events", from_seq=last + 1)
            async for ev in stream:
                backoff = 0.2
                if ev.kind in CONTRACT_KINDS and ev.HasField("contract"):
                    engine._spawn(engine.propose(ev.contract))
                await engine.store.put("matcher_seq", str(ev.seq))
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as err:
            log.warning("matcher stream broken", code=err.code().name, detail=err.details())
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 5.0)
