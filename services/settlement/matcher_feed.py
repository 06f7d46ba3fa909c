"""Follows the matcher's event stream (all meters) and turns each new match into a contract.

The last handled event's sequence number is stored, so a restarted settlement
resumes the stream where it left off and misses no match: a match is stored (as a proposed
contract, or a rejection queued for the matcher) before the position moves past it, and a
repeated event is a no-op.
"""

from __future__ import annotations

import grpc
import structlog

from p2pep.servicekit import Backoff, supervised
from p2pep.v1 import matcher_pb2, matcher_pb2_grpc
from services.settlement import metrics
from services.settlement.engine import Engine

log = structlog.get_logger("settlement")
CONTRACT_KINDS = (matcher_pb2.MatchEvent.KIND_MATCHED, matcher_pb2.MatchEvent.KIND_PARTIALLY_MATCHED)


async def follow_matcher(engine: Engine, stub: matcher_pb2_grpc.MatcherServiceAsyncStub) -> None:
    """Follow forever: a broken stream (or any other failure) is retried with backoff."""
    def failed(n: int, exc: Exception) -> None:
        if isinstance(exc, grpc.aio.AioRpcError):
            log.warning("matcher stream broken", code=exc.code().name, detail=exc.details(), failures_in_a_row=n)
        elif isinstance(exc, ConnectionError):
            log.warning("matcher stream ended", detail=str(exc), failures_in_a_row=n)
        else:
            metrics.TASK_FAILURES.labels("matcher_feed").inc()
            log.exception("matcher feed failed", failures_in_a_row=n)

    await supervised(lambda: _follow(engine, stub), on_failure=failed, backoff=Backoff(0.2, 5.0),
                     healthy_after_s=5.0)


async def _follow(engine: Engine, stub: matcher_pb2_grpc.MatcherServiceAsyncStub) -> None:
    last = int(await engine.store.get("matcher_seq", "0"))
    stream = stub.StreamEvents(matcher_pb2.StreamEventsRequest(from_seq=last + 1))
    log.info("following matcher events", from_seq=last + 1)
    async for ev in stream:
        if ev.kind in CONTRACT_KINDS and ev.HasField("contract"):
            lc = await engine.admit(ev.contract)  # durable before the position moves on
            if lc is not None:
                engine.spawn(engine.sign(lc))
        await engine.store.put("matcher_seq", str(ev.seq))
    raise ConnectionError("the matcher ended its event stream")
