"""Enrollment over gRPC (p2pep.pki.service): a meter without a certificate gets one with its token."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

from p2pep.identity import Identity, from_certificate
from p2pep.metering.signing import MeterKey
from p2pep.pki.ca import meter_key_of
from p2pep.pki.enrollment import Enrollment
from p2pep.pki.service import EnrollmentServer, enroll_remote, ensure_enrolled
from p2pep.pki.tlsdir import TlsDir
from p2pep.regtest import wait_for
from p2pep.regtest.ports import free_port
from p2pep.servicekit.channels import channel
from p2pep.servicekit.settings import settings_env
from p2pep.servicekit.tls import Tls
from p2pep.settings.settlement import SettlementSettings
from p2pep.v1 import enrollment_pb2, enrollment_pb2_grpc, settlement_pb2, settlement_pb2_grpc

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
async def operator(tmp_path: Path) -> Any:
    """The operator's side: a CA and settlement's certificate, enrollment served on its own port."""
    tls = TlsDir(tmp_path / "operator")
    tls.init_ca()
    tls.issue(Identity("service", "settlement"))
    server = EnrollmentServer(tls, Identity("service", "settlement"))
    port = await server.start("127.0.0.1", 0)
    yield tls, f"127.0.0.1:{port}"
    await server.stop(0)


def meter_folder(tmp_path: Path, tls: TlsDir) -> Path:
    """What a household's meter is given: the CA certificate (and, separately, its token)."""
    d = tmp_path / "meter-tls"
    d.mkdir()
    (d / "ca.crt").write_bytes(tls.ca_pem())
    return d


async def test_a_meter_enrolls_once_with_its_token_and_its_key(operator: Any, tmp_path: Path) -> None:
    tls, target = operator
    key = MeterKey.generate()
    token = Enrollment(tls).allow("meter-7")
    folder = meter_folder(tmp_path, tls)
    assert await ensure_enrolled(folder, "meter-7", key, target, token) is True
    cert = x509.load_pem_x509_certificate((folder / "meter-7.crt").read_bytes())
    assert from_certificate(cert) == Identity("meter", "meter-7") and meter_key_of(cert) == key.pubkey_hex
    assert oct((folder / "meter-7.key").stat().st_mode & 0o777) == "0o600"
    assert await ensure_enrolled(folder, "meter-7", key, target, token) is False  # has one: nothing to do
    # the certificate works for mutual TLS against the operator's services
    assert Tls.load(folder, Identity("meter", "meter-7")).identity.name == "meter-7"

    async def refused(meter_id: str, tok: str, k: MeterKey, code: grpc.StatusCode) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await enroll_remote(target, "settlement", tls.ca_pem(), meter_id, tok, k)
        assert err.value.code() == code, err.value.details()

    await refused("meter-7", token, key, grpc.StatusCode.PERMISSION_DENIED)  # reused token
    await refused("meter-8", token, key, grpc.StatusCode.PERMISSION_DENIED)  # unknown id
    await refused("meter-7", Enrollment(tls).allow("meter-7"), MeterKey.generate(),
                  grpc.StatusCode.ALREADY_EXISTS)  # a second key for an enrolled id
    await refused("bad id", "x", key, grpc.StatusCode.INVALID_ARGUMENT)
    assert [i.identity.name for i in tls.issued()].count("meter-7") == 1


async def test_the_enrollment_port_serves_enrollment_alone(operator: Any) -> None:
    tls, target = operator
    creds = grpc.ssl_channel_credentials(root_certificates=tls.ca_pem())
    async with grpc.aio.secure_channel(target, creds, options=[("grpc.ssl_target_name_override", "settlement")]) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await settlement_pb2_grpc.SettlementServiceStub(ch).ListMeters(settlement_pb2.ListMetersRequest())
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.aio.AioRpcError) as err:  # oversized: refused before any check
            await enrollment_pb2_grpc.EnrollmentServiceStub(ch).Enroll(
                enrollment_pb2.EnrollRequest(meter_id="m", csr_pem=b"x" * 100_000))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # a client that does not trust the operator's CA does not talk to it
    stranger = grpc.ssl_channel_credentials()
    async with grpc.aio.secure_channel(target, stranger, options=[("grpc.ssl_target_name_override", "settlement")]) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await enrollment_pb2_grpc.EnrollmentServiceStub(ch).Enroll(enrollment_pb2.EnrollRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_meter_without_token_or_certificate_does_not_start(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="no enrollment token"):
        await ensure_enrolled(tmp_path, "meter-9", MeterKey.generate(), "", "")


async def test_settlement_process_serves_enrollment_on_its_own_port(tmp_path: Path) -> None:
    """The deployment path: `python -m services.settlement` with the CA key in its TLS folder
    and an enrollment port; a meter enrolls there, then registers over mutual TLS."""
    tls = TlsDir(tmp_path / "tls")
    tls.init_ca()
    tls.issue(Identity("service", "settlement"))
    grpc_port, enroll_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2PEP_")} | settings_env(
        SettlementSettings, db_path=str(tmp_path / "s.sqlite"), grpc_port=grpc_port, metrics_port=0,
        tls_dir=str(tls.path), enrollment_port=enroll_port, shutdown_grace_s=1)
    proc = subprocess.Popen([sys.executable, "-m", "services.settlement"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        key = MeterKey.generate()
        token = Enrollment(tls).allow("meter-5")
        folder = meter_folder(tmp_path, tls)

        async def enrolled() -> bool:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                return await ensure_enrolled(folder, "meter-5", key, f"127.0.0.1:{enroll_port}", token)
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                return False

        await wait_for(enrolled, 30, what="meter-5 enrolled with the settlement process")
        stub = settlement_pb2_grpc.SettlementServiceStub(
            channel(f"127.0.0.1:{grpc_port}", peer="settlement", tls=Tls.load(folder, Identity("meter", "meter-5"))))
        await stub.RegisterMeter(settlement_pb2.RegisterMeterRequest(
            meter_id="meter-5", pubkey=key.pubkey_hex, node_pubkey="02" + "cd" * 32, address="127.0.0.1:1", role="producer"), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as err:  # its certificate binds it to the key it enrolled
            await stub.RegisterMeter(settlement_pb2.RegisterMeterRequest(
                meter_id="meter-5", pubkey=MeterKey.generate().pubkey_hex, node_pubkey="02" + "cd" * 32, address="127.0.0.1:1", role="producer"))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
