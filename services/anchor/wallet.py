"""The service's wallet wrapper: counts the virtual size of every anchoring transaction.

The wallet returns only a txid; the size comes from btcd (``getrawtransaction txid 1``,
the tx is in its mempool once LND has published it). Losing the count never blocks anchoring.
"""

from __future__ import annotations

import structlog

from p2pep.anchor.chain import AnchorWallet, ChainError, ChainView
from services.anchor.metrics import VBYTES

log = structlog.get_logger(__name__)


class CountingWallet:
    def __init__(self, wallet: AnchorWallet, chain: ChainView) -> None:
        self.wallet = wallet
        self.chain = chain

    async def send_op_return(self, payload: bytes, sat_per_vbyte: int) -> str:
        txid = await self.wallet.send_op_return(payload, sat_per_vbyte)
        try:
            tx = await self.chain.get_raw_transaction(txid)
            vsize = int(tx.get("vsize") or 0)
        except (ChainError, TypeError, ValueError) as exc:
            log.warning("anchor.vsize_unknown", txid=txid, error=str(exc))
            return txid
        VBYTES.inc(vsize)
        log.info("anchor.tx_published", txid=txid, vsize=vsize, sat_per_vbyte=sat_per_vbyte)
        return txid
