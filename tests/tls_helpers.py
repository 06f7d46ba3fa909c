"""The tests' certificate authority (see tests/conftest.py ``test_tls``).

In-process tests run every service with mutual TLS and the authorization interceptor, as
deployments do. The session's TLS folder is set in the environment for every settings class
(so ``SettlementSettings(...)`` etc. pick it up), and a certificate for a component name is
issued on first use (``p2pep.servicekit.tls.load_credentials`` is wrapped). Meter
certificates issued this way carry no enrolled key (settlement then binds a registration to
the first key it sees); the enrollment path has its own tests.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509

import p2pep.servicekit.tls as tls_mod
from p2pep.identity import Identity
from p2pep.pki.tlsdir import TlsDir
from p2pep.servicekit.channels import channel
from p2pep.servicekit.tls import Tls
from p2pep.settings import SERVICE_SETTINGS

TLS_DIR: Path | None = None
OPERATOR = Identity("operator", "test")


def _env_names() -> list[str]:
    from p2pep.servicekit.settings import BaseServiceSettings, env_name

    return [env_name(cls, "tls_dir") for cls in (BaseServiceSettings, *SERVICE_SETTINGS.values())]


@contextmanager
def test_ca(path: Path) -> Iterator[Path]:
    global TLS_DIR
    TlsDir(path).init_ca()
    TLS_DIR = path
    original = tls_mod.load_credentials

    def issuing(tls: TlsDir, identity: Identity) -> tuple[bytes, bytes, bytes]:
        if tls.path == path and not tls.crt(identity.name).exists():
            tls.issue(identity)
        return original(tls, identity)

    # processes a test starts (python -m services.x) find their certificates ready
    for name in ("settlement", "matcher", "anchor", "console", "portal"):
        TlsDir(path).issue(Identity("service", name))
    for i in range(1, 6):
        TlsDir(path).issue(Identity("meter", f"meter-{i}"))
    TlsDir(path).issue(OPERATOR)
    original_load = tls_mod.Tls.__dict__["load"]

    def load_default(cls: type[Tls], tls_dir: str | Path, identity: Identity, *, setting: str = "",
                     plaintext_loopback: bool = False) -> Tls:
        # a settings class of a test's own (its own prefix) reads no TLS variable: the test CA
        return original_load.__func__(cls, tls_dir or path, identity, setting=setting,
                                      plaintext_loopback=plaintext_loopback)

    saved = {n: os.environ.get(n) for n in _env_names()}
    tls_mod.load_credentials = issuing
    tls_mod.Tls.load = classmethod(load_default)  # type: ignore[method-assign,assignment]
    os.environ.update({n: str(path) for n in saved})
    try:
        yield path
    finally:
        tls_mod.load_credentials = original
        tls_mod.Tls.load = original_load  # type: ignore[method-assign]
        for n, v in saved.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


def tls_as(identity: Identity) -> Tls:
    """A :class:`Tls` of ``identity`` from the test CA (issued if new)."""
    assert TLS_DIR is not None, "the test_tls fixture is not active"
    return Tls.load(TLS_DIR, identity)


def dial(target: str, peer: str, as_: Identity = OPERATOR) -> grpc.aio.Channel:
    """A mutual-TLS channel to ``peer`` at ``target``, presenting ``as_``'s certificate."""
    return channel(target, peer=peer, tls=tls_as(as_))


def dial_without_certificate(target: str, peer: str) -> grpc.aio.Channel:
    """TLS that trusts the test CA but presents no client certificate."""
    assert TLS_DIR is not None
    creds = grpc.ssl_channel_credentials(root_certificates=(TLS_DIR / "ca.crt").read_bytes())
    return grpc.aio.secure_channel(target, creds, options=[("grpc.ssl_target_name_override", peer)])


def server_credentials(identity: Identity) -> grpc.ServerCredentials:
    """For tests' own fake servers: serve as ``identity`` with the test CA."""
    return tls_as(identity).server_credentials()


@contextmanager
def operators_may_call_everything() -> Iterator[None]:
    """For tests of a service's own behaviour (not of who may call it): the table lets
    operator certificates (the tests' ``operator/test``) call every RPC, acting for anyone.
    Who may call what is tested against the real table in tests/test_access*.py."""
    from dataclasses import replace

    from p2pep.access import ACCESS

    saved = dict(ACCESS)
    for method, rule in saved.items():
        ACCESS[method] = replace(rule, operators=True)
    try:
        yield
    finally:
        ACCESS.clear()
        ACCESS.update(saved)


class StubAsAllowed:
    """A stub calling each RPC of ``service`` (e.g. ``p2pep.v1.MeterService``) with a
    certificate the real table allows: settlement's for what only settlement may call, the
    test operator's for the rest (reads)."""

    def __init__(self, stub_cls: Any, target: str, peer: str, service: str) -> None:
        self.channels = [dial(target, peer, as_=Identity("service", "settlement")), dial(target, peer)]
        self._settlement, self._operator = (stub_cls(ch) for ch in self.channels)
        self._service = service

    def __getattr__(self, name: str) -> Any:
        from p2pep.access import ACCESS

        rule = ACCESS.get(f"/{self._service}/{name}")
        only_settlement = rule is not None and "settlement" in rule.services and not rule.operators
        return getattr(self._settlement if only_settlement else self._operator, name)

    async def close(self) -> None:
        for ch in self.channels:
            await ch.close()


async def served_serial(tls_dir: Path, target: str, peer: str, as_: str) -> int:
    """The serial number of the certificate the gRPC server at ``target`` presents in a new
    handshake, read with Python's own TLS (grpcio shows a client nothing of the server's
    certificate), dialled with the client certificate ``as_`` of ``tls_dir`` and checked
    against its ``ca.crt`` and the name ``peer``."""
    ctx = ssl.create_default_context(cafile=str(tls_dir / "ca.crt"))
    ctx.load_cert_chain(tls_dir / f"{as_}.crt", tls_dir / f"{as_}.key")
    ctx.set_alpn_protocols(["h2"])
    host, port = target.rsplit(":", 1)
    _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port), ssl=ctx, server_hostname=peer), 10)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.transport.abort()  # no TLS shutdown: the server has HTTP/2 frames on the way
    return x509.load_der_x509_certificate(der).serial_number
