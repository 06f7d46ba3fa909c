"""The payment worker of one contract: one increment at a time, supervised.

For each increment due (:meth:`DeliveryLedger.next_due`) the supplier's meter invoices, the
consumer's meter pays, settlement checks the preimage against the invoice. The increment is
written to the store with its invoice before the consumer is asked to pay, and its preimage
before the next increment; both meters answer idempotently per (contract, increment), so a
step repeated after a crash or an error pays nothing twice (a supplier asked again for an
increment it invoiced answers with the same invoice).

**A payment that fails for a reason that passes** (the consumer's meter or its lnd node
unreachable, the hub down so no route, an outcome lnd cannot tell yet: ``UNAVAILABLE`` or
``DEADLINE_EXCEEDED`` from the meter) still ends the contract at once (``DEFAULTED``: the
relay blocks, the supplier is owed at most what was delivered unpaid), but settlement keeps
collecting that amount, with the same invoice, for ``debt_collect_s``: once the network is
back the supplier is paid exactly what it delivered. A payment the consumer's lnd holds in flight for
``in_flight_resolve_s`` (an HTLC stuck after a crash on the route) is resolved at the
supplier's node (``ResolveInvoice``): recorded paid if the supplier's invoice settled, else
the supplier cancels it, so it can never be paid, and the increment is invoiced anew. A
refusal that does not pass (the consumer cannot pay: ``FAILED_PRECONDITION``) settles the contract at what was paid, as does
the end of the collection window. An unsettled payment row with an invoice is what marks a
debt being collected, so a restarted settlement goes on collecting it.

The worker runs step by step under :func:`p2pep.servicekit.supervised`: an unexpected error
is logged with its contract, counted, shown on the contract (``ContractRecord.fault``, which
the live view and the console display) and the step is retried with backoff. After
``worker_attempts`` failures in a row the contract is ended cleanly (``SETTLEMENT_FAULT``) at
what was paid, so its meters stop relying on it.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import replace
from typing import Any, Protocol

import grpc
import structlog

from p2pep.metering.request_checks import STILL_IN_FLIGHT
from p2pep.pbconv import now_ms
from p2pep.servicekit import Backoff, GaveUp, supervised
from p2pep.settings.settlement import SettlementSettings
from p2pep.settling.contracts import ContractState, EndReason
from p2pep.settling.increments import IncrementDue
from p2pep.v1 import meter_pb2
from services.settlement import metrics
from services.settlement.live import LiveContract, frozen_ledger
from services.settlement.registry import MeterRegistry
from services.settlement.store import Store

log = structlog.get_logger("settlement")

#: a meter's answer that means "not now" rather than "no": the payment may succeed later
PASSING = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class Lifecycle(Protocol):
    """What the worker needs of the contract lifecycle (the engine)."""

    async def end_contract(self, contract_id: str, reason: EndReason) -> LiveContract: ...
    async def finish(self, lc: LiveContract) -> None: ...
    async def save(self, lc: LiveContract) -> None: ...
    async def notify(self, lc: LiveContract) -> None: ...
    def spawn(self, coro: Any) -> Any: ...
    def faults_changed(self) -> None: ...


class ContractWorker:
    def __init__(self, settings: SettlementSettings, store: Store, meters: MeterRegistry,
                 lifecycle: Lifecycle, ledger_lock: asyncio.Lock) -> None:
        self.s = settings
        self.store = store
        self.meters = meters
        self.lifecycle = lifecycle
        self.ledger_lock = ledger_lock  # taken to end a contract or close its ledger
        self.backoff = Backoff(settings.worker_backoff_initial_s, settings.worker_backoff_max_s)

    async def run(self, lc: LiveContract) -> None:
        """Pay the contract's increments until it is settled, or end it if that cannot go on."""
        def failed(n: int, exc: Exception) -> None:
            lc.fault = f"{type(exc).__name__}: {exc}"[:300]
            metrics.TASK_FAILURES.labels("contract_worker").inc()
            self.lifecycle.faults_changed()
            log.exception("contract worker failed", contract_id=lc.cid, failures_in_a_row=n,
                          attempts=self.s.worker_attempts)

        try:
            done = False
            while not done:
                try:
                    done = await supervised(lambda: self._step(lc), on_failure=failed, backoff=self.backoff,
                                            attempts=self.s.worker_attempts)
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is None or task.cancelling():
                        raise  # settlement is stopping
                    # a call was cancelled under it (its channel closed): that step is simply repeated
                    log.warning("a call of the contract worker was cancelled; going on", contract_id=lc.cid)
                if lc.fault:
                    log.info("contract worker recovered", contract_id=lc.cid, after=lc.fault)
                    lc.fault = ""
                    self.lifecycle.faults_changed()
        except GaveUp as exc:
            await self._abandon(lc, exc)

    async def _step(self, lc: LiveContract) -> bool:
        """One step: pay the next increment due, wait for energy, or finish. True once the
        contract is settled. Safe to repeat after a failure."""
        due = None if lc.collect_gave_up else lc.ledger.next_due()
        if due is not None and lc.collect_until is None and lc.contract.state is not ContractState.DEFAULTED:
            await self.pay(lc, due)  # False (defaulted or ended) loops on to finish
            return False
        if due is not None and await self._collecting(lc, due):  # ended: what was delivered, asked again
            await asyncio.sleep(self.backoff.delay(lc.collect_attempts))
            lc.collect_attempts += 1
            if not await self._resolve_stuck(lc, due):
                await self.pay(lc, due)
            return False
        if lc.contract.state.final:
            await self.lifecycle.finish(lc)
            return True
        lc.wake.clear()
        await lc.wake.wait()
        return False

    async def _abandon(self, lc: LiveContract, exc: GaveUp) -> None:
        """The worker cannot go on: end the contract at what was paid (the supplier is owed at
        most the one increment in flight) and tell both meters, so the consumer's relay blocks."""
        metrics.CONTRACTS_ABANDONED.inc()
        log.error("contract worker gave up; ending the contract", contract_id=lc.cid, error=str(exc))
        async with self.ledger_lock:
            if not lc.contract.state.final:
                lc.contract = lc.contract.end(EndReason.SETTLEMENT_FAULT, now_ms())
            lc.ledger = frozen_ledger(lc)
        try:
            await self.lifecycle.finish(lc)
        except Exception:
            log.exception("contract ended in memory only; it is finished again after a restart",
                          contract_id=lc.cid)
            lc.finished = True
            await self.lifecycle.notify(lc)
        self.lifecycle.faults_changed()

    async def pay(self, lc: LiveContract, due: IncrementDue) -> bool:
        """Invoice, pay and record one increment; False if the contract ended or defaulted instead."""
        t = lc.terms
        cons, sup = self.meters[t.consumer], self.meters[t.supplier]
        row = await self.store.payment(lc.cid, due.number)
        t0 = time.perf_counter()
        invoice_s = 0.0  # the CreateInvoice call, as settlement sees it (0: the invoice was on record)
        try:
            if row and row["payment_request"]:
                pr, phash = row["payment_request"], row["payment_hash"]
            else:
                inv = await sup.stub.CreateInvoice(meter_pb2.CreateInvoiceRequest(
                    contract_id=lc.cid, increment=due.number, from_wh=due.from_wh, to_wh=due.to_wh,
                    amount_msat=due.amount_msat), timeout=15)
                invoice_s = time.perf_counter() - t0
                pr, phash = inv.payment_request, inv.payment_hash
                await self.store.payment_intent(lc.cid, due.number, due.from_wh, due.to_wh, due.amount_msat, phash, pr)
        except grpc.aio.AioRpcError as err:
            metrics.PAYMENTS.labels("no_invoice").inc()
            log.warning("supplier gave no invoice", contract_id=lc.cid, increment=due.number, detail=err.details())
            await self.store.drop_unsettled(lc.cid, due.number)
            if not lc.contract.state.final:
                await self.lifecycle.end_contract(lc.cid, EndReason.SUPPLIER_GONE)
            if err.code() in PASSING and self.s.debt_collect_s > 0:
                self._start_collecting(lc)  # the supplier's meter is away: ask it again for what it delivered
            elif lc.contract.state.final:  # the supplier cannot be paid the rest, stop asking
                async with self.ledger_lock:
                    lc.ledger = frozen_ledger(lc)
            return False
        t_pay = time.perf_counter()
        try:
            paid = await cons.stub.PayInvoice(meter_pb2.PayInvoiceRequest(
                contract_id=lc.cid, increment=due.number, from_wh=due.from_wh, to_wh=due.to_wh,
                payment_request=pr), timeout=self.s.payment_timeout_s)
        except grpc.aio.AioRpcError as err:
            timeout = err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            metrics.PAYMENTS.labels("timeout" if timeout else "failed").inc()
            passing = err.code() in PASSING and self.s.debt_collect_s > 0
            lc.in_flight = err.code() == grpc.StatusCode.UNAVAILABLE and STILL_IN_FLIGHT in (err.details() or "")
            if not lc.in_flight:
                lc.in_flight_since = None
            elif lc.in_flight_since is None:
                lc.in_flight_since = time.monotonic()
            log.warning("increment not paid", contract_id=lc.cid, increment=due.number, detail=err.details(),
                        code=err.code().name, collecting=passing)
            await self._default(lc, EndReason.PAYMENT_TIMEOUT if timeout else EndReason.PAYMENT_FAILED,
                                keep_invoice=passing)
            if passing:
                self._start_collecting(lc)
            elif lc.collect_until is not None:  # collecting, and now a "no": settle it unpaid
                log.warning("debt not collected: the consumer cannot pay", contract_id=lc.cid,
                            owed_wh=lc.ledger.unpaid_wh, detail=err.details())
                metrics.DEBTS.labels("given_up").inc()
                lc.collect_until, lc.collect_gave_up = None, True
            return False
        if hashlib.sha256(bytes.fromhex(paid.preimage)).hexdigest() != phash:
            metrics.PAYMENTS.labels("bad_preimage").inc()
            log.error("preimage does not match the invoice", contract_id=lc.cid, increment=due.number)
            await self._default(lc, EndReason.PAYMENT_FAILED)
            return False
        t_end = time.perf_counter()
        seconds = t_end - t0
        metrics.PAYMENT_SECONDS.observe(seconds)
        await self._record_paid(lc, due, paid.preimage, paid.fee_msat, phash)
        # the parts of ``seconds`` (bench/bench_neighbourhood.py breaks an increment's time down by them)
        log.info("increment paid", contract_id=lc.cid, increment=due.number, amount_msat=due.amount_msat,
                 fee_msat=paid.fee_msat, seconds=round(seconds, 4), invoice_s=round(invoice_s, 4),
                 pay_s=round(t_end - t_pay, 4))
        return True

    async def _record_paid(self, lc: LiveContract, due: IncrementDue, preimage: str, fee_msat: int,
                           phash: str) -> None:
        if lc.collect_until is not None:
            log.info("debt collected", contract_id=lc.cid, increment=due.number, amount_msat=due.amount_msat,
                     attempts=lc.collect_attempts)
            metrics.DEBTS.labels("collected").inc()
            lc.collect_attempts = 0  # the next increment owed (if any) at once
        lc.in_flight, lc.in_flight_since = False, None
        await self.store.payment_settled(lc.cid, due.number, preimage, fee_msat, now_ms())
        lc.ledger.record_payment(due.number, due.amount_msat, phash)
        lc.last_payment = time.monotonic()
        metrics.PAYMENTS.labels("settled").inc()
        metrics.PAID_MSAT.inc(due.amount_msat)
        self.lifecycle.spawn(self.lifecycle.notify(lc))

    async def _resolve_stuck(self, lc: LiveContract, due: IncrementDue) -> bool:
        """A payment the consumer's lnd has held in flight for ``in_flight_resolve_s``: ask the
        supplier's node. Paid there (its preimage matches): recorded paid, True. Not paid: the
        supplier cancels the invoice (lnd refuses to cancel a settled one, so the stuck HTLC can
        then only fail) and the increment is invoiced anew, for :meth:`pay` to ask the consumer
        to pay. Anything else (the supplier away, the invoice still open): asked again later."""
        since = lc.in_flight_since
        if not lc.in_flight or since is None or self.s.in_flight_resolve_s <= 0 or \
                time.monotonic() - since < self.s.in_flight_resolve_s:
            return False
        row = await self.store.payment(lc.cid, due.number)
        if not row or not row["payment_hash"]:
            return False
        phash = row["payment_hash"]
        sup = self.meters[lc.terms.supplier]
        R = meter_pb2.ResolveInvoiceResponse
        try:
            res = await sup.stub.ResolveInvoice(meter_pb2.ResolveInvoiceRequest(
                contract_id=lc.cid, increment=due.number, payment_hash=phash, cancel=True), timeout=15)
        except grpc.aio.AioRpcError as err:
            log.warning("the supplier could not resolve a payment stuck in flight", contract_id=lc.cid,
                        increment=due.number, code=err.code().name, detail=err.details())
            return False
        if res.state == R.SETTLED and hashlib.sha256(bytes.fromhex(res.preimage)).hexdigest() == phash:
            metrics.STUCK_PAYMENTS.labels("paid").inc()
            log.info("a payment stuck in flight reached the supplier", contract_id=lc.cid, increment=due.number)
            await self._record_paid(lc, due, res.preimage, 0, phash)
            return True
        if res.state != R.CANCELED:
            return False
        metrics.STUCK_PAYMENTS.labels("reinvoiced").inc()
        lc.in_flight, lc.in_flight_since = False, None
        try:
            inv = await sup.stub.CreateInvoice(meter_pb2.CreateInvoiceRequest(
                contract_id=lc.cid, increment=due.number, from_wh=due.from_wh, to_wh=due.to_wh,
                amount_msat=due.amount_msat), timeout=15)
        except grpc.aio.AioRpcError as err:  # pay() asks for the new invoice itself
            log.warning("stuck invoice cancelled; no new one yet", contract_id=lc.cid, increment=due.number,
                        detail=err.details())
            await self.store.payment_invoice(lc.cid, due.number, "", "")
            return False
        await self.store.payment_invoice(lc.cid, due.number, inv.payment_hash, inv.payment_request)
        log.warning("a payment stuck in flight was cancelled at the supplier; invoiced anew", contract_id=lc.cid,
                    increment=due.number, stuck_s=round(time.monotonic() - since, 1))
        return False

    async def _default(self, lc: LiveContract, reason: EndReason, keep_invoice: bool = False) -> None:
        """The consumer did not pay: delivery stops now; the supplier is owed at most this
        increment. ``keep_invoice``: the failure may pass, the invoice is kept to collect with."""
        async with self.ledger_lock:
            if not lc.contract.state.final:
                lc.contract = lc.contract.end(reason, now_ms())
            elif lc.contract.state is not ContractState.DEFAULTED:
                # ended already (e.g. end time) and the final payment failed
                lc.contract = replace(lc.contract, state=ContractState.DEFAULTED, end_reason=reason)
            lc.ledger.close()
            if not keep_invoice:
                await self.store.drop_unsettled(lc.cid, lc.ledger.increments_paid + 1)
            await self.lifecycle.save(lc)

    def _start_collecting(self, lc: LiveContract) -> None:
        if lc.collect_until is None:
            lc.collect_until = time.monotonic() + self.s.debt_collect_s
            lc.collect_attempts = 0
            log.info("collecting what was delivered", contract_id=lc.cid, owed_wh=lc.ledger.unpaid_wh,
                     for_s=self.s.debt_collect_s)

    async def _collecting(self, lc: LiveContract, due: IncrementDue) -> bool:
        """Whether to ask the consumer again for ``due`` of an ended contract: within the
        collection window (or, after a restart, when the invoice of a passing failure is
        still on record); False once given up (the contract is then settled with it unpaid)."""
        if lc.collect_until is None and self.s.debt_collect_s > 0:
            row = await self.store.payment(lc.cid, due.number)
            if row and row["payment_request"] and not row["preimage"]:
                self._start_collecting(lc)  # a debt a previous run was collecting
        if lc.collect_until is None:
            return False
        if time.monotonic() < lc.collect_until:
            return True
        if lc.in_flight:  # the consumer's lnd may still complete it: settling it unpaid could pay twice
            log.warning("debt window over but the payment is still in flight; asking on", contract_id=lc.cid,
                        increment=due.number)
            lc.collect_until = time.monotonic() + self.s.debt_collect_s
            return True
        log.warning("debt not collected in time; settling the contract with it unpaid", contract_id=lc.cid,
                    owed_wh=lc.ledger.unpaid_wh, attempts=lc.collect_attempts)
        metrics.DEBTS.labels("given_up").inc()
        await self.store.drop_unsettled(lc.cid, due.number)
        lc.collect_until, lc.collect_gave_up = None, True  # settled with delivered > paid, as a default is
        return False
