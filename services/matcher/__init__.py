"""The matcher service: P2PEP's market over gRPC (``python -m services.matcher``)."""
