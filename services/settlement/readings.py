"""Signed readings in: validated, stored with the energy they add to contracts, acknowledged.

A reading is checked against the meter's registered key and the head of its stream
(:func:`p2pep.settling.validation.validate_reading`); an accepted one is stored together with
its attribution (one transaction) *before* it is acknowledged, then the contracts' ledgers
grow and their workers wake. One reading of a meter is handled at a time (its link's lock),
and from attribution to the ledgers no contract changes state (the engine's ledger lock: a
contract ended while the reading was being stored would otherwise have a closed ledger to add
to, and the reading's other contracts would lose their shares). Only an accepted new reading
refreshes the meter's liveness (``MeterLink.last_seen``): a resent (duplicate), replayed or
otherwise rejected one does not, so a meter that only replays old readings counts as silent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping

import structlog

from p2pep.bounds import MAX_MS
from p2pep.metering.readings import Reading, SignedReading
from p2pep.pbconv import ts_ms
from p2pep.refusals import InvalidArgument
from p2pep.settling.allocation import AllocationTarget, allocate
from p2pep.settling.contracts import ContractState
from p2pep.settling.validation import (
    Accepted,
    Duplicate,
    Rejected,
    StreamHead,
    needs_stored_lookup,
    validate_reading,
)
from p2pep.v1 import common_pb2, settlement_pb2
from services.settlement import metrics
from services.settlement.live import LiveContract
from services.settlement.registry import MeterRegistry
from services.settlement.store import Store

log = structlog.get_logger("settlement")
Ack = settlement_pb2.ReadingAck
Attribution = tuple[str, str, int]  # contract id, "consumer" | "supplier", Wh


class ReadingIngest:
    def __init__(self, store: Store, meters: MeterRegistry, contracts: Mapping[str, LiveContract],
                 ledger_lock: asyncio.Lock) -> None:
        self.store = store
        self.meters = meters
        self.contracts = contracts
        self.ledger_lock = ledger_lock

    async def ingest(self, msg: common_pb2.Reading) -> settlement_pb2.ReadingAck:
        try:
            t_ms = ts_ms(msg.timestamp, "timestamp")
        except InvalidArgument as e:  # judged MALFORMED below, like any time out of range
            t_ms = -1 if msg.timestamp.seconds < 0 else MAX_MS + 1
            log.debug("reading timestamp out of range", meter_id=msg.meter_id, error=str(e))
        r = Reading(msg.meter_id, msg.seq, msg.import_wh, msg.export_wh, t_ms)
        signed = SignedReading(r, bytes(msg.signature))
        link = self.meters.get(msg.meter_id)
        async with link.lock if link else asyncio.Lock():
            head = link.head if link else None
            stored = await self.store.reading(r.meter_id, r.seq) if needs_stored_lookup(r, head) else None
            verdict = validate_reading(
                signed, pubkey_hex=link.row.pubkey if link else None, head=head, stored=stored,
                claimed_pubkey_hex=msg.pubkey.hex() if msg.pubkey else None,
            )
            if isinstance(verdict, Rejected):
                metrics.READINGS.labels("rejected").inc()
                metrics.REJECTED.labels(verdict.reason.value).inc()
                log.warning("reading rejected", meter_id=r.meter_id, seq=r.seq, reason=verdict.reason.value,
                            message=verdict.message)
                return Ack(seq=r.seq, status=Ack.STATUS_REJECTED, reason=verdict.reason.value, message=verdict.message)
            assert link is not None
            if isinstance(verdict, Duplicate):  # a resend proves nothing about the meter now
                metrics.READINGS.labels("duplicate").inc()
                return Ack(seq=r.seq, status=Ack.STATUS_DUPLICATE)
            assert isinstance(verdict, Accepted)
            async with self.ledger_lock:
                attributions = attribute(r, head, self.contracts.values())
                await self.store.accept_reading(r, signed.signature, attributions)
                link.head = StreamHead.of(r)
                link.last_seen = time.monotonic()  # only a new reading shows the meter is alive (and metrics)
                for cid, side, wh in attributions:
                    lc = self.contracts[cid]
                    (lc.ledger.add_consumer_wh if side == "consumer" else lc.ledger.add_supplier_wh)(wh)
                    if side == "consumer":
                        metrics.DELIVERED_WH.inc(wh)
                    lc.wake.set()
        metrics.READINGS.labels("accepted").inc()
        return Ack(seq=r.seq, status=Ack.STATUS_ACCEPTED)


def attribute(r: Reading, head: StreamHead | None, contracts: Iterable[LiveContract]) -> list[Attribution]:
    """Split this reading's register deltas over the meter's active contracts (pure)."""
    if head is None:
        return []
    live = list(contracts)
    out: list[Attribution] = []
    for side, delta in (("consumer", r.import_wh - head.import_wh), ("supplier", r.export_wh - head.export_wh)):
        if delta <= 0:
            continue
        targets = []
        for lc in live:
            t = lc.terms
            if lc.contract.state is not ContractState.ACTIVE or getattr(t, side) != r.meter_id:
                continue
            room = lc.ledger.consumer_room_wh if side == "consumer" else lc.ledger.supplier_room_wh
            other = t.supplier if side == "consumer" else t.consumer
            targets.append(AllocationTarget(lc.cid, room, t.average_power_w(), t.tier, group=other))
        if targets:
            alloc = allocate(delta, targets)
            out += [(cid, side, wh) for cid, wh in alloc.shares.items() if wh > 0]
    return out
