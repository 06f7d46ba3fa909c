"""The anchor service: batches contract/settlement hashes, anchors their Merkle roots on-chain
from the operator's (hub's) LND wallet, watches btcd for blocks and reorgs, serves proofs.
See ``docs/anchoring.md``; run with ``python -m services.anchor`` (env ``P2PEP_ANCHOR_*``)."""
