"""What settlement holds in memory for each meter and each contract it settles.

A :class:`LiveContract` is the contract (terms, state, signatures), its delivery ledger
(Wh attributed on each side, increments paid) and its worker's state. Settlement holds in
memory only the contracts it still works on (proposed, active, ended but not yet settled):
for those its memory is the truth while it runs, and every change is written to the store
before anything depends on it. A settled or rejected contract leaves memory; it is rebuilt
from its stored row and payments (:func:`from_row`) when someone asks for it, so memory is
bounded by the open contracts, not by history.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc

from p2pep.settling.contracts import Contract, ContractState, ContractTerms, EndReason
from p2pep.settling.increments import DeliveryLedger
from p2pep.settling.validation import StreamHead
from p2pep.v1 import meter_pb2_grpc
from services.settlement.store import MeterRow

RECONNECT_GRACE_S = 20.0  # longer than any call settlement makes to a meter (PayInvoice: payment_timeout_s)
_closing: set[asyncio.Task[None]] = set()  # old channels closing after a re-registration (kept referenced)

CONSUMER_SIDE_REASONS = {EndReason.ENDED_BY_CONSUMER, EndReason.CONSUMER_GONE,
                         EndReason.PAYMENT_FAILED, EndReason.PAYMENT_TIMEOUT}
"""Ends the consumer caused; any other early end is put down to the supplier's side."""


@dataclass
class MeterLink:
    """A registered meter: its registry row, the head of its reading stream, when it was last
    heard from (and last sent a reading settlement accepted), and a channel to its MeterService,
    dialled when the meter registers (:meth:`connect`) or when first used (a meter loaded from the
    store after a restart, until it registers again)."""

    row: MeterRow
    head: StreamHead | None = None
    last_seen: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one reading of this meter at a time
    dial: Callable[[str, str], grpc.aio.Channel] | None = None  # (address, meter id) -> a mTLS channel
    _channel: grpc.aio.Channel | None = None
    _stub: meter_pb2_grpc.MeterServiceAsyncStub | None = None

    @property
    def stub(self) -> meter_pb2_grpc.MeterServiceAsyncStub:
        """The one place settlement dials a meter, at the address it registered (checked by
        :func:`p2pep.registration.check_address`). The trust boundary binds here: a meter's
        address is dialled only once its registration is bound to the identity its
        certificate names, and the channel verifies the server by that name."""
        if self._stub is None:
            if self.dial is None:
                raise RuntimeError(f"no way to dial meter {self.row.meter_id}")
            self._channel = self.dial(self.row.address, self.row.meter_id)
            self._stub = meter_pb2_grpc.MeterServiceStub(self._channel)
        return self._stub

    def connect(self) -> None:
        """Dial the meter now and start its connection (TCP, the mutual-TLS handshake, HTTP/2)
        in the background, so its first contract does not wait for them: called when the meter
        registers, which it does once its own gRPC server is up. Nothing waits here; a meter
        that cannot be reached yet is retried by the channel (its reconnect backoff)."""
        if self._stub is None:
            self.stub  # noqa: B018 - dials the meter (the property is the one place that does)
        if self._channel is not None:
            self._channel.get_state(try_to_connect=True)

    async def reachable(self, silence_s: float, poll_s: float = 1.0) -> None:
        """Wait until the channel to the meter is READY, for as long as the meter is heard from
        (a new reading within ``silence_s``). On a lossy link a handshake is sometimes reset;
        the channel then waits out its reconnect backoff, and a call made meanwhile fails at
        once (UNAVAILABLE) although the meter is alive and the next attempt would get through.
        A meter that went silent returns at once: its call fails fast, as it should. A meter
        that registers again meanwhile gets a new channel (:meth:`reconnect` closes the old
        one): the wait goes on on the new one."""
        while True:
            self.connect()
            ch = self._channel
            if ch is None:  # a stub given without a channel of its own (in-process tests)
                return
            try:
                state = ch.get_state(try_to_connect=True)
                if state is grpc.ChannelConnectivity.READY:
                    return
                left = silence_s - (time.monotonic() - self.last_seen)
                if left <= 0:
                    return
                await asyncio.wait_for(ch.wait_for_state_change(state), min(left, poll_s))
            except TimeoutError:
                pass
            except grpc.aio.UsageError:  # closed under the wait
                if self._channel is ch:
                    return  # not replaced: let the call say what is wrong
                # replaced (the meter registered again): wait on the new channel

    async def reconnect(self, row: MeterRow) -> None:
        """The meter registered again (maybe at a new address): dial it afresh. The old channel
        is closed with a grace period, in the background: closing it at once would cancel the
        calls in flight on it, and a cancelled call raises CancelledError in its caller (a
        contract's payment worker), which ends that task as if settlement itself were stopping."""
        old, self._channel, self._stub = self._channel, None, None
        self.row = row
        if old is not None:
            task = asyncio.create_task(old.close(grace=RECONNECT_GRACE_S))
            _closing.add(task)
            task.add_done_callback(_closing.discard)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


@dataclass
class LiveContract:
    contract: Contract
    ledger: DeliveryLedger
    matcher_tier: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # new energy attributed, or ended
    task: asyncio.Task[None] | None = None
    finished: bool = False
    summary: dict[str, Any] | None = None
    fault: str = ""  # the worker's last unexpected error while it retries; "" when healthy
    last_payment: float = field(default_factory=time.monotonic)  # its last settled increment (or since loaded)
    collect_until: float | None = None  # monotonic deadline while what was delivered is still being collected
    collect_attempts: int = 0
    collect_gave_up: bool = False
    in_flight: bool = False  # the consumer's last answer: its lnd has the payment in flight
    in_flight_since: float | None = None  # monotonic, since when the consumer has said so

    @property
    def terms(self) -> ContractTerms:
        return self.contract.terms

    @property
    def cid(self) -> str:
        return self.contract.contract_id


def new_ledger(terms: ContractTerms) -> DeliveryLedger:
    # the meter's relay lets the next increment flow while the last one is paid:
    # the supplier is never owed more than one full increment (plus the partial one)
    return DeliveryLedger(terms.contract_id, terms.energy_wh, terms.increment_wh, terms.price_msat_per_kwh,
                          max_unpaid_wh=2 * terms.increment_wh)


def frozen_ledger(lc: LiveContract) -> DeliveryLedger:
    """A ledger closed at what was paid: nothing more is due."""
    led = new_ledger(lc.terms)
    for p in lc.ledger.paid:
        led.add_consumer_wh(p.to_wh - p.from_wh)
        led.add_supplier_wh(p.to_wh - p.from_wh)
    for p in lc.ledger.paid:
        led.record_payment(p.number, p.amount_msat, p.payment_hash)
    led.close()
    return led



def from_row(row: dict[str, Any], payments: Iterable[dict[str, Any]]) -> LiveContract:
    """A contract as the store holds it: its row, and its settled payments (any order)."""
    terms = ContractTerms.from_canonical(json.loads(row["terms_json"]))
    c = Contract(
        terms, ContractState(row["state"]), row["consumer_sig"], row["supplier_sig"],
        row["activated_ms"], row["ended_ms"], EndReason(row["end_reason"]) if row["end_reason"] else None,
    )
    ledger = new_ledger(terms)
    ledger.add_consumer_wh(row["consumer_wh"])
    ledger.add_supplier_wh(row["supplier_wh"])
    if row["closed_at_wh"] is not None:  # closed first: its final increment may be a partial one
        ledger.close()
    for p in sorted(payments, key=lambda p: p["increment"]):
        if p["preimage"]:
            ledger.record_payment(p["increment"], p["amount_msat"], p["payment_hash"])
    lc = LiveContract(c, ledger, row["matcher_tier"],
                      summary=json.loads(row["summary_json"]) if row["summary_json"] else None)
    lc.finished = lc.summary is not None or c.state is ContractState.REJECTED
    return lc
