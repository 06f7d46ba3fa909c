"""How a web service (the portal, the console) reaches a meter: its address from settlement's registry, then one gRPC
channel per meter (:func:`p2pep.servicekit.channels.channel`: mutual TLS, and the meter must
present a certificate naming the meter id the portal asked for, wherever the address points).
The portal never takes an address from a household."""

from __future__ import annotations

import asyncio
import time

import grpc

from p2pep.paging import MAX_PAGE_SIZE, follow
from p2pep.servicekit.channels import channel
from p2pep.servicekit.tls import Tls
from p2pep.v1 import meter_pb2_grpc, settlement_pb2, settlement_pb2_grpc

REGISTRY_TTL_S = 5.0  # addresses are refreshed this often
UNKNOWN_RETRY_S = 1.0  # an unknown id asks settlement again at most this often


class MeterUnknown(Exception):
    """Settlement has no meter of that id (or no address for it)."""


class MeterLinks:
    def __init__(self, settlement: settlement_pb2_grpc.SettlementServiceAsyncStub, timeout: float, tls: Tls) -> None:
        self.settlement, self.timeout, self.tls = settlement, timeout, tls
        self._addresses: dict[str, str] = {}
        self._fetched = -1e9
        self._channels: dict[str, tuple[str, grpc.aio.Channel]] = {}
        self._lock = asyncio.Lock()

    async def _address(self, meter_id: str) -> str:
        age = time.monotonic() - self._fetched
        if age > REGISTRY_TTL_S or (meter_id not in self._addresses and age > UNKNOWN_RETRY_S):
            meters = await follow(self.settlement.ListMeters, settlement_pb2.ListMetersRequest(page_size=MAX_PAGE_SIZE),
                                  "meters", self.timeout)
            self._addresses = {m.meter_id: m.address for m in meters if m.address}
            self._fetched = time.monotonic()
        if meter_id not in self._addresses:
            raise MeterUnknown(meter_id)
        return self._addresses[meter_id]

    async def stub(self, meter_id: str) -> meter_pb2_grpc.MeterServiceAsyncStub:
        async with self._lock:  # one channel per meter, however many requests ask at once
            address = await self._address(meter_id)
            held = self._channels.get(meter_id)
            if held is None or held[0] != address:
                if held is not None:
                    await held[1].close()
                held = self._channels[meter_id] = (address, channel(address, peer=meter_id, tls=self.tls))
        return meter_pb2_grpc.MeterServiceStub(held[1])

    async def close(self) -> None:
        for _, ch in self._channels.values():
            await ch.close()
        self._channels.clear()
