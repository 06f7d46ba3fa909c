"""gRPC ``MeterService``: the household app's views and settlement's requests.

Settlement's requests are checked by the meter (:mod:`.billing`, :mod:`.contract_desk`);
a refusal becomes the status its :class:`~services.meter.checks.Refusal` names, with a
message that starts with the request field it is about.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
import structlog

from p2pep.metering.pairing import PairingCodes, PairingRefused
from p2pep.metering.request_checks import TERMS_FIELDS, Code, Refusal
from p2pep.paging import cut
from p2pep.refusals import PermissionDenied, ResourceExhausted
from p2pep.v1 import meter_pb2, meter_pb2_grpc, settlement_pb2
from services.meter import metrics
from services.meter.contract_desk import record_of
from services.meter.meter import Meter
from services.meter.store import SUCCEEDED

log = structlog.get_logger("meter.grpc")

T = TypeVar("T")


def _request_fields() -> frozenset[str]:
    names: set[str] = {"meter", "matcher", "contract_id", "contract.contract_id", "state", "terms_json"}
    for msg in (meter_pb2.PlaceOrderRequest, meter_pb2.CancelOrderRequest, meter_pb2.SignContractRequest, meter_pb2.CreateInvoiceRequest, meter_pb2.PayInvoiceRequest,
                meter_pb2.ResolveInvoiceRequest,
                settlement_pb2.ContractRecord):
        names.update(f.name for f in msg.DESCRIPTOR.fields)
    return frozenset(names | TERMS_FIELDS)


KNOWN_FIELDS = _request_fields()


def refusal_label(field: str) -> str:
    """The ``field`` label of a refusal: a field of the requests or the terms, else ``other``
    (the set of label values stays bounded whatever a caller sends)."""
    return field if field in KNOWN_FIELDS else "other"


def contract_records(m: Meter, active_only: bool = False) -> list[settlement_pb2.ContractRecord]:
    """The meter's contracts as it sees them, newest first."""
    views = [v for v in m.book.all() if v.active or not active_only]
    return [record_of(v) for v in reversed(views)]


async def recent_payments(m: Meter, limit: int | None = 100) -> list[meter_pb2.MeterPayment]:
    """Payments made (succeeded) and received (settled invoices), newest first."""
    out: list[tuple[int, meter_pb2.MeterPayment]] = []
    for p in await m.store.payments():
        if p.status == SUCCEEDED:
            mp = meter_pb2.MeterPayment(contract_id=p.contract_id, increment=p.increment,
                                        amount_msat=p.amount_msat, payment_hash=p.payment_hash,
                                        incoming=False, fee_msat=p.fee_msat)
            mp.time.FromMilliseconds(p.created_ms)
            out.append((p.created_ms, mp))
    for i in await m.store.invoices():
        if i.settled:
            mp = meter_pb2.MeterPayment(contract_id=i.contract_id, increment=i.increment,
                                        amount_msat=i.amount_msat, payment_hash=i.payment_hash, incoming=True)
            t = i.settled_ms or i.created_ms
            mp.time.FromMilliseconds(t)
            out.append((t, mp))
    out.sort(key=lambda x: x[0], reverse=True)
    return [mp for _, mp in (out if limit is None else out[:limit])]


class MeterServicer(meter_pb2_grpc.MeterServiceServicer):
    def __init__(self, meter: Meter, pairing: PairingCodes | None = None) -> None:
        self.m = meter
        self.pairing = pairing or PairingCodes()

    async def _checked(self, rpc: str, context: grpc.aio.ServicerContext[Any, Any], call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except Refusal as r:  # counted and logged here; the server's interceptor answers its status
            metrics.REFUSED.labels(rpc, refusal_label(r.field)).inc()
            log.warning("request refused", rpc=rpc, code=r.code.value, field=r.field, message=r.message)
            raise

    # -- the household app ----------------------------------------------------------------------

    async def GetStatus(self, request: meter_pb2.GetStatusRequest, context: grpc.aio.ServicerContext[Any, Any]) -> \
            meter_pb2.MeterStatus:
        return self.m.status()

    async def WatchStatus(self, request: meter_pb2.GetStatusRequest, context: grpc.aio.ServicerContext[Any, Any]) -> \
            AsyncIterator[meter_pb2.MeterStatus]:
        last = None
        while True:
            st = self.m.status()
            if st != last:
                yield st
                last = st
            await self.m.wait_changed(1.0)

    async def ListContracts(self, request: meter_pb2.MeterContractsRequest, context: grpc.aio.ServicerContext[Any, Any]) -> \
            meter_pb2.MeterContractsResponse:
        page, token = cut(contract_records(self.m, request.active_only), request.page_size, request.page_token)
        return meter_pb2.MeterContractsResponse(contracts=page, next_page_token=token)

    async def ListPayments(self, request: meter_pb2.MeterPaymentsRequest, context: grpc.aio.ServicerContext[Any, Any]) -> \
            meter_pb2.MeterPaymentsResponse:
        page, token = cut(await recent_payments(self.m, None), request.limit, request.page_token)
        return meter_pb2.MeterPaymentsResponse(payments=page, next_page_token=token)

    # -- settlement's requests ------------------------------------------------------------------------

    async def SignContract(self, request: meter_pb2.SignContractRequest, context: grpc.aio.ServicerContext[Any, Any]) -> \
            meter_pb2.SignContractResponse:
        async def call() -> meter_pb2.SignContractResponse:
            sig, node = await self.m.contracts.sign(request.terms_json)
            return meter_pb2.SignContractResponse(signature=sig, node_pubkey=node)

        return await self._checked("SignContract", context, call)

    async def CreateInvoice(self, request: meter_pb2.CreateInvoiceRequest, context: grpc.aio.ServicerContext[Any, Any]) -> \
            meter_pb2.CreateInvoiceResponse:
        return await self._checked("CreateInvoice", context, lambda: self.m.billing.create_invoice(request))

    async def PayInvoice(self, request: meter_pb2.PayInvoiceRequest, context: grpc.aio.ServicerContext[Any, Any]) -> \
            meter_pb2.PayInvoiceResponse:
        return await self._checked("PayInvoice", context, lambda: self.m.billing.pay_invoice(request))

    async def ResolveInvoice(self, request: meter_pb2.ResolveInvoiceRequest,
                             context: grpc.aio.ServicerContext[Any, Any]) -> meter_pb2.ResolveInvoiceResponse:
        return await self._checked("ResolveInvoice", context, lambda: self.m.billing.resolve_invoice(request))

    async def UpdateContract(self, request: settlement_pb2.ContractRecord, context: grpc.aio.ServicerContext[Any, Any]) -> \
            meter_pb2.UpdateContractResponse:
        async def call() -> meter_pb2.UpdateContractResponse:
            await self.m.contracts.update(request)
            return meter_pb2.UpdateContractResponse()

        return await self._checked("UpdateContract", context, call)

    # -- the household portal ---------------------------------------------------------------------

    async def ClaimPairing(self, request: meter_pb2.ClaimPairingRequest, context: grpc.aio.ServicerContext[Any, Any]) -> \
            meter_pb2.ClaimPairingResponse:
        try:
            self.pairing.claim(request.code)
        except PairingRefused as r:
            metrics.REFUSED.labels("ClaimPairing", "code").inc()
            log.warning("pairing refused", locked=r.locked)
            if r.locked:
                raise ResourceExhausted("code", str(r)) from None
            raise PermissionDenied("code", str(r)) from None
        log.info("paired with a household account")
        return meter_pb2.ClaimPairingResponse(meter_id=self.m.s.meter_id)

    async def PlaceOrder(self, request: meter_pb2.PlaceOrderRequest, context: grpc.aio.ServicerContext[Any, Any]) -> \
            meter_pb2.PlaceOrderResponse:
        async def call() -> meter_pb2.PlaceOrderResponse:
            if not self.m.ready.is_set() or self.m.leaving:
                raise Refusal(Code.UNAVAILABLE, "meter", "the meter is starting or leaving")
            resp = await self.m.household.place(request)
            log.info("household order placed", order_id=resp.order.order_id, side=request.side,
                     energy_wh=request.energy_wh, price=request.price_msat_per_kwh,
                     contracts=len(resp.contracts))
            return resp

        return await self._checked("PlaceOrder", context, call)

    async def ListOrders(self, request: meter_pb2.ListOrdersRequest, context: grpc.aio.ServicerContext[Any, Any]) -> \
            meter_pb2.ListOrdersResponse:
        return await self._checked("ListOrders", context, self.m.household.list)

    async def CancelOrder(self, request: meter_pb2.CancelOrderRequest, context: grpc.aio.ServicerContext[Any, Any]) -> \
            meter_pb2.CancelOrderResponse:
        return await self._checked("CancelOrder", context, lambda: self.m.household.cancel(request))

    async def NewAddress(self, request: meter_pb2.NewAddressRequest, context: grpc.aio.ServicerContext[Any, Any]) -> \
            meter_pb2.NewAddressResponse:
        return meter_pb2.NewAddressResponse(address=await self.m.lnd.new_address())
