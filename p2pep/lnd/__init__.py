"""Async client for LND over grpc.aio, with stubs generated from the pinned lnd's protos."""

from p2pep.lnd.client import LndClient, LndConnection, LndError, PaymentFailed

__all__ = ["LndClient", "LndConnection", "LndError", "PaymentFailed"]
