"""SettlementService over grpc.aio: a thin adapter from protos to the engine.

Refusals are raised as :class:`~p2pep.servicekit.errors.Refused` by the engine and its parts;
the server's interceptor turns them into statuses (nothing here builds one).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import structlog

from p2pep.paging import cut, decode_token, encode_token, page_size
from p2pep.pbconv import ts_ms
from p2pep.servicekit.auth import acting_meter, caller
from p2pep.servicekit.errors import PermissionDenied
from p2pep.settling.contracts import EndReason
from p2pep.v1 import common_pb2, settlement_pb2_grpc
from p2pep.v1 import settlement_pb2 as pb
from services.settlement.engine import Engine

log = structlog.get_logger("settlement")


def check_party(contract_id: str, consumer: str, supplier: str) -> None:
    """A meter reads only contracts it is a party of (services and operators read all)."""
    m = acting_meter()
    if m is not None and m not in (consumer, supplier):
        raise PermissionDenied("contract_id", f"meter {m!r} is not a party of contract {contract_id}")


def check_enrolled_key(pubkey: str) -> None:
    """A meter registers with the signing key it enrolled (when its certificate carries one):
    a certificate for an id is not enough to put another key behind it."""
    c = caller()
    if c is not None and c.meter_key is not None and c.meter_key != pubkey:
        raise PermissionDenied("pubkey", f"not the signing key {c.identity.name} enrolled")


class SettlementServicer(settlement_pb2_grpc.SettlementServiceServicer):
    def __init__(self, engine: Engine) -> None:
        self.e = engine

    async def RegisterMeter(self, req: pb.RegisterMeterRequest, ctx: grpc.aio.ServicerContext[Any, Any]) -> pb.RegisterMeterResponse:
        check_enrolled_key(req.pubkey)
        loc = req.location
        last = await self.e.register_meter(
            req.meter_id, req.pubkey, req.node_pubkey, req.address, req.role, req.node_address,
            (loc.latitude, loc.longitude) if req.HasField("location") else None,
        )
        return pb.RegisterMeterResponse(last_seq=last)

    async def StreamReadings(
        self, requests: AsyncIterator[common_pb2.Reading], ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ReadingAck]:
        async for reading in requests:
            yield await self.e.ingest(reading)

    async def EndContract(self, req: pb.EndContractRequest, ctx: grpc.aio.ServicerContext[Any, Any]) -> pb.ContractRecord:
        lc = await self.e.contract(req.contract_id)
        if req.meter_id == lc.terms.consumer:
            reason = EndReason.ENDED_BY_CONSUMER
        elif req.meter_id == lc.terms.supplier:
            reason = EndReason.ENDED_BY_SUPPLIER
        else:
            raise PermissionDenied("meter_id", f"{req.meter_id!r} is not a party of contract {req.contract_id}")
        lc = await self.e.end_contract(req.contract_id, reason)
        log.info("contract ended by a party", contract_id=req.contract_id, meter_id=req.meter_id, why=req.reason)
        return self.e.record(lc)

    async def GetContract(self, req: pb.GetContractRequest, ctx: grpc.aio.ServicerContext[Any, Any]) -> pb.ContractRecord:
        lc = await self.e.contract(req.contract_id)
        check_party(req.contract_id, lc.terms.consumer, lc.terms.supplier)
        return self.e.record(lc)

    async def ListContracts(
        self, req: pb.ListSettlementContractsRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListSettlementContractsResponse:
        page, token = await self.e.list_contracts(req.meter_id, req.states, req.page_size, req.page_token)
        return pb.ListSettlementContractsResponse(contracts=page, next_page_token=token)

    async def _energy(self, req: pb.EnergyQuery, ctx: grpc.aio.ServicerContext[Any, Any], column: str) -> pb.EnergyTotal:
        wh, n = await self.e.energy(req.meter_id, column, ts_ms(getattr(req, "from"), "from"),
                                     ts_ms(req.to, "to"))
        return pb.EnergyTotal(meter_id=req.meter_id, energy_wh=wh, readings=n)

    async def GetUsage(self, req: pb.EnergyQuery, ctx: grpc.aio.ServicerContext[Any, Any]) -> pb.EnergyTotal:
        return await self._energy(req, ctx, "import_wh")

    async def GetProduction(self, req: pb.EnergyQuery, ctx: grpc.aio.ServicerContext[Any, Any]) -> pb.EnergyTotal:
        return await self._energy(req, ctx, "export_wh")

    async def ListPayments(self, req: pb.ListPaymentsRequest, ctx: grpc.aio.ServicerContext[Any, Any]) -> pb.ListPaymentsResponse:
        """Settled payments in the order they settled, read from the store a page at a time."""
        start, size = decode_token(req.page_token), page_size(req.page_size)
        rows = await self.e.store.payment_page(start, size + 1, req.contract_id, req.meter_id)
        out = []
        for p in rows[:size]:
            pay = pb.Payment(
                contract_id=p["contract_id"], increment=p["increment"], from_wh=p["from_wh"], to_wh=p["to_wh"],
                amount_msat=p["amount_msat"], payment_hash=p["payment_hash"], preimage=p["preimage"],
                fee_msat=p["fee_msat"], payer=p["payer"], payee=p["payee"],
            )
            pay.settled.FromMilliseconds(p["settled_ms"])
            out.append(pay)
        return pb.ListPaymentsResponse(payments=out, next_page_token=encode_token(start + size) if len(rows) > size else "")

    async def ExportContract(self, req: pb.GetContractRequest, ctx: grpc.aio.ServicerContext[Any, Any]) -> pb.ContractDocument:
        lc = await self.e.contract(req.contract_id)
        check_party(req.contract_id, lc.terms.consumer, lc.terms.supplier)
        return pb.ContractDocument(json=await self.e.document(req.contract_id))

    async def ListMeters(self, req: pb.ListMetersRequest, ctx: grpc.aio.ServicerContext[Any, Any]) -> pb.ListMetersResponse:
        """Registered meters by id, a page at a time."""
        out = []
        for link in sorted(self.e.meters.values(), key=lambda link: link.row.meter_id):
            h, row = link.head, link.row
            out.append(pb.MeterInfo(
                meter_id=row.meter_id, pubkey=row.pubkey, node_pubkey=row.node_pubkey,
                address=row.address, role=row.role, last_seq=h.seq if h else 0,
                import_wh=h.import_wh if h else 0, export_wh=h.export_wh if h else 0,
                node_address=row.node_address,
                location=pb.Location(latitude=row.latitude, longitude=row.longitude)
                if row.latitude is not None and row.longitude is not None else None,
            ))
        page, token = cut(out, req.page_size, req.page_token)
        return pb.ListMetersResponse(meters=page, next_page_token=token)
