"""Settlement-side domain: reading validation, contracts, delivery and increments.

Pure and synchronous; the settlement service (``services/settlement``) does the I/O.

- :mod:`.validation`  reading stream checks with reason codes
- :mod:`.contracts`   contract terms, hash, signatures, life cycle, settlement summary
- :mod:`.increments`  delivered energy per contract, payment increments, rounding, gate
- :mod:`.allocation`  splitting a meter's energy across concurrent contracts
"""
