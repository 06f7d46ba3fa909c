"""Watching a running scenario: the meters' statuses and settlement's books (I/O).

The runner polls each meter's ``MeterService.GetStatus`` (relay state, registers,
sats, simulated time) and, for the live view, settlement's contracts and payments.
The last status of a meter that stopped is kept, so reports still show it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import grpc

from p2pep.paging import follow
from p2pep.pbconv import ts_ms_or_none
from p2pep.scenario.clock import ScenarioClock
from p2pep.scenario.report import RelaySample
from p2pep.servicekit.channels import channel
from p2pep.servicekit.tls import Tls
from p2pep.v1 import meter_pb2, meter_pb2_grpc, settlement_pb2, settlement_pb2_grpc


@dataclass
class Books:
    """Settlement's view, refreshed for the live view."""

    contracts: list[settlement_pb2.ContractRecord] = field(default_factory=list)
    payments: list[settlement_pb2.Payment] = field(default_factory=list)
    error: str = ""
    updated_real_s: float = 0.0


class Watcher:
    def __init__(self, clock: ScenarioClock, t0: float, status_interval_s: float = 0.5,
                 books_interval_s: float | None = None) -> None:
        self.clock = clock
        self.t0 = t0  # monotonic time the run started (samples are relative to it)
        self.status_interval_s = status_interval_s
        self.books_interval_s = books_interval_s
        self.statuses: dict[str, meter_pb2.MeterStatus] = {}
        self.status_errors: dict[str, str] = {}
        self.samples: dict[str, list[RelaySample]] = {}
        self.books = Books()
        self._meters: dict[str, tuple[grpc.aio.Channel, meter_pb2_grpc.MeterServiceAsyncStub]] = {}
        self._settlement: tuple[grpc.aio.Channel, settlement_pb2_grpc.SettlementServiceAsyncStub] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def add_meter(self, name: str, target: str, tls: Tls) -> None:
        ch = channel(target, peer=name, tls=tls)
        self._meters[name] = (ch, meter_pb2_grpc.MeterServiceStub(ch))
        self.samples.setdefault(name, [])

    def set_settlement(self, target: str, tls: Tls) -> None:
        ch = channel(target, peer="settlement", tls=tls)
        self._settlement = (ch, settlement_pb2_grpc.SettlementServiceStub(ch))

    def meter_stub(self, name: str) -> meter_pb2_grpc.MeterServiceAsyncStub:
        return self._meters[name][1]

    @property
    def settlement(self) -> settlement_pb2_grpc.SettlementServiceAsyncStub:
        assert self._settlement is not None, "settlement target not set"
        return self._settlement[1]

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._status_loop(), name="watch-status"))
        if self.books_interval_s:
            self._tasks.append(asyncio.create_task(self._books_loop(), name="watch-books"))

    async def poll_status(self, name: str, timeout: float = 2.0) -> meter_pb2.MeterStatus | None:
        stub = self._meters[name][1]
        try:
            st = await stub.GetStatus(meter_pb2.GetStatusRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as e:
            self.status_errors[name] = f"{e.code().name}: {e.details()}"
            return None
        now = time.monotonic()
        self.status_errors.pop(name, None)
        self.statuses[name] = st
        sim = ts_ms_or_none(st.sim_time) or 0
        self.clock.observe(now, sim)
        self.samples[name].append(RelaySample(now - self.t0, sim, st.relay_energized, st.relay_reason,
                                              st.active_contracts, st.relay_changes))
        return st

    async def poll_books(self) -> None:
        try:
            cs = await follow(self.settlement.ListContracts, settlement_pb2.ListSettlementContractsRequest(),
                              "contracts", 5)
            ps = await follow(self.settlement.ListPayments, settlement_pb2.ListPaymentsRequest(), "payments", 5)
        except grpc.aio.AioRpcError as e:
            self.books.error = f"{e.code().name}: {e.details()}"
            return
        self.books = Books(cs, ps, "", time.monotonic() - self.t0)

    async def _status_loop(self) -> None:
        while True:
            await asyncio.gather(*(self.poll_status(n) for n in self._meters))
            await asyncio.sleep(self.status_interval_s)

    async def _books_loop(self) -> None:
        assert self.books_interval_s
        while True:
            if self._settlement is not None:
                await self.poll_books()
            await asyncio.sleep(self.books_interval_s)

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for ch, _ in self._meters.values():
            await ch.close()
        if self._settlement is not None:
            await self._settlement[0].close()
