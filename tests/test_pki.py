"""The operator CA, certificates, revocation and meter enrollment (p2pep.pki, p2pep.identity)."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from p2pep.cli import main as cli_main
from p2pep.identity import BadIdentity, Identity, from_auth_context, from_certificate
from p2pep.metering.signing import MeterKey
from p2pep.pki.ca import CertificateAuthority, cert_pem, make_csr, meter_key_of, new_key
from p2pep.pki.enrollment import Enrollment, enroll_local, enrollment_request
from p2pep.pki.tlsdir import Revocations, TlsDir, TlsDirError, read_revoked
from p2pep.refusals import AlreadyExists, InvalidArgument, PermissionDenied


def mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_identity_parses_and_refuses_bad_names() -> None:
    i = Identity.parse("p2pep:meter/meter-7")
    assert (i.kind, i.name, str(i), i.meter_id, i.uri) == ("meter", "meter-7", "meter/meter-7", "meter-7",
                                                           "p2pep:meter/meter-7")
    assert Identity.parse("service/settlement").meter_id is None
    for bad in ("meter", "robot/x", "meter/", "meter/a/b", "meter/../x", "meter/a b", "meter/" + "x" * 65):
        with pytest.raises(BadIdentity):
            Identity.parse(bad)


def test_certificate_names_exactly_one_identity(tmp_path: Path) -> None:
    tls = TlsDir(tmp_path)
    tls.init_ca()
    cert = tls.issue(Identity("service", "settlement"))
    assert from_certificate(cert) == Identity("service", "settlement")
    cn = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert cn == "settlement" and san.get_values_for_type(x509.DNSName) == ["settlement"]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["p2pep:service/settlement"]
    assert tls.ca().verifies(cert)
    assert mode(tls.key("settlement")) == 0o600 and mode(tls.ca_key) == 0o600
    pem = tls.crt("settlement").read_bytes()
    assert from_auth_context({"x509_pem_cert": [pem]}) == Identity("service", "settlement")
    assert from_auth_context({}) is None and from_auth_context({"x509_pem_cert": [b"junk"]}) is None
    # a certificate of another CA, or with two identities, names nobody we trust
    other = CertificateAuthority.create()
    assert not tls.ca().verifies(other.issue_with_key(Identity("service", "settlement"))[0])


def test_ca_is_never_overwritten_and_missing_material_is_named(tmp_path: Path) -> None:
    tls = TlsDir(tmp_path / "tls")
    with pytest.raises(TlsDirError, match="p2pep ca init"):
        tls.ca()
    tls.init_ca()
    key = tls.ca_key.read_bytes()
    with pytest.raises(TlsDirError, match="already holds a CA"):
        tls.init_ca()
    assert tls.ca_key.read_bytes() == key
    with pytest.raises(TlsDirError, match="matcher.crt"):
        tls.credentials("matcher")
    with pytest.raises(TlsDirError):
        tls.crt("../etc/passwd")


def test_revocation_by_name_or_serial_and_reload_when_the_file_changes(tmp_path: Path) -> None:
    tls = TlsDir(tmp_path)
    tls.init_ca()
    a = tls.issue(Identity("meter", "meter-1"), meter_key_hex=MeterKey.generate().pubkey_hex)
    b = tls.issue(Identity("service", "console"))
    seen = Revocations(tls.revoked_path)
    assert not seen.is_revoked(a.serial_number)
    assert tls.revoke("meter-1") == [a.serial_number]
    assert tls.revoke("meter-1") == []  # already
    assert seen.is_revoked(a.serial_number) and not seen.is_revoked(b.serial_number)
    assert tls.revoke(format(b.serial_number, "x")) == [b.serial_number]
    assert seen.is_revoked(b.serial_number)
    with pytest.raises(ValueError, match="no certificate"):
        tls.revoke("meter-9")
    assert read_revoked(tls.revoked_path) == {a.serial_number, b.serial_number}
    tls.revoked_path.write_text("not-hex\n")  # an unreadable list revokes everything (fail closed)
    assert seen.is_revoked(12345)


def test_expired_certificate_has_its_date(tmp_path: Path) -> None:
    ca = CertificateAuthority.create()
    cert, _ = ca.issue_with_key(Identity("operator", "old"), days=0)
    assert cert.not_valid_after_utc <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)


def test_enrollment_token_once_key_bound_and_refusals_write_nothing(tmp_path: Path) -> None:
    tls = TlsDir(tmp_path)
    tls.init_ca()
    book = Enrollment(tls)
    key = MeterKey.generate()
    token = book.allow("meter-7")
    assert token not in (tmp_path / "enrollment.json").read_text()  # stored hashed
    assert mode(tmp_path / "enrollment.json") == 0o600

    def attempt(meter_id: str, tok: str, k: MeterKey, signer: MeterKey | None = None) -> bytes:
        _, csr, sig = enrollment_request(meter_id, tok, signer or k)
        return book.enroll(meter_id, tok, k.pubkey_hex, sig, csr)

    issued_before = len(tls.issued())
    with pytest.raises(PermissionDenied, match="not allowed"):
        attempt("meter-8", token, key)  # unknown id
    with pytest.raises(PermissionDenied, match="token"):
        attempt("meter-7", "guess", key)
    with pytest.raises(PermissionDenied, match="possession"):
        attempt("meter-7", token, key, signer=MeterKey.generate())  # someone else's signature
    with pytest.raises(InvalidArgument):
        book.enroll("meter-7", token, "zz", b"", b"")
    assert len(tls.issued()) == issued_before and book.enrolled_key("meter-7") is None
    cert = x509.load_pem_x509_certificate(attempt("meter-7", token, key))
    assert from_certificate(cert) == Identity("meter", "meter-7") and meter_key_of(cert) == key.pubkey_hex
    with pytest.raises(PermissionDenied, match="already used"):
        attempt("meter-7", token, key)  # reused token
    second = book.allow("meter-7")
    with pytest.raises(AlreadyExists, match="another signing key"):
        attempt("meter-7", second, MeterKey.generate())  # a second key for an enrolled id
    again = x509.load_pem_x509_certificate(attempt("meter-7", second, key))  # the same key: a new certificate
    assert meter_key_of(again) == key.pubkey_hex
    # a proof for one CSR does not enroll another TLS key
    third = book.allow("meter-7")
    _, _, sig = enrollment_request("meter-7", third, key)
    other_csr = make_csr(new_key(), "meter-7").public_bytes(serialization.Encoding.PEM)
    with pytest.raises(PermissionDenied, match="possession"):
        book.enroll("meter-7", third, key.pubkey_hex, sig, other_csr)


def test_enroll_local_stores_the_meters_material(tmp_path: Path) -> None:
    tls = TlsDir(tmp_path)
    tls.init_ca()
    key = MeterKey.generate()
    enroll_local(tls, "meter-2", Enrollment(tls).allow("meter-2"), key)
    k, c, ca = tls.credentials("meter-2")
    cert = x509.load_pem_x509_certificate(c)
    assert meter_key_of(cert) == key.pubkey_hex and mode(tls.key("meter-2")) == 0o600
    assert cert_pem(tls.ca().cert) == ca


def test_cli_ca_init_issue_enroll_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path / "tls")
    assert cli_main(["ca", "init", "--tls-dir", d]) == 0
    assert cli_main(["ca", "init", "--tls-dir", d]) == 2
    assert "already holds a CA" in capsys.readouterr().err
    assert cli_main(["ca", "issue", "service", "settlement", "--tls-dir", d]) == 0
    assert cli_main(["ca", "issue", "operator", "alice", "--tls-dir", d]) == 0
    assert cli_main(["ca", "issue", "meter", "meter-1", "--tls-dir", d]) == 2  # meters enroll
    assert cli_main(["ca", "issue", "service", "bad/name", "--tls-dir", d]) == 2
    capsys.readouterr()
    assert cli_main(["enroll", "meter-1", "--tls-dir", d]) == 0
    token = capsys.readouterr().out.strip()
    assert len(token) >= 24
    assert json.loads((tmp_path / "tls" / "enrollment.json").read_text())["meters"]["meter-1"]["used"] is False
    assert cli_main(["ca", "revoke", "alice", "--tls-dir", d]) == 0
    assert cli_main(["ca", "revoke", "nobody", "--tls-dir", d]) == 2
    capsys.readouterr()
    assert cli_main(["ca", "list", "--tls-dir", d]) == 0
    out = capsys.readouterr().out
    assert "operator/alice" in out and "revoked" in out and "service/settlement" in out
