"""lnd's payment RPCs over an in-memory payment index, answered as lnd answers them, to test
:class:`p2pep.lnd.client.LndClient` against a node with more payments than one page.

* ``ListPayments``: payments by sequence number (``payment_index``, from 1). Forward: those
  after ``index_offset``, oldest first, at most ``max_payments`` (0: no limit). ``reversed``:
  the newest ``max_payments`` before ``index_offset`` (0: from the newest), still in
  ascending order. ``first_index_offset``/``last_index_offset`` are the page's ends.
* ``TrackPaymentV2``: a stream whose first update is the payment's current state; NOT_FOUND
  ("payment isn't initiated") for a hash the node never paid.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from p2pep.lndrpc import lightning_pb2 as ln
from p2pep.lndrpc.routerrpc import router_pb2 as router


def payment_hash(i: int) -> str:
    return hashlib.sha256(f"payment {i}".encode()).hexdigest()


def many_payments(n: int) -> list[ln.Payment]:
    """``n`` succeeded payments, sequence numbers 1..n, hashes :func:`payment_hash`."""
    return [ln.Payment(payment_hash=payment_hash(i), payment_preimage=f"{i:064x}", value_msat=10_000,
                       status=ln.Payment.SUCCEEDED, payment_index=i) for i in range(1, n + 1)]


class _Track:
    def __init__(self, found: ln.Payment | None) -> None:
        self.found = found
        self.cancelled = False

    def __aiter__(self) -> AsyncIterator[ln.Payment]:
        return self._updates()

    async def _updates(self) -> AsyncIterator[ln.Payment]:
        if self.found is None:
            raise grpc.aio.AioRpcError(grpc.StatusCode.NOT_FOUND, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                       "payment isn't initiated")
        yield self.found

    def cancel(self) -> None:
        self.cancelled = True


class FakePaymentRpc:
    """Stands in for both ``LndClient.ln`` and ``LndClient.router`` (only the payment RPCs)."""

    def __init__(self, payments: list[ln.Payment]) -> None:
        self.payments = payments
        self.pages: list[ln.ListPaymentsRequest] = []

    async def ListPayments(self, req: ln.ListPaymentsRequest, timeout: Any = None) -> ln.ListPaymentsResponse:
        self.pages.append(req)
        rows = [p for p in self.payments if req.include_incomplete or p.status == ln.Payment.SUCCEEDED]
        limit = req.max_payments or len(rows)
        if req.reversed:
            rows = [p for p in rows if req.index_offset == 0 or p.payment_index < req.index_offset][-limit:]
        else:
            rows = [p for p in rows if p.payment_index > req.index_offset][:limit]
        return ln.ListPaymentsResponse(payments=rows, first_index_offset=rows[0].payment_index if rows else 0,
                                       last_index_offset=rows[-1].payment_index if rows else 0)

    def TrackPaymentV2(self, req: router.TrackPaymentRequest, timeout: Any = None) -> _Track:
        found = [p for p in self.payments if p.payment_hash == req.payment_hash.hex()]
        return _Track(found[-1] if found else None)
