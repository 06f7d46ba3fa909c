"""In-memory test doubles (no I/O): :mod:`fakes.lightning` for LND nodes, :mod:`fakes.chain`
for btcd's chain view and the hub's anchoring wallet. Tests only: nothing under ``p2pep/``
or ``services/`` imports them."""
