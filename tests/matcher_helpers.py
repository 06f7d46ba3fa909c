"""Helpers for the matcher service tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from tls_helpers import dial

from p2pep.settings.matcher import MatcherSettings
from p2pep.v1 import common_pb2, matcher_pb2, matcher_pb2_grpc
from services.matcher.app import MatcherApp, start_matcher


def settings(tmp_path: Path, **kw: Any) -> MatcherSettings:
    base: dict[str, Any] = dict(grpc_port=0, metrics_port=0, db_path=str(tmp_path / "matcher.sqlite"),
                                housekeeping_interval_s=0.05, shutdown_grace_s=1)
    base.update(kw)
    return MatcherSettings(**base)


class Client:
    """A started matcher and a stub on it."""

    def __init__(self, app: MatcherApp, channel: grpc.aio.Channel) -> None:
        self.app = app
        self.channel = channel
        self.stub = matcher_pb2_grpc.MatcherServiceStub(channel)

    @classmethod
    async def start(cls, s: MatcherSettings) -> Client:
        app = await start_matcher(s)
        return cls(app, dial(app.target, "matcher"))

    async def close(self) -> None:
        await self.channel.close()
        await self.app.stop(grace=0.5)


def order(oid: str, meter: str, side: int, energy: int, price: int, **kw: Any) -> common_pb2.Order:
    return common_pb2.Order(order_id=oid, meter_id=meter, side=side, energy_wh=energy, price_msat_per_kwh=price, **kw)


def supply(oid: str, meter: str, energy: int, price: int, **kw: Any) -> matcher_pb2.SubmitOrderRequest:
    return matcher_pb2.SubmitOrderRequest(order=order(oid, meter, common_pb2.SIDE_SUPPLY, energy, price, **kw))


def demand(oid: str, meter: str, energy: int, price: int, **kw: Any) -> matcher_pb2.SubmitOrderRequest:
    return matcher_pb2.SubmitOrderRequest(order=order(oid, meter, common_pb2.SIDE_DEMAND, energy, price, **kw))


class EventReader:
    """Reads a StreamEvents call with a deadline per event."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self._it: AsyncIterator[matcher_pb2.MatchEvent] = call.__aiter__()

    async def next(self, timeout: float = 5.0) -> matcher_pb2.MatchEvent:
        return await asyncio.wait_for(self._it.__anext__(), timeout)

    async def take(self, n: int, timeout: float = 5.0) -> list[matcher_pb2.MatchEvent]:
        return [await self.next(timeout) for _ in range(n)]

    def cancel(self) -> None:
        self.call.cancel()


async def subscribed(stub: matcher_pb2_grpc.MatcherServiceStub, meters: list[str], from_seq: int = 0) -> EventReader:
    """A stream that is registered on the server (the call is answered once it is)."""
    call = stub.StreamEvents(matcher_pb2.StreamEventsRequest(meter_ids=meters, from_seq=from_seq))
    await asyncio.wait_for(call.wait_for_connection(), 5)
    return EventReader(call)


async def wait_until(pred: Any, timeout: float = 5.0, what: str = "condition") -> None:
    """Wait on state with a deadline (polls the predicate, which may be async)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        r = pred()
        if asyncio.iscoroutine(r):
            r = await r
        if r:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
