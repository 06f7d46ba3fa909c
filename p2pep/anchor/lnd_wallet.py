"""The operator's LND on-chain wallet as an :class:`~p2pep.anchor.chain.AnchorWallet`.

Anchoring transactions are built, funded and signed by the hub's LND through
``walletrpc.SendOutputs`` (:meth:`p2pep.lnd.client.LndClient.send_op_return`): one
OP_RETURN output plus LND's change. Only the anchor service holds the hub's macaroon.

The adapter refuses any payload that is not a P2PEP anchor payload (tag, version, root):
nothing private can reach the chain through it, even by a bug upstream.
"""

from __future__ import annotations

from p2pep.anchor import opreturn
from p2pep.lnd.client import LndClient, LndConnection

LABEL_PREFIX = "p2pep anchor"


class LndAnchorWallet:
    def __init__(self, client: LndClient) -> None:
        self.client = client

    @classmethod
    def connect(cls, rpcserver: str, tls_cert: str, macaroon: str, name: str = "hub") -> LndAnchorWallet:
        """A wallet over a new gRPC connection (the channel connects lazily)."""
        return cls(LndClient(LndConnection(name, rpcserver, tls_cert, macaroon)))

    async def send_op_return(self, payload: bytes, sat_per_vbyte: int) -> str:
        root = opreturn.decode_payload(payload)  # OpReturnError unless it is exactly an anchor payload
        # The label shows in `lncli listchaintxns`, so the operator can tell anchors from other spends.
        return await self.client.send_op_return(payload, sat_per_vbyte, label=f"{LABEL_PREFIX} {root.hex()}")

    async def close(self) -> None:
        await self.client.close()
