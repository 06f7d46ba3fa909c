"""The meter's startup steps before it may tick: register, resume its registers, and
(after it ticks) open its hub channel.

Each step that waits on another party (settlement, lnd) retries under
:func:`p2pep.servicekit.supervise.supervised` with a ``sleep`` that the meter cuts short
when it is asked to stop; a refusal that retrying cannot change (settlement says the
registration is invalid) is raised at once.

Resuming never reuses a sequence number and never runs a register backwards: registers come
from the meter's own database; a fresh database resumes from what settlement stored.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
import structlog

from p2pep.metering.registers import RegisterSnapshot
from p2pep.paging import MAX_PAGE_SIZE, follow
from p2pep.servicekit.supervise import Backoff, supervised
from p2pep.settings.meter import MeterSettings, parse_node_address
from p2pep.v1 import settlement_pb2, settlement_pb2_grpc
from services.meter.lightning import LightningNode, ensure_channel
from services.meter.store import MeterStore

log = structlog.get_logger("meter")

RETRY_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL,
                         grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED})
"""Registration answers worth waiting out (settlement starting, restarting, overloaded)."""

Sleep = Callable[[float], Awaitable[None]]


async def register(settlement: settlement_pb2_grpc.SettlementServiceAsyncStub,
                   req: settlement_pb2.RegisterMeterRequest, sleep: Sleep) -> int:
    """Register until settlement answers; returns the last sequence number it stored."""

    async def once() -> int:
        try:
            resp = await settlement.RegisterMeter(req, timeout=5)
        except grpc.aio.AioRpcError as e:
            if e.code() not in RETRY_CODES:
                raise RuntimeError(f"settlement refused registration: {e.code().name}: {e.details()}") from e
            raise
        log.info("registered with settlement", address=req.address, last_seq=resp.last_seq)
        return int(resp.last_seq)

    def waiting(n: int, e: Exception) -> None:
        log.info("waiting for settlement", code=e.code().name if isinstance(e, grpc.aio.AioRpcError) else str(e))

    return await supervised(once, on_failure=waiting, retry_if=lambda e: isinstance(e, grpc.aio.AioRpcError),
                            backoff=Backoff(0.2, 3.0), sleep=sleep)


async def meter_info(settlement: settlement_pb2_grpc.SettlementServiceAsyncStub,
                     meter_id: str) -> settlement_pb2.MeterInfo | None:
    meters = await follow(settlement.ListMeters, settlement_pb2.ListMetersRequest(page_size=MAX_PAGE_SIZE), "meters", 5)
    return next((m for m in meters if m.meter_id == meter_id), None)


async def resume_registers(store: MeterStore, meter_id: str, settlement_last_seq: int,
                           info: Callable[[], Awaitable[settlement_pb2.MeterInfo | None]]) -> RegisterSnapshot:
    """The registers to go on from (``info`` asks settlement, only for a fresh database)."""
    snap = await store.registers()
    if snap is None:
        snap = RegisterSnapshot(meter_id)
        if settlement_last_seq:
            stored = await info()
            snap = RegisterSnapshot(meter_id, settlement_last_seq,
                                    stored.import_wh if stored else 0, stored.export_wh if stored else 0)
            log.warning("fresh database: resuming from settlement", seq=snap.seq, import_wh=snap.import_wh,
                        export_wh=snap.export_wh)
    elif snap.seq < settlement_last_seq:
        log.warning("settlement has a later seq than the database", db_seq=snap.seq, settlement=settlement_last_seq)
        snap = RegisterSnapshot(snap.meter_id, settlement_last_seq, snap.import_wh, snap.export_wh,
                                snap.import_remainder_wms, snap.export_remainder_wms, snap.last_timestamp_ms)
    return snap


async def ensure_hub_channel(lnd: LightningNode, s: MeterSettings, sleep: Sleep) -> None:
    """Have a channel with the hub (open one, half pushed to the hub, if there is none)."""
    parsed = parse_node_address(s.hub)
    assert parsed is not None
    hub_pubkey, hub_host = parsed

    async def ensure() -> None:
        await ensure_channel(lnd, hub_pubkey, hub_host, need_sat=0, open_sat=s.channel_sat,
                             push_sat=s.channel_sat // 2, wait_s=s.channel_wait_s, open_if_any=False)

    def not_ready(n: int, e: Exception) -> None:  # lnd errors, wallet not funded yet...
        log.warning("hub channel not ready", hub=hub_pubkey, error=str(e))

    await supervised(ensure, on_failure=not_ready, backoff=Backoff(1.0, 10.0), sleep=sleep)
