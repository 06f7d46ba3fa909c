"""On-chain anchoring of contracts: batched Merkle roots in one OP_RETURN, proofs anyone can check.

Pure parts: :mod:`merkle` (tree and proofs), :mod:`opreturn` (payload/script layout),
:mod:`batching` (when a batch closes), :mod:`document` (the self-contained contract JSON),
:mod:`records` (what the anchor service reports), :mod:`verify` (offline checks). I/O at the
edges: :mod:`verify` (chain checks), :mod:`btcd_chain` (btcd JSON-RPC adapter),
:mod:`lnd_wallet` (the hub's wallet as payer), :mod:`client` (the service's gRPC client),
:mod:`cli`. The service itself, with its SQLite store, is ``services/anchor``.
The format is documented in ``docs/anchoring.md``.
"""
