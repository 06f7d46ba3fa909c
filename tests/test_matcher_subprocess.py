"""``python -m services.matcher`` as a real process: config from env, restart, SIGTERM, SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

from matcher_helpers import demand, supply
from tls_helpers import dial

from p2pep.identity import Identity
from p2pep.v1 import matcher_pb2, matcher_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent


SETTLEMENT = Identity("service", "settlement")  # reads the whole book and every event


def as_meter(target: str, meter_id: str) -> matcher_pb2_grpc.MatcherServiceStub:
    """A stub calling as meter ``meter_id`` (its orders only)."""
    return matcher_pb2_grpc.MatcherServiceStub(dial(target, "matcher", as_=Identity("meter", meter_id)))


class Proc:
    def __init__(self, db: Path) -> None:
        env = dict(os.environ, P2PEP_MATCHER_DB_PATH=str(db), P2PEP_MATCHER_GRPC_PORT="0",
                   P2PEP_MATCHER_METRICS_PORT="0", P2PEP_MATCHER_LOG_JSON="true",
                   P2PEP_MATCHER_SHUTDOWN_GRACE_S="2")
        self.p = subprocess.Popen([sys.executable, "-m", "services.matcher"], cwd=ROOT, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.log: list[dict] = []

    async def started(self) -> str:
        """Wait for the 'service started' log line; return the gRPC target."""
        assert self.p.stderr is not None
        stderr: IO[str] = self.p.stderr

        def read() -> str:
            for line in stderr:
                if line.startswith("{"):
                    ev = json.loads(line)
                    self.log.append(ev)
                    if ev.get("event") == "service started":
                        return str(ev["grpc"])
            raise AssertionError("matcher exited before starting")

        return await asyncio.wait_for(asyncio.to_thread(read), timeout=30)

    async def wait(self, timeout: float = 20) -> int:
        assert self.p.stderr is not None
        rest = await asyncio.wait_for(asyncio.to_thread(self.p.stderr.read), timeout)
        self.log += [json.loads(x) for x in rest.splitlines() if x.startswith("{")]
        return await asyncio.wait_for(asyncio.to_thread(self.p.wait), timeout)

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


async def test_subprocess_restart_keeps_book_and_sigterm_is_clean(tmp_path: Path) -> None:
    db = tmp_path / "m.sqlite"
    first = Proc(db)
    try:
        target = await first.started()
        async with dial(target, "matcher", as_=SETTLEMENT) as ch:
            stub = matcher_pb2_grpc.MatcherServiceStub(ch)
            await as_meter(target, "A").SubmitSupply(supply("s1", "A", 100, 100))
            await as_meter(target, "C").SubmitDemand(demand("d1", "C", 30, 120))
            await as_meter(target, "D").SubmitDemand(demand("d2", "D", 50, 50))
            before = await stub.GetBook(matcher_pb2.GetBookRequest(meter_ids=["A", "D"]))
            stream = stub.StreamEvents(matcher_pb2.StreamEventsRequest())
            await asyncio.wait_for(stream.wait_for_connection(), 10)
            first.p.send_signal(signal.SIGTERM)
            assert await first.wait() == 0
            # the open stream was ended by the server, not left hanging for the grace period
            assert [e async for e in stream] == []
        events = [e["event"] for e in first.log]
        assert events.index("service stopping") < events.index("service stopped")
    finally:
        first.kill()

    # SIGKILL after acknowledged calls: nothing acknowledged is lost
    second = Proc(db)
    try:
        target = await second.started()
        async with dial(target, "matcher", as_=SETTLEMENT) as ch:
            stub = matcher_pb2_grpc.MatcherServiceStub(ch)
            assert await stub.GetBook(matcher_pb2.GetBookRequest(meter_ids=["A", "D"])) == before
            await as_meter(target, "B").SubmitSupply(supply("s2", "B", 10, 40))
        second.p.send_signal(signal.SIGKILL)
        second.p.wait(timeout=10)
    finally:
        second.kill()

    third = Proc(db)
    try:
        target = await third.started()
        async with dial(target, "matcher", as_=SETTLEMENT) as ch:
            stub = matcher_pb2_grpc.MatcherServiceStub(ch)
            book = await stub.GetBook(matcher_pb2.GetBookRequest())
            assert (book.supply_wh, book.demand_wh) == (70, 40)  # s2 matched 10 Wh of d2 at once
        third.p.send_signal(signal.SIGTERM)
        assert await third.wait() == 0
    finally:
        third.kill()
