"""On-chain anchoring of contracts: batched Merkle roots in one OP_RETURN, proofs anyone can check.

Pure parts: :mod:`merkle` (tree and proofs), :mod:`opreturn` (payload/script layout),
:mod:`batching` (when a batch closes), :mod:`document` (the self-contained contract JSON),
:mod:`verify` (offline checks). I/O at the edges: :mod:`verify` (chain checks),
:mod:`anchorer` (the service logic), :mod:`btcd_chain` (btcd JSON-RPC adapter), :mod:`cli`.
The format is documented in ``docs/anchoring.md``.
"""
