"""Streams the reading outbox to settlement (``SettlementService.StreamReadings``).

One bidirectional stream; readings go out in seq order and leave the outbox only
when settlement acknowledges them (ACCEPTED or DUPLICATE; REJECTED ones are logged,
counted and dropped, since they would never be accepted). When the stream breaks
the outbox keeps filling; the sender reconnects with backoff and resends every
unacknowledged reading (settlement recognises resends by seq).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import structlog

from p2pep.metering.readings import SignedReading
from p2pep.servicekit.supervise import Backoff, supervised
from p2pep.v1 import common_pb2, settlement_pb2, settlement_pb2_grpc
from services.meter import metrics
from services.meter.store import MeterStore

log = structlog.get_logger("meter.sender")

Ack = settlement_pb2.ReadingAck


def reading_pb(signed: SignedReading, pubkey: bytes) -> common_pb2.Reading:
    r = signed.reading
    msg = common_pb2.Reading(
        meter_id=r.meter_id, seq=r.seq, import_wh=r.import_wh, export_wh=r.export_wh,
        signature=signed.signature, pubkey=pubkey,
    )
    msg.timestamp.FromMilliseconds(r.timestamp_ms)
    return msg


class ReadingSender:
    def __init__(
        self,
        store: MeterStore,
        stub: Callable[[], settlement_pb2_grpc.SettlementServiceAsyncStub],
        pubkey_hex: str,
        *,
        max_backoff_s: float = 2.0,
    ) -> None:
        self.store = store
        self._stub = stub
        self._pubkey = bytes.fromhex(pubkey_hex)
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._max_backoff = max_backoff_s
        self.connected = False
        self.size = 0
        self.rejected = 0
        self.acked = 0

    async def start(self) -> None:
        await self._resize()

    def notify(self) -> None:
        """A reading was added to the outbox."""
        self.size += 1
        metrics.OUTBOX.set(self.size)
        self._drained.clear()
        self._wake.set()

    async def _resize(self) -> None:
        self.size = await self.store.outbox_size()
        metrics.OUTBOX.set(self.size)
        if self.size == 0:
            self._drained.set()
        else:
            self._drained.clear()

    async def flush(self, timeout_s: float) -> bool:
        """Wait until the outbox is empty (True) or ``timeout_s`` passes (False)."""
        try:
            await asyncio.wait_for(self._drained.wait(), timeout_s)
            return True
        except TimeoutError:
            return False

    async def run(self) -> None:
        """Send until cancelled, reconnecting with backoff (reset whenever a session got acks)."""
        acked_at_start = self.acked

        async def session() -> None:
            nonlocal acked_at_start
            acked_at_start = self.acked
            await self._session()
            raise ConnectionError("reading stream ended")

        def broken(n: int, e: Exception) -> None:  # keep sending whatever went wrong: nothing leaves unacked
            self.connected = False
            if isinstance(e, grpc.aio.AioRpcError | ConnectionError | asyncio.InvalidStateError | grpc.aio.UsageError):
                detail = f"{e.code().name}: {e.details()}" if isinstance(e, grpc.aio.AioRpcError) else str(e)
                log.info("reading stream broken", detail=detail, unacked=self.size)
            else:
                log.exception("reading stream failed", unacked=self.size)

        await supervised(session, on_failure=broken, backoff=Backoff(0.1, self._max_backoff),
                         progressed=lambda: self.acked > acked_at_start)

    async def _session(self) -> None:
        """One stream: resend the outbox, then follow it, until the stream breaks."""
        call = self._stub().StreamReadings()
        metrics.STREAM_RECONNECTS.inc()
        reader = asyncio.create_task(self._read_acks(call))
        waker: asyncio.Task[bool] | None = None
        try:
            last_sent = 0
            while True:
                self._wake.clear()
                batch = await self.store.outbox(after_seq=last_sent)
                for signed in batch:
                    if reader.done():
                        break
                    await call.write(reading_pb(signed, self._pubkey))
                    last_sent = signed.reading.seq
                    if not self.connected:
                        self.connected = True
                        log.info("reading stream open", resending=len(batch), from_seq=signed.reading.seq)
                if reader.done():
                    reader.result()  # raises why the stream ended
                    raise ConnectionError("reading stream ended")
                if batch:
                    continue
                waker = asyncio.create_task(self._wake.wait())
                await asyncio.wait({waker, reader}, return_when=asyncio.FIRST_COMPLETED)
                waker.cancel()
        finally:
            if waker is not None:
                waker.cancel()
            # acks that arrived before the stream broke still count: let the reader drain them
            await asyncio.wait({reader}, timeout=0.5 if call.done() else 0)
            reader.cancel()
            call.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _read_acks(self, call: grpc.aio.StreamStreamCall[common_pb2.Reading, settlement_pb2.ReadingAck]) -> None:
        while True:
            ack = await call.read()
            if not isinstance(ack, settlement_pb2.ReadingAck):  # grpc.aio.EOF
                raise ConnectionError("settlement closed the reading stream")
            metrics.ACKS.labels(Ack.Status.Name(ack.status)).inc()
            if ack.status == Ack.STATUS_REJECTED:
                self.rejected += 1
                metrics.REJECTED.labels(ack.reason or "UNKNOWN").inc()
                log.error("reading rejected by settlement", seq=ack.seq, reason=ack.reason, message=ack.message)
            elif ack.status not in (Ack.STATUS_ACCEPTED, Ack.STATUS_DUPLICATE):
                log.warning("unknown reading ack", seq=ack.seq, status=ack.status)
                continue
            await self.store.outbox_delete(ack.seq)
            self.acked += 1
            await self._resize()
