"""gRPC AnchorService over an :class:`~p2pep.anchor.anchorer.Anchorer`."""

from __future__ import annotations

from typing import Any

import grpc

from p2pep.anchor.wire import WireError, batch_to_pb, leaves_from_pb, proof_status_to_pb
from p2pep.refusals import InvalidArgument
from p2pep.v1 import anchor_pb2 as pb
from p2pep.v1 import anchor_pb2_grpc as pb_grpc
from services.anchor.anchorer import Anchorer

DEFAULT_BATCH_LIMIT = 100
MAX_BATCH_LIMIT = 1000  # one answer stays far below the 4 MB message limit


class AnchorServicer(pb_grpc.AnchorServiceServicer):
    def __init__(self, anchorer: Anchorer, max_request_leaves: int) -> None:
        self.anchorer = anchorer
        self.max_request_leaves = max_request_leaves

    async def AddLeaves(self, request: pb.AddLeavesRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.AddLeavesResponse:
        n = len(request.leaves)
        if n == 0:
            raise InvalidArgument("leaves", "must not be empty")
        if n > self.max_request_leaves:
            raise InvalidArgument("leaves", f"{n} leaves, at most {self.max_request_leaves} per call")
        try:
            added = await self.anchorer.add_leaves(leaves_from_pb(request.leaves))
        except WireError:
            raise
        except ValueError as exc:  # the anchorer names the field in its message
            raise InvalidArgument("", str(exc)) from None
        return pb.AddLeavesResponse(added=added, best_height=self.anchorer.height)

    async def GetProofs(self, request: pb.GetProofsRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.GetProofsResponse:
        if not request.contract_id:
            raise InvalidArgument("contract_id", "must not be empty")
        proofs = await self.anchorer.proofs_for(request.contract_id)
        return pb.GetProofsResponse(proofs=[proof_status_to_pb(p) for p in proofs],
                                    min_confirmations=self.anchorer.config.min_confirmations,
                                    best_height=self.anchorer.height)

    async def ListBatches(self, request: pb.ListBatchesRequest,
                          context: grpc.aio.ServicerContext[Any, Any]) -> pb.ListBatchesResponse:
        limit = min(request.limit or DEFAULT_BATCH_LIMIT, MAX_BATCH_LIMIT)
        batches = await self.anchorer.batches(limit)
        best = self.anchorer.height
        return pb.ListBatchesResponse(batches=[batch_to_pb(b, best) for b in batches], best_height=best)
