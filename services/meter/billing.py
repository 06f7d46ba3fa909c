"""Invoices (as supplier) and payments (as consumer), each checked against the
meter's own accounting, idempotent per (contract, increment), recorded in its DB.

- CreateInvoice: a contract it signed as supplier; the increment is the next one
  (the previous one settled on its own node) or the same as last time (the SAME
  invoice comes back); the amount is exactly the rounding rule's.
- ResolveInvoice (supplier): settled or open on its own node; an open invoice whose payment
  the consumer's node holds in flight too long is cancelled on settlement's request, after
  which it can never be paid and the increment is invoiced anew.
- PayInvoice: a contract it signed as consumer; the invoice asks exactly the
  increment's amount under the signed terms and pays the ``supplier_node`` those terms
  name (no other source of the payee exists here); the increment is the next one; and
  it never pays for more energy than it imported under contracts, plus the one
  increment being paid while it flows. A payment already made returns its stored
  preimage. A failed payment blocks the relay at once.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from p2pep.lnd.client import LndError, PaymentFailed
from p2pep.lndrpc import lightning_pb2 as ln
from p2pep.metering.contract_book import ContractView, Party
from p2pep.metering.request_checks import (
    STILL_IN_FLIGHT,
    Code,
    DecodedInvoice,
    Refusal,
    check_contract_for_billing,
    check_increment,
    check_invoice_to_pay,
    check_not_paying_ahead,
    fee_limit_msat,
)
from p2pep.pbconv import now_ms
from p2pep.v1 import meter_pb2
from services.meter import metrics
from services.meter.contract_desk import ContractDesk
from services.meter.parts import MeterParts, MeterState
from services.meter.store import FAILED, PENDING, SUCCEEDED, InvoiceRow, PaymentRow

log = structlog.get_logger("meter.billing")

INVOICE_EXPIRY_S = 600
IN_FLIGHT = (ln.Payment.IN_FLIGHT, ln.Payment.INITIATED)
IN_FLIGHT_WAIT_S = 4.0  # how long one PayInvoice waits on a payment lnd still has in flight


def invoice_memo(contract_id: str, increment: int) -> str:
    return f"p2pep {contract_id} #{increment}"


def parse_invoice_memo(memo: str) -> tuple[str, int] | None:
    """``(contract_id, increment)`` of an increment's invoice memo, None for any other memo (the
    payment hash is what binds the invoice: it is checked against the stored row)."""
    head, _, rest = memo.partition(" ")
    contract_id, _, number = rest.rpartition(" #")
    if head != "p2pep" or not contract_id or not number.isdigit():
        return None
    return contract_id, int(number)


class Billing:
    def __init__(self, parts: MeterParts, meter: MeterState, contracts: ContractDesk) -> None:
        self.p = parts
        self.m = meter
        self.contracts = contracts
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, contract_id: str) -> asyncio.Lock:
        return self._locks.setdefault(contract_id, asyncio.Lock())

    async def _view(self, contract_id: str, party: Party) -> ContractView:
        if not self.m.ready.is_set():
            raise Refusal(Code.UNAVAILABLE, "meter", "the meter is starting")
        view = self.p.book.get(contract_id)
        if view is not None and not view.active and not view.final:
            view = await self.contracts.refresh(contract_id)  # activation not reported yet
        return check_contract_for_billing(view, contract_id, party)

    async def _ended(self, view: ContractView, to_wh: int, from_wh: int) -> bool:
        """Whether the contract has ended, which allows a shorter, final increment. Only
        asks settlement when the request is such a partial increment and the meter's
        own view still shows the contract running; if settlement cannot be reached (the
        meter's link is down or coming back), UNAVAILABLE: settlement asks again. Before,
        the stale view answered FAILED_PRECONDITION, which settlement takes as "the consumer
        cannot pay", and the last partial increment of a contract that ended while the link
        was down went unpaid (scenarios/lossy.toml)."""
        if view.final or now_ms() >= view.terms.end_ms:
            return True
        if to_wh >= min(from_wh + view.terms.increment_wh, view.terms.energy_wh):
            return False
        refreshed = await self.contracts.refresh(view.contract_id, must_reach=True)
        return refreshed is not None and refreshed.final

    # -- supplier ----------------------------------------------------------------------------------

    async def create_invoice(self, req: meter_pb2.CreateInvoiceRequest) -> meter_pb2.CreateInvoiceResponse:
        p = self.p
        t0 = time.perf_counter()
        view = await self._view(req.contract_id, Party.SUPPLIER)
        async with self._lock(req.contract_id):
            invoices = {i.increment: i for i in await p.store.invoices(req.contract_id)}
            same = invoices.get(req.increment)
            if same is not None and (same.from_wh, same.to_wh, same.amount_msat) == (req.from_wh, req.to_wh,
                                                                                    req.amount_msat):
                return meter_pb2.CreateInvoiceResponse(payment_request=same.payment_request,
                                                       payment_hash=same.payment_hash)
            if same is not None and same.settled:
                raise Refusal(Code.FAILED_PRECONDITION, "increment",
                              f"increment {req.increment} was invoiced for ({same.from_wh}, {same.to_wh}] and is paid")
            earlier = [k for k in invoices if k < req.increment]
            last = max(earlier, default=0) if same is not None else max(invoices, default=0)
            last_to = invoices[last].to_wh if last else 0
            if last and not invoices[last].settled and not await self._settled_on_node(invoices[last]):
                raise Refusal(Code.FAILED_PRECONDITION, "increment",
                              f"increment {last} of {req.contract_id} is not paid yet")
            ended = await self._ended(view, req.to_wh, req.from_wh)
            amount = check_increment(view, increment=req.increment, from_wh=req.from_wh, to_wh=req.to_wh,
                                     amount_msat=req.amount_msat, last_number=last, last_to_wh=last_to,
                                     contract_ended=ended)
            t_lnd = time.perf_counter()
            try:
                inv = await p.lnd.add_invoice(value_msat=amount, memo=invoice_memo(req.contract_id, req.increment),
                                              expiry_s=INVOICE_EXPIRY_S)
            except LndError as e:
                raise Refusal(Code.ABORTED, "increment", f"lnd could not create the invoice: {e.detail}") from e
            lnd_s = time.perf_counter() - t_lnd
            row = InvoiceRow(req.contract_id, req.increment, req.from_wh, req.to_wh, amount, inv.payment_request,
                             inv.r_hash.hex(), False, now_ms())
            await p.store.put_invoice(row)
        metrics.INVOICES.inc()
        log.info("invoice created", contract_id=req.contract_id, increment=req.increment, amount_msat=amount,
                 wh=req.to_wh - req.from_wh, seconds=round(time.perf_counter() - t0, 4), lnd_s=round(lnd_s, 4))
        return meter_pb2.CreateInvoiceResponse(payment_request=row.payment_request, payment_hash=row.payment_hash)

    async def _settled_on_node(self, inv: InvoiceRow) -> bool:
        try:
            got = await self.p.lnd.lookup_invoice(inv.payment_hash)
        except LndError as e:
            log.info("invoice lookup failed", contract_id=inv.contract_id, increment=inv.increment, error=e.detail)
            return False
        if got.state != ln.Invoice.SETTLED:
            return False
        await self._record_settled(inv)
        return True

    async def resolve_invoice(self, req: meter_pb2.ResolveInvoiceRequest) -> meter_pb2.ResolveInvoiceResponse:
        """What became of an increment's invoice, as this meter's own node says; with ``cancel``
        an open one is cancelled (lnd refuses to cancel a settled invoice, so cancel and payment
        cannot both happen) and forgotten here, so the increment is invoiced anew."""
        R = meter_pb2.ResolveInvoiceResponse
        await self._view(req.contract_id, Party.SUPPLIER)
        async with self._lock(req.contract_id):
            rows = {i.increment: i for i in await self.p.store.invoices(req.contract_id)}
            row = rows.get(req.increment)
            if row is None or row.payment_hash != req.payment_hash:
                raise Refusal(Code.NOT_FOUND, "payment_hash",
                              f"this meter issued no invoice {req.payment_hash[:16]} for increment {req.increment}")
            got = await self._invoice_on_node(row)
            if got.state == ln.Invoice.OPEN and req.cancel:
                try:
                    await self.p.lnd.cancel_invoice(row.payment_hash)
                except LndError as e:  # settled meanwhile, or lnd away: what the node says now
                    log.info("invoice not cancelled", contract_id=row.contract_id, increment=row.increment,
                             error=e.detail)
                got = await self._invoice_on_node(row)
            if got.state == ln.Invoice.SETTLED:
                if not row.settled:
                    await self._record_settled(row)
                return R(state=R.SETTLED, preimage=got.r_preimage.hex())
            if got.state == ln.Invoice.CANCELED:
                await self.p.store.drop_invoice(row.contract_id, row.increment)
                log.warning("invoice cancelled: its payment was stuck in flight", contract_id=row.contract_id,
                            increment=row.increment, amount_msat=row.amount_msat)
                return R(state=R.CANCELED)
            return R(state=R.OPEN)

    async def _invoice_on_node(self, row: InvoiceRow) -> ln.Invoice:
        try:
            return await self.p.lnd.lookup_invoice(row.payment_hash)
        except LndError as e:
            code = Code.UNAVAILABLE if e.unreachable else Code.ABORTED
            raise Refusal(code, "payment_hash", f"this meter's lnd node cannot say: {e.detail}") from e

    async def _record_settled(self, inv: InvoiceRow) -> None:
        """The invoice is paid on this meter's node: the invoice and the contract's earned totals
        in one commit, then the book (so a failed write is simply done again)."""
        m, p = self.m, self.p
        view = p.book.get(inv.contract_id)
        after = view.with_payment(inv.to_wh, inv.amount_msat) if view is not None else None
        await p.store.invoice_settled(inv.contract_id, inv.increment, now_ms(), after)
        if view is not None:
            p.book.record_payment(inv.contract_id, inv.from_wh, inv.to_wh, inv.amount_msat)
        metrics.PAYMENTS_RECEIVED.inc()
        metrics.EARNED_MSAT.inc(inv.amount_msat)
        log.info("increment paid to us", contract_id=inv.contract_id, increment=inv.increment,
                 amount_msat=inv.amount_msat)
        m.changed()

    async def watch_invoices(self, retry_s: float) -> None:
        """Record each increment's invoice as paid the moment this meter's node settles it
        (``SubscribeInvoices``), so settlement's request for the next increment finds the last
        one recorded and does not wait for a ``LookupInvoice`` (the rule stays: no invoice for
        n+1 before n is paid; :meth:`create_invoice` still asks the node when the record lags).
        An invoice settled while the stream was down is found by :meth:`check_invoices`.
        Runs until cancelled; a broken stream is opened again after ``retry_s``."""
        while True:
            try:
                async for inv in self.p.lnd.subscribe_invoices():
                    if inv.state == ln.Invoice.SETTLED:
                        await self._settled_event(inv)
            except LndError as e:
                log.info("invoice stream broken; opening it again", error=e.detail, retry_s=retry_s)
            except Exception:
                log.exception("invoice watch failed; opening it again", retry_s=retry_s)
            await asyncio.sleep(retry_s)

    async def _settled_event(self, inv: ln.Invoice) -> None:
        key = parse_invoice_memo(inv.memo)
        if key is None:
            return  # not an increment's invoice
        contract_id, increment = key
        async with self._lock(contract_id):
            row = await self.p.store.invoice(contract_id, increment)
            if row is not None and not row.settled and row.payment_hash == inv.r_hash.hex():
                await self._record_settled(row)

    async def check_invoices(self) -> None:
        """Notice invoices settled on this meter's node (earned msat)."""
        for inv in await self.p.store.invoices(unsettled_only=True):
            if now_ms() - inv.created_ms < 2 * INVOICE_EXPIRY_S * 1000:
                async with self._lock(inv.contract_id):
                    current = {i.increment: i for i in await self.p.store.invoices(inv.contract_id)}
                    if not current[inv.increment].settled:
                        await self._settled_on_node(current[inv.increment])

    # -- consumer ------------------------------------------------------------------------------------------

    async def pay_invoice(self, req: meter_pb2.PayInvoiceRequest) -> meter_pb2.PayInvoiceResponse:
        m, p = self.m, self.p
        t0 = time.perf_counter()
        view = await self._view(req.contract_id, Party.CONSUMER)
        async with self._lock(req.contract_id):
            payments = {p.increment: p for p in await p.store.payments(req.contract_id)}
            decoded = await self._decode(req.payment_request)
            done = payments.get(req.increment)
            if done is not None and done.status == SUCCEEDED:
                if done.payment_hash != decoded.payment_hash:
                    raise Refusal(Code.FAILED_PRECONDITION, "increment",
                                  f"increment {req.increment} of {req.contract_id} was paid with another invoice")
                return meter_pb2.PayInvoiceResponse(preimage=done.preimage, fee_msat=done.fee_msat,
                                                    payment_hash=done.payment_hash)
            if done is not None and done.status == PENDING and done.payment_hash == decoded.payment_hash:
                found = await self._await_payment(done.payment_hash)
                if found is not None and found.status == ln.Payment.SUCCEEDED:
                    return await self._succeeded(view, done, found.payment_preimage, found.fee_msat)
                if found is not None and found.status in IN_FLIGHT:  # neither paid nor failed yet
                    raise Refusal(Code.UNAVAILABLE, "payment_request", f"{STILL_IN_FLIGHT}; ask again")
            paid = sorted((p for p in payments.values() if p.status == SUCCEEDED), key=lambda p: p.increment)
            last, last_to = (paid[-1].increment, paid[-1].to_wh) if paid else (0, 0)
            ended = await self._ended(view, req.to_wh, req.from_wh)
            amount = check_increment(view, increment=req.increment, from_wh=req.from_wh, to_wh=req.to_wh,
                                     amount_msat=None, last_number=last, last_to_wh=last_to, contract_ended=ended)
            check_invoice_to_pay(decoded, terms=view.terms, amount_msat=amount, now_ms=now_ms())
            check_not_paying_ahead(paid_wh_total=p.book.paid_wh_total(), increment_wh_to_pay=req.to_wh - req.from_wh,
                                   import_since_first_contract_wh=m.import_since_first_contract_wh,
                                   increment_wh=view.terms.increment_wh)
            row = PaymentRow(req.contract_id, req.increment, req.from_wh, req.to_wh, amount, req.payment_request,
                             decoded.payment_hash, "", 0, PENDING, "", now_ms())
            await p.store.put_payment(row)
            t_lnd = time.perf_counter()
            try:
                res = await p.lnd.pay(req.payment_request, timeout_s=p.s.pay_timeout_s,
                                      fee_limit_msat=fee_limit_msat(amount))
                preimage, fee = res.preimage, res.fee_msat
            except LndError as e:
                final = isinstance(e, PaymentFailed)  # lnd's own answer; otherwise lnd could not be asked
                found = await self._await_payment(decoded.payment_hash) if _already_paid(e) or not final else None
                if found is not None and found.status in IN_FLIGHT:
                    # the row stays PENDING: asked again, this meter looks the payment up before paying
                    log.warning("payment still in flight", contract_id=req.contract_id, increment=req.increment)
                    raise Refusal(Code.UNAVAILABLE, "payment_request", f"{STILL_IN_FLIGHT}; ask again") from e
                if found is None and not final:
                    log.warning("lnd unreachable: payment outcome unknown", contract_id=req.contract_id,
                                increment=req.increment, error=e.detail)
                    m.payment_failed(f"increment {req.increment} of {req.contract_id}: {e.detail}")
                    raise Refusal(Code.UNAVAILABLE, "payment_request",
                                  f"this meter's lnd node cannot be reached: {e.detail}") from e
                if found is None or found.status != ln.Payment.SUCCEEDED:
                    await p.store.put_payment(_with(row, status=FAILED, detail=e.detail))
                    metrics.PAYMENTS_MADE.labels("failed").inc()
                    passing = payment_failure_passes(e.detail) or await self._balance_only_offline(amount, e)
                    log.warning("payment failed: relay blocked", contract_id=req.contract_id,
                                increment=req.increment, amount_msat=amount, error=e.detail, passing=passing)
                    m.payment_failed(f"increment {req.increment} of {req.contract_id}: {e.detail}")
                    raise Refusal(Code.UNAVAILABLE if passing else Code.FAILED_PRECONDITION, "payment_request",
                                  f"payment failed: {e.detail}") from e
                preimage, fee = found.payment_preimage, found.fee_msat
            return await self._succeeded(view, row, preimage, fee, t0=t0, lnd_s=time.perf_counter() - t_lnd)

    async def _succeeded(self, view: ContractView, row: PaymentRow, preimage: str, fee_msat: int,
                         t0: float | None = None, lnd_s: float = 0.0) -> meter_pb2.PayInvoiceResponse:
        """Record a payment made; ``t0`` (when the request came) and ``lnd_s`` (lnd's part) are logged
        for the benchmark's breakdown of an increment's time."""
        m, p = self.m, self.p
        # the payment and the contract's paid totals in one commit, then the book
        await p.store.put_payment(_with(row, status=SUCCEEDED, preimage=preimage, fee_msat=fee_msat),
                                  view.with_payment(row.to_wh, row.amount_msat))
        p.book.record_payment(row.contract_id, row.from_wh, row.to_wh, row.amount_msat)
        metrics.PAYMENTS_MADE.labels("succeeded").inc()
        metrics.PAID_MSAT.inc(row.amount_msat)
        metrics.FEES_MSAT.inc(fee_msat)
        log.info("increment paid", contract_id=row.contract_id, increment=row.increment, amount_msat=row.amount_msat,
                 fee_msat=fee_msat, wh=row.to_wh - row.from_wh,
                 seconds=round(time.perf_counter() - t0, 4) if t0 is not None else None, lnd_s=round(lnd_s, 4))
        m.evaluate_relay()
        m.changed()
        return meter_pb2.PayInvoiceResponse(preimage=preimage, fee_msat=fee_msat, payment_hash=row.payment_hash)

    async def _decode(self, payment_request: str) -> DecodedInvoice:
        if not payment_request:
            raise Refusal(Code.INVALID_ARGUMENT, "payment_request", "must not be empty")
        try:
            pr = await self.p.lnd.decode_pay_req(payment_request)
        except LndError as e:
            if e.unreachable:  # lnd away, not the invoice
                raise Refusal(Code.UNAVAILABLE, "payment_request",
                              f"this meter's lnd node cannot be reached: {e.detail}") from e
            raise Refusal(Code.INVALID_ARGUMENT, "payment_request", f"not a valid invoice: {e.detail}") from e
        amount = pr.num_msat or pr.num_satoshis * 1000
        return DecodedInvoice(pr.destination, pr.payment_hash, amount, (pr.timestamp + pr.expiry) * 1000)

    async def _balance_only_offline(self, amount_msat: int, e: LndError) -> bool:
        """lnd says INSUFFICIENT_BALANCE while enough sits in channels that are inactive for now
        (a peer, e.g. the hub, reconnecting after a restart): that passes. With the channels
        active, or the balance not there at all, the consumer cannot pay."""
        if "FAILURE_REASON_INSUFFICIENT_BALANCE" not in e.detail:
            return False
        try:
            channels = await self.p.lnd.list_channels()
        except LndError:
            return True  # lnd away again: it cannot say, so ask again later
        offline = sum(c.local_balance for c in channels if not c.active) * 1000
        return offline >= amount_msat

    async def _await_payment(self, payment_hash: str) -> ln.Payment | None:
        """This node's payment of ``payment_hash``, waiting (bounded) while it is in flight."""
        # bounded well below settlement's own deadline for PayInvoice, so it hears "in flight"
        deadline = time.monotonic() + min(self.p.s.pay_timeout_s, IN_FLIGHT_WAIT_S)
        while True:
            found = await self._lookup_payment(payment_hash)
            if found is None or found.status not in IN_FLIGHT or time.monotonic() >= deadline:
                return found
            await asyncio.sleep(0.2)

    async def _lookup_payment(self, payment_hash: str) -> ln.Payment | None:
        """This node's payment of ``payment_hash`` (by its hash: found however many payments the
        node has made), or None if it has none or cannot say now."""
        try:
            return await self.p.lnd.track_payment(payment_hash)
        except LndError:
            return None


#: lnd's reasons for a failed payment that may pass (a node or the hub down, no route for now);
#: anything else (INSUFFICIENT_BALANCE, INCORRECT_PAYMENT_DETAILS) is the consumer unable to pay
PASSING_FAILURES = ("FAILURE_REASON_NO_ROUTE", "FAILURE_REASON_TIMEOUT", "FAILURE_REASON_ERROR")


def payment_failure_passes(detail: str) -> bool:
    """Whether a failed payment (lnd's ``FAILED: <reason>``) may succeed when asked again:
    settlement then keeps collecting (UNAVAILABLE) instead of settling the contract unpaid."""
    return any(reason in detail for reason in PASSING_FAILURES)


def _already_paid(e: LndError) -> bool:
    d = e.detail.lower()
    return "already paid" in d or "already_exists" in d or "already succeeded" in d or "in transition" in d


def _with(row: PaymentRow, **changes: Any) -> PaymentRow:
    from dataclasses import replace

    return replace(row, **changes)
