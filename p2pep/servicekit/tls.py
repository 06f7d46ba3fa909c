"""Mutual TLS for every P2PEP gRPC port and channel: :class:`Tls`.

A component's :class:`Tls` is its TLS folder (:class:`p2pep.pki.tlsdir.TlsDir`) and its own
identity: the certificate ``<name>.crt`` it presents both as a server and as a client, the CA
it trusts (``ca.crt``) and the revocation list its servers consult (``revoked.txt``).

A service whose settings name no TLS folder does not start (:class:`TlsRequired`), so a
deployment cannot run without mTLS by accident. In-process tests use a session-wide test CA
(``tests/conftest.py``) through the same code path.

The one exception is for measuring what TLS costs (``bench/bench_mtls.py``):
``plaintext_loopback`` (the ``grpc_plaintext_loopback`` setting) serves and dials with gRPC's
*local* credentials, plaintext and loopback only (gRPC refuses any other peer at the
handshake; the settings refuse any other address before that). The material is loaded all
the same, and the authorization interceptor does the same work; it takes the caller's
certificate from the TLS folder by the name the client claims (:data:`CLAIM_PREFIX` in its
user agent) instead of from the handshake. Any process on the host can claim any name then,
which is why nothing but the benchmark turns it on (docs/trust-boundary.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import grpc

from p2pep.identity import Identity
from p2pep.pki.tlsdir import Revocations, TlsDir
from p2pep.servicekit.settings import BaseServiceSettings, env_name

#: In plaintext loopback mode a client names itself by starting its user agent with this,
#: followed by its identity (``p2pep-claim/meter/meter-3``).
CLAIM_PREFIX = "p2pep-claim/"


class TlsRequired(RuntimeError):
    """A component started without TLS material."""


def load_credentials(tls: TlsDir, identity: Identity) -> tuple[bytes, bytes, bytes]:
    """``(key, cert, ca)`` PEMs of ``identity`` in ``tls`` (a seam the tests' CA hooks into
    to issue test certificates on first use)."""
    return tls.credentials(identity.name)


@dataclass(frozen=True)
class Tls:
    dir: TlsDir
    identity: Identity
    key_pem: bytes = field(repr=False)
    cert_pem: bytes = field(repr=False)
    ca_pem: bytes = field(repr=False)
    revocations: Revocations = field(repr=False)
    plaintext_loopback: bool = False  # measuring only: see the module's docstring

    @classmethod
    def load(cls, tls_dir: str | Path, identity: Identity, *, setting: str = "P2PEP_TLS_DIR",
             plaintext_loopback: bool = False) -> Tls:
        """``identity``'s material in ``tls_dir``; :class:`TlsRequired` naming ``setting`` if
        the folder is not set, :class:`p2pep.pki.tlsdir.TlsDirError` if material is missing."""
        if not str(tls_dir):
            raise TlsRequired(f"{setting} is not set: every P2PEP gRPC port and channel is mutual TLS "
                              "(`p2pep ca init` and `p2pep ca issue` make the material)")
        d = TlsDir(tls_dir)
        key, cert, ca = load_credentials(d, identity)
        return cls(d, identity, key, cert, ca, Revocations(d.revoked_path), plaintext_loopback)

    def server_credentials(self) -> grpc.ServerCredentials:
        """Serve as :attr:`identity`; every client must present a certificate of the CA."""
        if self.plaintext_loopback:
            return grpc.local_server_credentials(grpc.LocalConnectionType.LOCAL_TCP)
        return grpc.ssl_server_credentials([(self.key_pem, self.cert_pem)], root_certificates=self.ca_pem,
                                           require_client_auth=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Dial as :attr:`identity`, trusting only servers with a certificate of the CA."""
        if self.plaintext_loopback:
            return grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
        return grpc.ssl_channel_credentials(root_certificates=self.ca_pem, private_key=self.key_pem,
                                            certificate_chain=self.cert_pem)


def service_tls(settings: BaseServiceSettings, identity: Identity) -> Tls:
    """``identity``'s :class:`Tls` from a service's settings (its ``tls_dir``)."""
    return Tls.load(settings.tls_dir, identity, setting=env_name(type(settings), "tls_dir"),
                    plaintext_loopback=settings.grpc_plaintext_loopback)
