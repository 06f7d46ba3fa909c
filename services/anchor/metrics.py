"""The anchor service's Prometheus metrics.

``p2pep_anchor_transactions_total{reason="new"}`` (batches anchored), ``{reason="reanchor"}``
(re-anchors), ``p2pep_anchor_reorgs_total`` (anchored batches whose block left the best
chain) and ``p2pep_anchor_leaves_pending`` are kept by :mod:`services.anchor.anchorer`, and so is the
anchoring lag after every block: batches by state, the age in blocks of the oldest batch not
yet confirmed (closed, sent or mined less than K blocks deep) and the confirmations of the newest
mined batch; the rest by the wallet wrapper and the block watcher. The hub's liquidity and
forwarding fees: :mod:`services.anchor.hub`.
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
LEAVES_ADDED = Counter("p2pep_anchor_leaves_added", "Leaves queued for anchoring, by kind", ["kind"])
BATCHES = Gauge("p2pep_anchor_batches", "Anchor batches by state", ["state"])
BATCH_STATES = ("closed", "broadcast", "mined", "confirmed")
OLDEST_UNCONFIRMED = Gauge("p2pep_anchor_oldest_unconfirmed_blocks",
                           "Blocks since the oldest batch not yet K blocks deep was closed (0: none)")
NEWEST_CONFIRMATIONS = Gauge("p2pep_anchor_newest_batch_confirmations",
                             "Confirmations of the most recently mined batch (0: none mined)")
MIN_CONFIRMATIONS = Gauge("p2pep_anchor_min_confirmations", "K: blocks deep before a batch is confirmed")

for _reason in ("new", "reanchor"):
    ANCHOR_TXS.labels(_reason)
for _kind in ("contract", "settlement"):
    LEAVES_ADDED.labels(_kind)
for _state in BATCH_STATES:
    BATCHES.labels(_state)
