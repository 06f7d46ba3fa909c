"""The operator's public-key infrastructure: CA, certificates, revocation, meter enrollment.

* :mod:`p2pep.pki.ca`: the CA key, issuing certificates (one identity each), signing CSRs;
* :mod:`p2pep.pki.tlsdir`: the TLS folder's layout, 0600 keys, the issue log, revocations;
* :mod:`p2pep.pki.enrollment`: one-time tokens and proof of possession of a meter's key;
* :mod:`p2pep.pki.cli`: ``p2pep ca init|issue|revoke|list`` and ``p2pep enroll``.
"""
