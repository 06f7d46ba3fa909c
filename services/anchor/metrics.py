"""The anchor service's Prometheus metrics.

``p2pep_anchor_transactions_total{reason="new"}`` (batches anchored), ``{reason="reanchor"}``
(re-anchors), ``p2pep_anchor_reorgs_total`` (anchored batches whose block left the best
chain) and ``p2pep_anchor_leaves_pending`` are kept by :mod:`services.anchor.anchorer`; the
rest by the wallet wrapper and the block watcher.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

ANCHOR_TXS = Counter("p2pep_anchor_transactions", "Anchor transactions published", ["reason"])
ANCHOR_REORGS = Counter("p2pep_anchor_reorgs", "Anchored batches whose block left the best chain")
LEAVES_PENDING = Gauge("p2pep_anchor_leaves_pending", "Leaves waiting in the open batch")
VBYTES = Counter("p2pep_anchor_vbytes", "Virtual bytes of the anchoring transactions published")
TIP_HEIGHT = Gauge("p2pep_anchor_tip_height", "Best block height seen by the block watcher")
CHAIN_REORGS = Counter("p2pep_anchor_chain_reorgs", "Tip changes that were not a simple extension of the chain")
CHAIN_UP = Gauge("p2pep_anchor_chain_up", "1 if the last poll of btcd succeeded, else 0")
POLL_ERRORS = Counter("p2pep_anchor_poll_errors", "Failed polls of btcd's tip, or failed block handling")
