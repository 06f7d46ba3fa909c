"""Certificate rotation without a restart (docs/trust-boundary.md "Rotation").

A running service takes a new certificate, key and CA bundle from its TLS folder for its next
handshake, and a component's clients take theirs for the next channel they create; material
that is half written or wrong is refused and the current one kept. Real TLS, in process: the
whole CA is replaced under a running matcher, and only clients of the new CA get in.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from matcher_helpers import settings, supply
from test_access_services import meter, refused
from tls_helpers import served_serial

from p2pep.identity import Identity
from p2pep.pki.material import problem
from p2pep.pki.tlsdir import TlsDir, write_private
from p2pep.servicekit.channels import channel
from p2pep.servicekit.tls import Tls
from p2pep.v1 import matcher_pb2_grpc
from services.matcher.app import start_matcher

MATCHER = Identity("service", "matcher")


def folder(path: Path, *names: Identity) -> TlsDir:
    d = TlsDir(path)
    d.init_ca()
    for n in names:
        d.issue(n)
    return d


def rotate(into: TlsDir, new: TlsDir, *names: str) -> None:
    """Copy ``new``'s CA and the certificates of ``names`` over ``into``'s, as an operator would
    (each file replaced whole, keys first)."""
    for n in names:
        write_private(into.key(n), new.key(n).read_bytes())
        shutil.copyfile(new.crt(n), into.crt(n))
    shutil.copyfile(new.ca_crt, into.ca_crt)


def stub(target: str, tls: Tls) -> matcher_pb2_grpc.MatcherServiceStub:
    return matcher_pb2_grpc.MatcherServiceStub(channel(target, peer="matcher", tls=tls))


async def test_a_running_service_and_its_clients_take_a_new_ca_and_certificates(tmp_path: Path) -> None:
    live = folder(tmp_path / "tls", MATCHER, meter("meter-1"), meter("meter-2"))
    app = await start_matcher(settings(tmp_path, tls_dir=str(live.path)))
    t = app.target
    m1 = Tls.load(live.path, meter("meter-1"))  # loaded once, before the rotation
    old_m2 = Tls.load(shutil.copytree(live.path, tmp_path / "old"), meter("meter-2"))  # keeps the old CA
    try:
        await stub(t, m1).SubmitSupply(supply("s1", "meter-1", 100, 100))
        await stub(t, old_m2).SubmitSupply(supply("s2", "meter-2", 100, 100))

        old_serial = await served_serial(live.path, t, "matcher", "meter-1")
        new = folder(tmp_path / "new", MATCHER, meter("meter-1"), meter("meter-2"))
        rotate(live, new, "matcher", "meter-1")
        assert await served_serial(live.path, t, "matcher", "meter-1") != old_serial

        # the server now presents the new CA's certificate and trusts only the new CA: the old
        # material is refused at the handshake, both ways ...
        await refused(stub(t, old_m2).SubmitSupply(supply("s3", "meter-2", 100, 100), timeout=5),
                      grpc.StatusCode.UNAVAILABLE)
        # ... and meter-1's Tls, loaded before, dials with its new certificate and new CA
        await stub(t, m1).SubmitSupply(supply("s4", "meter-1", 100, 100))
        assert m1.material.version == 2
        new_m2 = Tls.load(new.path, meter("meter-2"))
        await stub(t, new_m2).SubmitSupply(supply("s5", "meter-2", 100, 100))
    finally:
        await app.stop()


async def test_half_written_or_wrong_material_keeps_the_current_one(tmp_path: Path) -> None:
    live = folder(tmp_path / "tls", MATCHER, meter("meter-1"))
    other = folder(tmp_path / "other", MATCHER, meter("meter-1"))
    app = await start_matcher(settings(tmp_path, tls_dir=str(live.path)))
    m1 = Tls.load(live.path, meter("meter-1"))
    server = Tls.load(live.path, MATCHER)
    before = server.pems
    try:
        # a new key without its certificate (a rotation caught half way): refused, kept
        write_private(live.key("matcher"), other.key("matcher").read_bytes())
        assert server.material.current() == (before, 1)
        await stub(app.target, m1).SubmitSupply(supply("s1", "meter-1", 100, 100))  # the server still serves
        # the certificate of another CA than ca.crt's: refused, kept
        shutil.copyfile(other.crt("matcher"), live.crt("matcher"))
        assert server.material.current() == (before, 1)
        assert problem(MATCHER, (other.key("matcher").read_bytes(), other.crt("matcher").read_bytes(),
                                 live.ca_crt.read_bytes())) == "the certificate is not issued by a CA in ca.crt"
        # another component's certificate: refused
        assert problem(MATCHER, (live.key("meter-1").read_bytes(), live.crt("meter-1").read_bytes(),
                                 live.ca_crt.read_bytes())) == "the certificate does not name service/matcher"
        # whole: taken
        shutil.copyfile(other.ca_crt, live.ca_crt)
        assert server.material.current()[1] == 2
        assert server.key_pem == other.key("matcher").read_bytes()
        # and the running server presents it (its own Material read the same files)
        shutil.copyfile(other.key("meter-1"), live.key("meter-1"))
        shutil.copyfile(other.crt("meter-1"), live.crt("meter-1"))
        assert await served_serial(live.path, app.target, "matcher", "meter-1") == x509.load_pem_x509_certificate(
            other.crt("matcher").read_bytes()).serial_number
    finally:
        await app.stop()


@pytest.mark.parametrize("what", ["ca.crt", "key"])
def test_a_missing_file_keeps_the_current_material(tmp_path: Path, what: str) -> None:
    live = folder(tmp_path / "tls", MATCHER)
    server = Tls.load(live.path, MATCHER)
    before = server.pems
    (live.ca_crt if what == "ca.crt" else live.key("matcher")).unlink()
    assert server.material.current() == (before, 1)
