"""Client of the anchor service (``services/anchor``), as settlement uses it.

``add_leaf`` never gives up on a transient failure: settlement runs it as a background task
when a contract becomes active or ends, and the hash must reach the anchor service even if
that service is restarting. It retries with capped exponential backoff (with jitter) until
the service has stored the leaf; a leaf already stored counts as accepted, so retries are
safe. Only a permanent refusal (INVALID_ARGUMENT and the like) raises.

Usage::

    async with AnchorClient("127.0.0.1:50061") as anchor:
        await anchor.add_leaf("contract", terms.contract_id, terms.hash())
        proofs = await anchor.proofs(terms.contract_id)      # list[AnchorProof]
"""

from __future__ import annotations

import grpc
import structlog

from p2pep.anchor.document import AnchorProof, LeafKind
from p2pep.anchor.records import StoredProof
from p2pep.anchor.wire import leaf_to_pb, proof_from_pb
from p2pep.servicekit.channels import channel
from p2pep.servicekit.supervise import Backoff, supervised
from p2pep.servicekit.tls import Tls
from p2pep.v1 import anchor_pb2 as pb
from p2pep.v1 import anchor_pb2_grpc as pb_grpc

log = structlog.get_logger(__name__)

# Retrying these cannot help: the request itself is wrong or not allowed.
PERMANENT = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OUT_OF_RANGE,
})


class AnchorServiceError(RuntimeError):
    """A call failed: from ``add_leaf(s)`` only a permanent refusal (``code`` in PERMANENT,
    e.g. a malformed leaf); from the reads any gRPC error, transient ones included."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"anchor service: {code.name}: {details}")
        self.code = code
        self.details = details


class AnchorClient:
    def __init__(self, target: str, *, tls: Tls, peer: str = "anchor", call_timeout_s: float = 10.0, backoff_initial_s: float = 0.2,
                 backoff_max_s: float = 30.0) -> None:
        self.target = target
        self.call_timeout_s = call_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._channel = channel(target, peer=peer, tls=tls)
        self.stub = pb_grpc.AnchorServiceStub(self._channel)

    @property
    def channel(self) -> grpc.aio.Channel:
        return self._channel

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AnchorClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- writes: retried until accepted ------------------------------------------------------
    async def add_leaf(self, kind: LeafKind, contract_id: str, leaf_hash: bytes) -> bool:
        """Queue one hash; returns True if new, False if the service already had it."""
        return (await self.add_leaves([(kind, contract_id, leaf_hash)]))[0]

    async def add_leaves(self, leaves: list[tuple[LeafKind, str, bytes]]) -> list[bool]:
        """Queue hashes (all or none); retries transient failures until the service stores them.

        Raises AnchorServiceError on a permanent refusal; cancel the task to give up early.
        """
        req = pb.AddLeavesRequest(leaves=[leaf_to_pb(k, c, h) for k, c, h in leaves])

        async def add() -> list[bool]:
            try:
                resp = await self.stub.AddLeaves(req, timeout=self.call_timeout_s)
            except grpc.aio.AioRpcError as err:
                if err.code() in PERMANENT:
                    raise AnchorServiceError(err.code(), err.details() or "") from err
                raise
            return list(resp.added)

        def failed(attempt: int, err: Exception) -> None:
            code = err.code().name if isinstance(err, grpc.aio.AioRpcError) else type(err).__name__
            log.warning("anchor.add_leaves_retry", target=self.target, attempt=attempt, code=code, details=str(err))

        return await supervised(add, on_failure=failed, retry_if=lambda e: not isinstance(e, AnchorServiceError),
                                backoff=Backoff(self.backoff_initial_s, self.backoff_max_s, jitter=True))

    # -- reads: one attempt, errors surface to the caller -----------------------------------
    async def proof_status(self, contract_id: str) -> list[StoredProof]:
        """The contract's current proofs with their confirmations (as the service sees the chain)."""
        try:
            resp = await self.stub.GetProofs(pb.GetProofsRequest(contract_id=contract_id),
                                             timeout=self.call_timeout_s)
        except grpc.aio.AioRpcError as err:
            raise AnchorServiceError(err.code(), err.details() or "") from err
        return [StoredProof(contract_id, proof_from_pb(s.proof), s.confirmations, s.confirmed)
                for s in resp.proofs]

    async def proofs(self, contract_id: str, confirmed_only: bool = False) -> list[AnchorProof]:
        """The contract's current proofs, ready for :func:`p2pep.anchor.document.build_document`."""
        return [s.proof for s in await self.proof_status(contract_id) if s.confirmed or not confirmed_only]

    async def list_batches(self, limit: int = 0) -> list[pb.Batch]:
        try:
            resp = await self.stub.ListBatches(pb.ListBatchesRequest(limit=limit), timeout=self.call_timeout_s)
        except grpc.aio.AioRpcError as err:
            raise AnchorServiceError(err.code(), err.details() or "") from err
        return list(resp.batches)
