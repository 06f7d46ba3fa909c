"""Mutual TLS for every P2PEP gRPC port and channel: :class:`Tls`.

A component's :class:`Tls` is its TLS folder (:class:`p2pep.pki.tlsdir.TlsDir`) and its own
identity: the certificate ``<name>.crt`` it presents both as a server and as a client, the CA
it trusts (``ca.crt``) and the revocation list its servers consult (``revoked.txt``).

All of it is re-read when it changes, without a restart (:class:`p2pep.pki.material.Material`,
:class:`p2pep.pki.tlsdir.Revocations`): a server uses new material from its next handshake on
(gRPC's certificate-configuration fetcher, asked before each new connection), a client for
each channel it creates from then on. A channel already open keeps the credentials it was
created with (gRPC Python has no reloading channel credentials): it presents the old
certificate until it is made again, so a rotation must leave the old certificate valid (not
revoked, not expired) until the clients' channels have been re-created (e.g. restarted).

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
from p2pep.pki.material import Material, Pems
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
    material: Material = field(repr=False)
    revocations: Revocations = field(repr=False)
    plaintext_loopback: bool = False  # measuring only: see the module's docstring

    @property
    def pems(self) -> Pems:
        """``(key, certificate, CA bundle)`` as they are now."""
        return self.material.current()[0]

    @property
    def key_pem(self) -> bytes:
        return self.pems[0]

    @property
    def cert_pem(self) -> bytes:
        return self.pems[1]

    @property
    def ca_pem(self) -> bytes:
        return self.pems[2]

    @classmethod
    def load(cls, tls_dir: str | Path, identity: Identity, *, setting: str = "P2PEP_TLS_DIR",
             plaintext_loopback: bool = False) -> Tls:
        """``identity``'s material in ``tls_dir``; :class:`TlsRequired` naming ``setting`` if
        the folder is not set, :class:`p2pep.pki.tlsdir.TlsDirError` if material is missing."""
        if not str(tls_dir):
            raise TlsRequired(f"{setting} is not set: every P2PEP gRPC port and channel is mutual TLS "
                              "(`p2pep ca init` and `p2pep ca issue` make the material)")
        d = TlsDir(tls_dir)
        first = load_credentials(d, identity)
        material = Material(identity, d.key(identity.name), d.crt(identity.name), d.ca_crt, first)
        return cls(d, identity, material, Revocations(d.revoked_path), plaintext_loopback)

    def server_credentials(self) -> grpc.ServerCredentials:
        """Serve as :attr:`identity`; every client must present a certificate of the CA.
        Before each new connection gRPC asks for the material, which is re-read if it changed."""
        if self.plaintext_loopback:
            return grpc.local_server_credentials(grpc.LocalConnectionType.LOCAL_TCP)
        (key, cert, ca), version = self.material.current()
        served = [version]

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            (key, cert, ca), version = self.material.current()
            if version == served[0]:
                return None  # unchanged: gRPC keeps what it has
            served[0] = version
            return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

        return grpc.dynamic_ssl_server_credentials(
            grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca),
            fetch,  # type: ignore[arg-type]  # None means "unchanged" (grpc's docstring; its stubs say otherwise)
            require_client_authentication=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Dial as :attr:`identity`, trusting only servers with a certificate of the CA
        (the material as it is now: a channel keeps what it was created with)."""
        if self.plaintext_loopback:
            return grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
        key, cert, ca = self.pems
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def service_tls(settings: BaseServiceSettings, identity: Identity) -> Tls:
    """``identity``'s :class:`Tls` from a service's settings (its ``tls_dir``)."""
    return Tls.load(settings.tls_dir, identity, setting=env_name(type(settings), "tls_dir"),
                    plaintext_loopback=settings.grpc_plaintext_loopback)
