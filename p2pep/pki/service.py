"""Enrollment over gRPC: :class:`EnrollmentServer` (where the CA key is) and :func:`enroll_remote`.

The server listens on its own port with server-authenticated TLS only (a meter that enrolls
has no certificate yet) and serves ``EnrollmentService`` alone, so nothing but enrollment
is reachable without a client certificate. Every check is :meth:`p2pep.pki.enrollment.
Enrollment.enroll`'s; refusals become statuses through the same
:class:`~p2pep.servicekit.errors.RefusalInterceptor` as everywhere. Requests are small
(a CSR and a signature): messages over 16 KiB are refused by gRPC.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import structlog

from p2pep.identity import Identity
from p2pep.metering.signing import MeterKey
from p2pep.pki.ca import key_pem
from p2pep.pki.enrollment import Enrollment, enrollment_request
from p2pep.pki.tlsdir import TlsDir, write_private
from p2pep.servicekit.errors import RefusalInterceptor
from p2pep.v1 import enrollment_pb2, enrollment_pb2_grpc

log = structlog.get_logger("enrollment")
MAX_MESSAGE = 16 * 1024


class EnrollmentServicer(enrollment_pb2_grpc.EnrollmentServiceServicer):
    def __init__(self, tls: TlsDir) -> None:
        self.book = Enrollment(tls)
        self.ca_pem = tls.ca_pem()

    async def Enroll(self, request: enrollment_pb2.EnrollRequest,
                     context: grpc.aio.ServicerContext[Any, Any]) -> enrollment_pb2.EnrollResponse:
        cert = await asyncio.to_thread(self.book.enroll, request.meter_id, request.token, request.pubkey,
                                       request.signature, request.csr_pem)
        log.info("meter enrolled", meter_id=request.meter_id, pubkey=request.pubkey)
        return enrollment_pb2.EnrollResponse(certificate_pem=cert, ca_pem=self.ca_pem)


class EnrollmentServer:
    """Serves enrollment as ``identity`` (e.g. ``service/settlement``) from the CA in ``tls``."""

    def __init__(self, tls: TlsDir, identity: Identity) -> None:
        key, cert, _ = tls.credentials(identity.name)
        tls.ca()  # the CA key must be here: it signs the certificates
        self.server = grpc.aio.server(interceptors=[RefusalInterceptor()],
                                      options=[("grpc.max_receive_message_length", MAX_MESSAGE)])
        enrollment_pb2_grpc.add_EnrollmentServiceServicer_to_server(EnrollmentServicer(tls), self.server)
        self._creds = grpc.ssl_server_credentials([(key, cert)], require_client_auth=False)
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        self.port = self.server.add_secure_port(f"{host}:{port}", self._creds)
        if self.port == 0:
            raise OSError(f"could not bind the enrollment port {host}:{port}")
        await self.server.start()
        log.info("enrollment serving", port=self.port)
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        await self.server.stop(grace)


async def enroll_remote(target: str, server_name: str, ca_pem: bytes, meter_id: str, token: str,
                        key: MeterKey, timeout: float = 15.0) -> tuple[bytes, bytes]:
    """Enroll with the server named ``server_name`` at ``target`` (verified with ``ca_pem``);
    returns ``(TLS key PEM, certificate PEM)``. A refusal raises ``grpc.aio.AioRpcError``."""
    tls_key, csr_pem, signature = enrollment_request(meter_id, token, key)
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    async with grpc.aio.secure_channel(target, creds, options=[("grpc.ssl_target_name_override", server_name)]) as ch:
        resp = await enrollment_pb2_grpc.EnrollmentServiceStub(ch).Enroll(enrollment_pb2.EnrollRequest(
            meter_id=meter_id, token=token, pubkey=key.pubkey_hex, signature=signature, csr_pem=csr_pem),
            timeout=timeout)
    return key_pem(tls_key), bytes(resp.certificate_pem)


async def ensure_enrolled(tls_dir: Path, meter_id: str, key: MeterKey, target: str, token: str,
                          server_name: str = "settlement") -> bool:
    """A meter's start: if ``<meter_id>.crt`` is missing from its TLS folder (which holds the
    operator's ``ca.crt``), enroll and store key (0600) and certificate. True if it enrolled."""
    tls = TlsDir(tls_dir)
    if tls.crt(meter_id).exists() and tls.key(meter_id).exists():
        return False
    if not token or not target:
        raise RuntimeError(f"meter {meter_id} has no certificate in {tls_dir} and no enrollment token and target "
                           "to get one (`p2pep enroll <meter-id>` prints a token)")
    tls_key, cert = await enroll_remote(target, server_name, tls.ca_pem(), meter_id, token, key)
    write_private(tls.key(meter_id), tls_key)
    tls.crt(meter_id).write_bytes(cert)
    return True
