"""Settlement's engine: contracts, delivery ledgers, reading ingestion, payments.

One asyncio task per active contract pays its increments strictly in order:
the supplier's meter invoices, the consumer's meter pays, settlement checks the
preimage. Each step is written to SQLite before the next, and both meters answer
idempotently per (contract, increment), so a settlement killed at any point
resumes without paying anything twice.

The worker is supervised step by step (:func:`p2pep.servicekit.supervised`): an unexpected
error is logged with its contract, counted, shown on the contract (``ContractRecord.fault``,
which the live view and the console display) and the step is retried with backoff, which the
same idempotence makes safe. After ``worker_attempts`` failures in a row the contract is ended
cleanly (``SETTLEMENT_FAULT``) at what was paid, so its meters stop relying on it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog

from p2pep.canonical import canonical_json
from p2pep.metering.readings import Reading, SignedReading
from p2pep.pbconv import enum_value, now_ms, ts_ms
from p2pep.servicekit import Backoff, GaveUp, supervised
from p2pep.settling.allocation import AllocationTarget, allocate
from p2pep.settling.contracts import (
    Contract,
    ContractError,
    ContractState,
    ContractTerms,
    EndReason,
    settlement_summary,
)
from p2pep.settling.increments import DeliveryLedger, IncrementDue
from p2pep.settling.validation import (
    Accepted,
    Duplicate,
    Rejected,
    StreamHead,
    needs_stored_lookup,
    validate_reading,
)
from p2pep.v1 import (
    common_pb2,
    matcher_pb2,
    matcher_pb2_grpc,
    meter_pb2,
    meter_pb2_grpc,
    settlement_pb2,
)
from services.settlement import metrics
from services.settlement.settings import SettlementSettings
from services.settlement.store import MeterRow, Store, dumps

log = structlog.get_logger("settlement")

STATE_PB = {
    ContractState.PROPOSED: settlement_pb2.CONTRACT_STATE_PROPOSED,
    ContractState.ACTIVE: settlement_pb2.CONTRACT_STATE_ACTIVE,
    ContractState.COMPLETED: settlement_pb2.CONTRACT_STATE_COMPLETED,
    ContractState.ENDED_EARLY: settlement_pb2.CONTRACT_STATE_ENDED_EARLY,
    ContractState.DEFAULTED: settlement_pb2.CONTRACT_STATE_DEFAULTED,
    ContractState.REJECTED: settlement_pb2.CONTRACT_STATE_REJECTED,
}
CONSUMER_SIDE_REASONS = {EndReason.ENDED_BY_CONSUMER, EndReason.CONSUMER_GONE,
                         EndReason.PAYMENT_FAILED, EndReason.PAYMENT_TIMEOUT}


class SettlementError(Exception):
    """Refused request: ``code`` is the gRPC status to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class MeterLink:
    row: MeterRow
    head: StreamHead | None = None
    last_seen: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _channel: grpc.aio.Channel | None = None
    _stub: meter_pb2_grpc.MeterServiceAsyncStub | None = None

    @property
    def stub(self) -> meter_pb2_grpc.MeterServiceAsyncStub:
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(self.row.address)
            self._stub = meter_pb2_grpc.MeterServiceStub(self._channel)
        return self._stub

    async def reconnect(self, address: str) -> None:
        if self._channel is not None:
            await self._channel.close()
        self._channel, self._stub = None, None
        from dataclasses import replace

        self.row = replace(self.row, address=address)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


@dataclass
class LiveContract:
    contract: Contract
    ledger: DeliveryLedger
    matcher_tier: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    finished: bool = False
    summary: dict[str, Any] | None = None
    fault: str = ""  # the worker's last unexpected error while it retries; "" when healthy

    @property
    def terms(self) -> ContractTerms:
        return self.contract.terms

    @property
    def cid(self) -> str:
        return self.contract.contract_id


class Engine:
    def __init__(self, settings: SettlementSettings, store: Store,
                 matcher: matcher_pb2_grpc.MatcherServiceAsyncStub | None = None, anchor: Any | None = None) -> None:
        self.s = settings
        self.store = store
        self.matcher = matcher
        self.anchor = anchor  # AnchorClient-like: add_leaf(kind, contract_id, leaf_hash), proofs(contract_id)
        self.meters: dict[str, MeterLink] = {}
        self.contracts: dict[str, LiveContract] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._backoff = Backoff(settings.worker_backoff_initial_s, settings.worker_backoff_max_s)

    # --- start / stop ---------------------------------------------------------------
    async def load(self) -> None:
        for row in await self.store.meters():
            link = MeterLink(row)
            last = await self.store.last_reading(row.meter_id)
            link.head = StreamHead.of(last) if last else None
            self.meters[row.meter_id] = link
        paid: dict[str, list[dict[str, Any]]] = {}
        for p in await self.store.payments():
            paid.setdefault(p["contract_id"], []).append(p)
        for crow in await self.store.contracts():
            terms = ContractTerms.from_canonical(json.loads(crow["terms_json"]))
            c = Contract(
                terms, ContractState(crow["state"]), crow["consumer_sig"], crow["supplier_sig"],
                crow["activated_ms"], crow["ended_ms"], EndReason(crow["end_reason"]) if crow["end_reason"] else None,
            )
            ledger = self._ledger(terms)
            ledger.add_consumer_wh(crow["consumer_wh"])
            ledger.add_supplier_wh(crow["supplier_wh"])
            for p in sorted(paid.get(terms.contract_id, []), key=lambda p: p["increment"]):
                if p["preimage"]:
                    ledger.record_payment(p["increment"], p["amount_msat"], p["payment_hash"])
            if crow["closed_at_wh"] is not None:
                ledger.close()
            lc = LiveContract(c, ledger, crow["matcher_tier"],
                              summary=json.loads(crow["summary_json"]) if crow["summary_json"] else None)
            lc.finished = lc.summary is not None or c.state is ContractState.REJECTED
            self.contracts[terms.contract_id] = lc
            if not lc.finished and c.state is not ContractState.PROPOSED:
                self._start_worker(lc)
            elif c.state is ContractState.PROPOSED:
                self._spawn(self._reject(lc, "settlement restarted before both parties signed"))
        self._gauge()
        log.info("settlement loaded", meters=len(self.meters), contracts=len(self.contracts))

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        t = asyncio.create_task(coro, name=getattr(coro, "__qualname__", None))
        self._tasks.add(t)
        t.add_done_callback(self._task_done)
        return t

    def _task_done(self, t: asyncio.Task[Any]) -> None:
        """No task dies unseen: one that ended by an error is logged and counted."""
        self._tasks.discard(t)
        if t.cancelled() or t.exception() is None:
            return
        exc = t.exception()
        metrics.TASK_FAILURES.labels("other").inc()
        log.error("settlement task failed", task=t.get_name(),
                  exc_info=(type(exc), exc, exc.__traceback__) if exc else None)

    async def stop(self) -> None:
        self._stopping = True
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for link in self.meters.values():
            await link.close()

    def _ledger(self, terms: ContractTerms) -> DeliveryLedger:
        # the meter's relay lets the next increment flow while the last one is paid:
        # the supplier is never owed more than one full increment (plus the partial one)
        return DeliveryLedger(terms.contract_id, terms.energy_wh, terms.increment_wh, terms.price_msat_per_kwh,
                              max_unpaid_wh=2 * terms.increment_wh)

    def _gauge(self) -> None:
        counts: dict[str, int] = {}
        for lc in self.contracts.values():
            counts[lc.contract.state.value] = counts.get(lc.contract.state.value, 0) + 1
        for st in ContractState:
            metrics.CONTRACTS.labels(st.value).set(counts.get(st.value, 0))

    # --- meters ---------------------------------------------------------------------
    async def register_meter(
        self, meter_id: str, pubkey: str, node_pubkey: str, address: str, role: str, node_address: str = ""
    ) -> int:
        from p2pep.metering.signing import is_valid_pubkey

        if not meter_id:
            raise SettlementError(grpc.StatusCode.INVALID_ARGUMENT, "meter_id: must not be empty")
        if not is_valid_pubkey(pubkey):
            raise SettlementError(grpc.StatusCode.INVALID_ARGUMENT, "pubkey: must be a 33-byte compressed secp256k1 key in hex")
        if not address:
            raise SettlementError(grpc.StatusCode.INVALID_ARGUMENT, "address: must be host:port of the MeterService")
        if role not in ("producer", "consumer", "prosumer"):
            raise SettlementError(grpc.StatusCode.INVALID_ARGUMENT, "role: must be producer, consumer or prosumer")
        link = self.meters.get(meter_id)
        if link is not None and link.row.pubkey != pubkey:
            raise SettlementError(grpc.StatusCode.PERMISSION_DENIED,
                                  f"pubkey: meter {meter_id} is registered with another key")
        row = MeterRow(meter_id, pubkey, node_pubkey, address, role, node_address)
        await self.store.upsert_meter(row)
        if link is None:
            link = self.meters[meter_id] = MeterLink(row)
        else:
            await link.reconnect(address)
            link.row = row
        link.last_seen = time.monotonic()
        log.info("meter registered", meter_id=meter_id, address=address, role=role)
        return link.head.seq if link.head else 0

    # --- readings -------------------------------------------------------------------
    async def ingest(self, msg: common_pb2.Reading) -> settlement_pb2.ReadingAck:
        Ack = settlement_pb2.ReadingAck
        r = Reading(msg.meter_id, msg.seq, msg.import_wh, msg.export_wh, ts_ms(msg.timestamp))
        signed = SignedReading(r, bytes(msg.signature))
        link = self.meters.get(msg.meter_id)
        lock = link.lock if link else asyncio.Lock()
        async with lock:
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
            link.last_seen = time.monotonic()
            if isinstance(verdict, Duplicate):
                metrics.READINGS.labels("duplicate").inc()
                return Ack(seq=r.seq, status=Ack.STATUS_DUPLICATE)
            assert isinstance(verdict, Accepted)
            attributions = self._attribute(r, head)
            await self.store.accept_reading(r, signed.signature, attributions)
            link.head = StreamHead.of(r)
            for cid, side, wh in attributions:
                lc = self.contracts[cid]
                (lc.ledger.add_consumer_wh if side == "consumer" else lc.ledger.add_supplier_wh)(wh)
                if side == "consumer":
                    metrics.DELIVERED_WH.inc(wh)
                lc.wake.set()
        metrics.READINGS.labels("accepted").inc()
        return Ack(seq=r.seq, status=Ack.STATUS_ACCEPTED)

    def _attribute(self, r: Reading, head: StreamHead | None) -> list[tuple[str, str, int]]:
        """Split this reading's register deltas over the meter's active contracts (pure)."""
        if head is None:
            return []
        out: list[tuple[str, str, int]] = []
        for side, delta in (("consumer", r.import_wh - head.import_wh), ("supplier", r.export_wh - head.export_wh)):
            if delta <= 0:
                continue
            targets = []
            for lc in self.contracts.values():
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

    # --- contracts ------------------------------------------------------------------
    async def propose(self, mc: common_pb2.Contract) -> None:
        """Turn a match into a contract both meters sign; then deliver and pay."""
        if mc.contract_id in self.contracts:
            return
        cons, sup = self.meters.get(mc.consumer), self.meters.get(mc.supplier)
        start = ts_ms(mc.start) if mc.HasField("start") else now_ms()
        end = ts_ms(mc.end) if mc.HasField("end") else 0
        if end <= start:
            end = start + self.s.contract_period_s * 1000
        if cons is None or sup is None:
            log.warning("match for an unregistered meter", contract_id=mc.contract_id)
            await self._report_end(mc.contract_id, EndReason.REJECTED, 0, consumer_side=cons is None)
            return
        try:
            terms = ContractTerms(
                contract_id=mc.contract_id, consumer=mc.consumer, supplier=mc.supplier,
                consumer_pubkey=cons.row.pubkey, supplier_pubkey=sup.row.pubkey, energy_wh=mc.energy_wh,
                price_msat_per_kwh=mc.price_msat_per_kwh, start_ms=start, end_ms=end, tier=1,
                increment_wh=self.s.increment_wh,
            )
        except ContractError as exc:
            log.error("match gives invalid terms", contract_id=mc.contract_id, error=str(exc))
            return
        lc = LiveContract(Contract(terms), self._ledger(terms), int(mc.tier))
        self.contracts[terms.contract_id] = lc

        def failed(n: int, exc: Exception) -> None:
            lc.fault = f"{type(exc).__name__}: {exc}"[:300]
            metrics.TASK_FAILURES.labels("proposal").inc()
            log.exception("contract proposal failed", contract_id=lc.cid, failures_in_a_row=n,
                          attempts=self.s.worker_attempts)

        try:
            await supervised(lambda: self._sign_and_activate(lc), on_failure=failed, backoff=self._backoff,
                             attempts=self.s.worker_attempts)
            lc.fault = ""
        except GaveUp as exc:
            lc.contract = Contract(lc.terms)
            try:
                await self._reject(lc, f"settlement fault: {exc}")
            except Exception:
                log.exception("contract rejected in memory only", contract_id=lc.cid)
                lc.finished = True

    async def _sign_and_activate(self, lc: LiveContract) -> None:
        """Both meters sign (idempotent per contract), then the contract is active and its
        worker starts. Safe to repeat from the top after a failure."""
        cons, sup = self.meters[lc.terms.consumer], self.meters[lc.terms.supplier]
        lc.contract = Contract(lc.terms)
        await self._save(lc)
        terms_json = canonical_json(lc.terms.canonical()).decode()
        results = await asyncio.gather(
            cons.stub.SignContract(meter_pb2.SignContractRequest(terms_json=terms_json), timeout=90),
            sup.stub.SignContract(meter_pb2.SignContractRequest(terms_json=terms_json), timeout=90),
            return_exceptions=True,
        )
        for party, res in zip(("consumer", "supplier"), results):
            if isinstance(res, grpc.aio.AioRpcError):
                log.warning("contract refused", contract_id=lc.cid, party=party, detail=res.details())
                await self._reject(lc, f"{party} refused: {res.details()}", consumer_side=party == "consumer")
                return
            if isinstance(res, BaseException):
                raise res
            try:
                lc.contract = lc.contract.with_signature(party, bytes(res.signature))
            except ContractError as exc:
                await self._reject(lc, str(exc), consumer_side=party == "consumer")
                return
        lc.contract = lc.contract.activate(now_ms())
        await self._save(lc)
        t = lc.terms
        log.info("contract active", contract_id=lc.cid, consumer=t.consumer, supplier=t.supplier,
                 energy_wh=t.energy_wh, price=t.price_msat_per_kwh, tier=lc.matcher_tier)
        if self.anchor is not None:
            self._spawn(self.anchor.add_leaf("contract", lc.cid, t.hash()))
        self._start_worker(lc)
        await self._notify(lc)

    async def _reject(self, lc: LiveContract, why: str, consumer_side: bool = True) -> None:
        lc.contract = lc.contract.end(EndReason.REJECTED, now_ms())
        lc.finished = True
        await self._save(lc)
        await self._report_end(lc.cid, EndReason.REJECTED, 0, consumer_side=consumer_side)
        log.info("contract rejected", contract_id=lc.cid, why=why)

    def _start_worker(self, lc: LiveContract) -> None:
        if lc.task is None or lc.task.done():  # one worker per contract, however often this is asked
            lc.task = self._spawn(self._worker(lc))

    async def end_contract(self, contract_id: str, reason: EndReason) -> LiveContract:
        lc = self.contracts.get(contract_id)
        if lc is None:
            raise SettlementError(grpc.StatusCode.NOT_FOUND, f"contract_id: no contract {contract_id!r}")
        if lc.contract.state.final:
            return lc
        if lc.contract.state is not ContractState.ACTIVE:
            raise SettlementError(grpc.StatusCode.FAILED_PRECONDITION, f"contract {contract_id} is not active yet")
        lc.contract = lc.contract.end(reason, now_ms())
        lc.ledger.close()
        await self._save(lc)
        lc.wake.set()
        log.info("contract ending", contract_id=contract_id, reason=reason.value,
                 delivered_wh=lc.ledger.delivered_wh, paid_wh=lc.ledger.paid_wh)
        return lc

    async def _worker(self, lc: LiveContract) -> None:
        def failed(n: int, exc: Exception) -> None:
            lc.fault = f"{type(exc).__name__}: {exc}"[:300]
            metrics.TASK_FAILURES.labels("contract_worker").inc()
            self._faulted_gauge()
            log.exception("contract worker failed", contract_id=lc.cid, failures_in_a_row=n,
                          attempts=self.s.worker_attempts)

        try:
            done = False
            while not done:
                done = await supervised(lambda: self._step(lc), on_failure=failed, backoff=self._backoff,
                                        attempts=self.s.worker_attempts)
                if lc.fault:
                    log.info("contract worker recovered", contract_id=lc.cid, after=lc.fault)
                    lc.fault = ""
                    self._faulted_gauge()
        except GaveUp as exc:
            await self._abandon(lc, exc)

    async def _step(self, lc: LiveContract) -> bool:
        """One step of a contract's worker: pay the next increment due, wait for energy, or
        finish. True once the contract is settled. Safe to repeat after a failure."""
        due = lc.ledger.next_due()
        if due is not None and lc.contract.state is not ContractState.DEFAULTED:
            await self._pay(lc, due)  # False (defaulted or ended) loops on to finish
            return False
        if lc.contract.state.final:
            await self._finish(lc)
            return True
        lc.wake.clear()
        await lc.wake.wait()
        return False

    async def _abandon(self, lc: LiveContract, exc: GaveUp) -> None:
        """The worker cannot go on: end the contract at what was paid (the supplier is owed at
        most the one increment in flight) and tell both meters, so the consumer's relay blocks."""
        metrics.CONTRACTS_ABANDONED.inc()
        log.error("contract worker gave up; ending the contract", contract_id=lc.cid, error=str(exc))
        if not lc.contract.state.final:
            lc.contract = lc.contract.end(EndReason.SETTLEMENT_FAULT, now_ms())
        lc.ledger = self._frozen(lc)
        try:
            await self._finish(lc)
        except Exception:
            log.exception("contract ended in memory only; it is finished again after a restart",
                          contract_id=lc.cid)
            lc.finished = True
            await self._notify(lc)
        self._faulted_gauge()

    def _faulted_gauge(self) -> None:
        metrics.CONTRACTS_FAULTED.set(sum(1 for lc in self.contracts.values() if lc.fault and not lc.finished))

    async def _pay(self, lc: LiveContract, due: IncrementDue) -> bool:
        t = lc.terms
        cons, sup = self.meters[t.consumer], self.meters[t.supplier]
        await self.store.payment_intent(lc.cid, due.number, due.from_wh, due.to_wh, due.amount_msat)
        row = await self.store.payment(lc.cid, due.number)
        t0 = time.perf_counter()
        try:
            if row and row["payment_request"]:
                pr, phash = row["payment_request"], row["payment_hash"]
            else:
                inv = await sup.stub.CreateInvoice(meter_pb2.CreateInvoiceRequest(
                    contract_id=lc.cid, increment=due.number, from_wh=due.from_wh, to_wh=due.to_wh,
                    amount_msat=due.amount_msat), timeout=15)
                pr, phash = inv.payment_request, inv.payment_hash
                await self.store.payment_invoice(lc.cid, due.number, phash, pr)
        except grpc.aio.AioRpcError as err:
            metrics.PAYMENTS.labels("no_invoice").inc()
            log.warning("supplier gave no invoice", contract_id=lc.cid, increment=due.number, detail=err.details())
            await self.store.drop_unsettled(lc.cid, due.number)
            if not lc.contract.state.final:
                await self.end_contract(lc.cid, EndReason.SUPPLIER_GONE)
            else:  # ended already: the supplier cannot be paid the rest, stop asking
                lc.ledger = self._frozen(lc)
            return False
        try:
            paid = await cons.stub.PayInvoice(meter_pb2.PayInvoiceRequest(
                contract_id=lc.cid, increment=due.number, from_wh=due.from_wh, to_wh=due.to_wh,
                payment_request=pr), timeout=self.s.payment_timeout_s)
        except grpc.aio.AioRpcError as err:
            timeout = err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            metrics.PAYMENTS.labels("timeout" if timeout else "failed").inc()
            log.warning("increment not paid", contract_id=lc.cid, increment=due.number, detail=err.details())
            await self._default(lc, EndReason.PAYMENT_TIMEOUT if timeout else EndReason.PAYMENT_FAILED)
            return False
        if hashlib.sha256(bytes.fromhex(paid.preimage)).hexdigest() != phash:
            metrics.PAYMENTS.labels("bad_preimage").inc()
            log.error("preimage does not match the invoice", contract_id=lc.cid, increment=due.number)
            await self._default(lc, EndReason.PAYMENT_FAILED)
            return False
        await self.store.payment_settled(lc.cid, due.number, paid.preimage, paid.fee_msat, now_ms())
        lc.ledger.record_payment(due.number, due.amount_msat, phash)
        metrics.PAYMENTS.labels("settled").inc()
        metrics.PAID_MSAT.inc(due.amount_msat)
        seconds = time.perf_counter() - t0
        metrics.PAYMENT_SECONDS.observe(seconds)
        log.info("increment paid", contract_id=lc.cid, increment=due.number, amount_msat=due.amount_msat,
                 fee_msat=paid.fee_msat, seconds=round(seconds, 4))
        self._spawn(self._notify(lc))
        return True

    def _frozen(self, lc: LiveContract) -> DeliveryLedger:
        """A ledger closed at what was paid: nothing more is due."""
        led = self._ledger(lc.terms)
        for p in lc.ledger.paid:
            led.add_consumer_wh(p.to_wh - p.from_wh)
            led.add_supplier_wh(p.to_wh - p.from_wh)
        for p in lc.ledger.paid:
            led.record_payment(p.number, p.amount_msat, p.payment_hash)
        led.close()
        return led

    async def _default(self, lc: LiveContract, reason: EndReason) -> None:
        """The consumer did not pay: delivery stops now; the supplier is owed at most this increment."""
        if not lc.contract.state.final:
            lc.contract = lc.contract.end(reason, now_ms())
        elif lc.contract.state is not ContractState.DEFAULTED:
            # ended already (e.g. end time) and the final payment failed
            from dataclasses import replace
            lc.contract = replace(lc.contract, state=ContractState.DEFAULTED, end_reason=reason)
        lc.ledger.close()
        await self.store.drop_unsettled(lc.cid, lc.ledger.increments_paid + 1)
        await self._save(lc)

    async def _finish(self, lc: LiveContract) -> None:
        c, led = lc.contract, lc.ledger
        lc.summary = settlement_summary(c, wh_delivered=led.delivered_wh, msat_paid=led.paid_msat,
                                        increments_paid=led.increments_paid, wh_paid=led.paid_wh)
        lc.finished = True
        await self._save(lc)
        log.info("contract settled", contract_id=lc.cid, state=c.state.value,
                 reason=c.end_reason.value if c.end_reason else None, **{k: lc.summary[k] for k in (
                     "wh_delivered", "wh_paid", "msat_paid", "increments_paid")})
        assert c.end_reason is not None
        await self._report_end(lc.cid, c.end_reason, led.delivered_wh)
        if self.anchor is not None:
            from p2pep.canonical import settlement_hash

            self._spawn(self.anchor.add_leaf("settlement", lc.cid, settlement_hash(lc.summary)))
        await self._notify(lc)
        self._gauge()

    async def _report_end(self, cid: str, reason: EndReason, delivered_wh: int, consumer_side: bool | None = None) -> None:
        if self.matcher is None:
            return
        if reason in (EndReason.END_TIME, EndReason.ENERGY_DELIVERED):
            outcome = matcher_pb2.CONTRACT_OUTCOME_COMPLETED
        elif (reason in CONSUMER_SIDE_REASONS) if consumer_side is None else consumer_side:
            outcome = matcher_pb2.CONTRACT_OUTCOME_CONSUMER_DEFAULTED
        else:
            outcome = matcher_pb2.CONTRACT_OUTCOME_SUPPLIER_DEFAULTED
        for attempt in range(5):
            try:
                await self.matcher.ReportContractEnd(matcher_pb2.ReportContractEndRequest(
                    contract_id=cid, outcome=outcome, delivered_wh=delivered_wh), timeout=10)
                return
            except grpc.aio.AioRpcError as err:
                if err.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                    log.warning("matcher refused contract end", contract_id=cid, detail=err.details())
                    return
                await asyncio.sleep(0.5 * (attempt + 1))
        log.error("matcher unreachable for contract end", contract_id=cid)

    async def _notify(self, lc: LiveContract) -> None:
        """Tell both meters the contract's state (best effort: they also poll ListContracts)."""
        rec = self.record(lc)
        for mid in (lc.terms.consumer, lc.terms.supplier):
            link = self.meters.get(mid)
            if link is None:
                continue
            try:
                await link.stub.UpdateContract(rec, timeout=5)
            except grpc.aio.AioRpcError as err:
                log.debug("meter not told of contract update", meter_id=mid, detail=err.details())

    async def _save(self, lc: LiveContract) -> None:
        c, led = lc.contract, lc.ledger
        await self.store.save_contract({
            "contract_id": lc.cid,
            "terms_json": canonical_json(lc.terms.canonical()).decode(),
            "state": c.state.value,
            "consumer_sig": c.consumer_signature,
            "supplier_sig": c.supplier_signature,
            "activated_ms": c.activated_at_ms,
            "ended_ms": c.ended_at_ms,
            "end_reason": c.end_reason.value if c.end_reason else None,
            "consumer_wh": led.consumer_wh,
            "supplier_wh": led.supplier_wh,
            "closed_at_wh": led.delivered_wh if led.closed else None,
            "summary_json": dumps(lc.summary) if lc.summary else None,
            "matcher_tier": lc.matcher_tier,
        })
        self._gauge()

    async def sweep_forever(self) -> None:
        """End contracts at their end time, when fully delivered, or when a party went silent."""
        def failed(n: int, exc: Exception) -> None:
            metrics.TASK_FAILURES.labels("sweeper").inc()
            log.exception("contract sweep failed", failures_in_a_row=n)

        while not self._stopping:
            await asyncio.sleep(self.s.sweep_interval_s)
            await supervised(self._sweep, on_failure=failed, backoff=self._backoff)

    async def _sweep(self) -> None:
        t, mono = now_ms(), time.monotonic()
        for lc in list(self.contracts.values()):
            if lc.contract.state is not ContractState.ACTIVE:
                continue
            reason: EndReason | None = None
            if lc.ledger.delivered_wh >= lc.terms.energy_wh:
                reason = EndReason.ENERGY_DELIVERED
            elif t >= lc.terms.end_ms:
                reason = EndReason.END_TIME
            elif mono - self.meters[lc.terms.supplier].last_seen > self.s.party_silence_s:
                reason = EndReason.SUPPLIER_GONE
            elif mono - self.meters[lc.terms.consumer].last_seen > self.s.party_silence_s:
                reason = EndReason.CONSUMER_GONE
            if reason is not None:
                await self.end_contract(lc.cid, reason)

    # --- views ----------------------------------------------------------------------
    def record(self, lc: LiveContract) -> settlement_pb2.ContractRecord:
        t, c, led = lc.terms, lc.contract, lc.ledger
        pb = common_pb2.Contract(
            contract_id=t.contract_id, consumer=t.consumer, supplier=t.supplier, energy_wh=t.energy_wh,
            price_msat_per_kwh=t.price_msat_per_kwh, tier=enum_value(common_pb2.Tier, lc.matcher_tier), hash=t.hash(),
        )
        pb.start.FromMilliseconds(t.start_ms)
        pb.end.FromMilliseconds(t.end_ms)
        rec = settlement_pb2.ContractRecord(
            contract=pb, state=STATE_PB[c.state], terms_json=canonical_json(t.canonical()).decode(),
            delivered_wh=led.delivered_wh, paid_wh=led.paid_wh, paid_msat=led.paid_msat,
            increments_paid=led.increments_paid, increment_wh=t.increment_wh,
            end_reason=c.end_reason.value if c.end_reason else "", fault=lc.fault,
            consumer_node=self.meters[t.consumer].row.node_pubkey if t.consumer in self.meters else "",
            supplier_node=self.meters[t.supplier].row.node_pubkey if t.supplier in self.meters else "",
        )
        if c.ended_at_ms:
            rec.ended.FromMilliseconds(c.ended_at_ms)
        return rec

    def list_contracts(self, meter_id: str = "", states: Iterable[int] = ()) -> list[settlement_pb2.ContractRecord]:
        want = set(states)
        out = []
        for lc in self.contracts.values():
            if meter_id and meter_id not in (lc.terms.consumer, lc.terms.supplier):
                continue
            if want and STATE_PB[lc.contract.state] not in want:
                continue
            out.append(self.record(lc))
        return out

    async def energy(self, meter_id: str, column: str, t0: int, t1: int) -> tuple[int, int]:
        if meter_id not in self.meters:
            raise SettlementError(grpc.StatusCode.NOT_FOUND, f"meter_id: no meter {meter_id!r}")
        if t1 < t0:
            raise SettlementError(grpc.StatusCode.INVALID_ARGUMENT, "to: must not be before from")
        a = await self.store.register_at(meter_id, column, t0)
        b = await self.store.register_at(meter_id, column, t1)
        return b - a, await self.store.reading_count(meter_id, t0, t1)

    async def document(self, contract_id: str) -> str:
        from p2pep.anchor.document import build_document, dumps_document

        lc = self.contracts.get(contract_id)
        if lc is None:
            raise SettlementError(grpc.StatusCode.NOT_FOUND, f"contract_id: no contract {contract_id!r}")
        proofs = await self.anchor.proofs(contract_id) if self.anchor is not None else []
        return dumps_document(build_document(lc.terms.canonical(), lc.summary, proofs))
