"""What settlement tells others of a contract: the matcher its outcome, the meters its state."""

from __future__ import annotations

import grpc
import structlog

from p2pep.settling.contracts import EndReason
from p2pep.v1 import matcher_pb2, matcher_pb2_grpc, settlement_pb2
from services.settlement.live import CONSUMER_SIDE_REASONS
from services.settlement.registry import MeterRegistry

log = structlog.get_logger("settlement")
FINAL_MATCHER_CODES = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)


def outcome_of(reason: EndReason, consumer_side: bool | None = None) -> matcher_pb2.ContractOutcome.ValueType:
    """The matcher's outcome for a contract that ended for ``reason`` (``consumer_side``
    overrides whose side an early end is put down to)."""
    if reason in (EndReason.END_TIME, EndReason.ENERGY_DELIVERED):
        return matcher_pb2.CONTRACT_OUTCOME_COMPLETED
    if (reason in CONSUMER_SIDE_REASONS) if consumer_side is None else consumer_side:
        return matcher_pb2.CONTRACT_OUTCOME_CONSUMER_DEFAULTED
    return matcher_pb2.CONTRACT_OUTCOME_SUPPLIER_DEFAULTED


async def send_end(matcher: matcher_pb2_grpc.MatcherServiceAsyncStub, cid: str,
                   outcome: matcher_pb2.ContractOutcome.ValueType, delivered_wh: int) -> None:
    """One ReportContractEnd; raises on a failure worth retrying (the matcher unreachable), logs
    and returns on a final refusal (unknown contract, bad value). The matcher takes a repeat."""
    req = matcher_pb2.ReportContractEndRequest(contract_id=cid, outcome=outcome, delivered_wh=delivered_wh)
    try:
        await matcher.ReportContractEnd(req, timeout=10)
    except grpc.aio.AioRpcError as err:
        if err.code() not in FINAL_MATCHER_CODES:
            raise
        log.warning("matcher refused contract end", contract_id=cid, detail=err.details())


async def notify_meters(meters: MeterRegistry, rec: settlement_pb2.ContractRecord) -> None:
    """Tell both meters the contract's state (best effort: they also poll ListContracts)."""
    for mid in (rec.contract.consumer, rec.contract.supplier):
        link = meters.get(mid)
        if link is None:
            continue
        try:
            await link.stub.UpdateContract(rec, timeout=5)
        except grpc.aio.AioRpcError as err:
            log.debug("meter not told of contract update", meter_id=mid, detail=err.details())
