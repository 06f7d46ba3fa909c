"""P2PEP: peer-to-peer energy billing for microgrids, settled over Lightning."""
