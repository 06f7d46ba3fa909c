"""A TLS folder: where a deployment's certificates, keys and revocations live.

Layout (``P2PEP_TLS_DIR``; in scenario runs and ``p2pep up`` ``<run_dir>/tls``; in k8s a
mounted Secret)::

    ca.crt              the operator CA's certificate (everyone)
    ca.key              the CA's key (only where the operator CA runs)
    <name>.crt/.key     one component's certificate and key (e.g. settlement, meter-7, p2pep)
    issued.jsonl        one line per certificate issued: serial, identity, not_after
    revoked.txt         revoked serials (hex, one a line, ``# comment`` allowed): servers read it
    enrollment.json     meter enrollment tokens (hashed) and enrolled keys (:mod:`p2pep.pki.enrollment`)

Invariants: private keys and the token file are written 0600 (created so, never widened);
a name is an :class:`~p2pep.identity.Identity` name (no path separators), so a name never
escapes the folder.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from p2pep.identity import NAME_RE, Identity
from p2pep.pki.ca import CERT_DAYS, CertificateAuthority, cert_pem, key_pem


class TlsDirError(RuntimeError):
    """Missing or unusable TLS material; the message says what and where."""


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by its owner only (0600), replacing it atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def parse_serial(text: str) -> int:
    """A serial number from hex (``0x`` optional, ``:`` separators allowed); ValueError if not."""
    t = text.strip().lower().removeprefix("0x").replace(":", "")
    if not t or any(c not in "0123456789abcdef" for c in t):
        raise ValueError(f"{text!r} is not a hex serial number")
    return int(t, 16)


@dataclass(frozen=True)
class Issued:
    serial: int
    identity: Identity
    not_after: str


class TlsDir:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    # -- paths ----------------------------------------------------------------------------------

    @property
    def ca_crt(self) -> Path:
        return self.path / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.path / "ca.key"

    @property
    def revoked_path(self) -> Path:
        return self.path / "revoked.txt"

    @property
    def issued_path(self) -> Path:
        return self.path / "issued.jsonl"

    def crt(self, name: str) -> Path:
        return self.path / f"{_checked(name)}.crt"

    def key(self, name: str) -> Path:
        return self.path / f"{_checked(name)}.key"

    # -- the CA ---------------------------------------------------------------------------------

    def has_ca(self) -> bool:
        return self.ca_crt.exists() and self.ca_key.exists()

    def init_ca(self) -> CertificateAuthority:
        """Create the CA here; :class:`TlsDirError` if one exists (its key is never overwritten)."""
        if self.ca_crt.exists() or self.ca_key.exists():
            raise TlsDirError(f"{self.path} already holds a CA (ca.crt/ca.key)")
        self.path.mkdir(parents=True, exist_ok=True)
        ca = CertificateAuthority.create()
        write_private(self.ca_key, key_pem(ca.key))
        self.ca_crt.write_bytes(cert_pem(ca.cert))
        return ca

    def ensure_ca(self) -> CertificateAuthority:
        return self.ca() if self.has_ca() else self.init_ca()

    def ca(self) -> CertificateAuthority:
        if not self.has_ca():
            raise TlsDirError(f"no CA in {self.path} (ca.crt and ca.key): run `p2pep ca init`")
        return CertificateAuthority.from_pem(self.ca_key.read_bytes(), self.ca_crt.read_bytes())

    def ca_pem(self) -> bytes:
        try:
            return self.ca_crt.read_bytes()
        except FileNotFoundError:
            raise TlsDirError(f"no CA certificate {self.ca_crt}") from None

    # -- issuing --------------------------------------------------------------------------------

    def record(self, identity: Identity, cert: x509.Certificate) -> None:
        line = {"serial": format(cert.serial_number, "x"), "identity": str(identity),
                "not_after": cert.not_valid_after_utc.isoformat()}
        with self.issued_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(line, sort_keys=True) + "\n")

    def store(self, identity: Identity, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None) -> None:
        """Write ``<name>.crt`` (and ``<name>.key``, 0600) and record the issue."""
        if key is not None:
            write_private(self.key(identity.name), key_pem(key))
        self.crt(identity.name).write_bytes(cert_pem(cert))
        self.record(identity, cert)

    def issue(self, identity: Identity, *, days: int = CERT_DAYS, meter_key_hex: str | None = None) -> x509.Certificate:
        """A fresh key and certificate for ``identity``, stored here."""
        cert, key = self.ca().issue_with_key(identity, days=days, meter_key_hex=meter_key_hex)
        self.store(identity, cert, key)
        return cert

    def issued(self) -> list[Issued]:
        if not self.issued_path.exists():
            return []
        out = []
        for line in self.issued_path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                d = json.loads(line)
                out.append(Issued(int(d["serial"], 16), Identity.parse(d["identity"]), d["not_after"]))
        return out

    # -- revocation -----------------------------------------------------------------------------

    def revoke(self, what: str) -> list[int]:
        """Revoke by name (every certificate issued to it) or by hex serial; returns the
        serials newly revoked. ValueError if ``what`` matches nothing issued here."""
        issued = self.issued()
        by_name = [i.serial for i in issued if i.identity.name == what or str(i.identity) == what]
        if by_name:
            serials = by_name
        else:
            try:
                serial = parse_serial(what)
            except ValueError:
                raise ValueError(f"no certificate issued to {what!r} in {self.path}") from None
            if serial not in {i.serial for i in issued}:
                raise ValueError(f"no certificate with serial {what} issued in {self.path}")
            serials = [serial]
        already = read_revoked(self.revoked_path)
        new = [s for s in serials if s not in already]
        if new:
            with self.revoked_path.open("a", encoding="utf-8") as f:
                for s in new:
                    f.write(f"{s:x}  # {what} {dt.datetime.now(dt.UTC).isoformat()}\n")
        return new

    # -- a component's material -----------------------------------------------------------------

    def credentials(self, name: str) -> tuple[bytes, bytes, bytes]:
        """``(key PEM, certificate PEM, CA PEM)`` of component ``name``."""
        missing = [p for p in (self.key(name), self.crt(name), self.ca_crt) if not p.exists()]
        if missing:
            raise TlsDirError(f"TLS material missing: {', '.join(str(p) for p in missing)} "
                              f"(issue it with `p2pep ca issue <kind> {name}`)")
        return self.key(name).read_bytes(), self.crt(name).read_bytes(), self.ca_crt.read_bytes()


def _checked(name: str) -> str:
    if not NAME_RE.match(name):
        raise TlsDirError(f"{name!r} is not a component name")
    return name


def read_revoked(path: Path) -> frozenset[int]:
    """The serials listed in a revocation file (missing file: none). Bad lines are an error:
    a revocation list that cannot be read must not silently revoke nothing."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return frozenset()
    out = set()
    for n, line in enumerate(text.splitlines(), 1):
        body = line.split("#", 1)[0].strip()
        if body:
            try:
                out.add(parse_serial(body))
            except ValueError as e:
                raise TlsDirError(f"{path}:{n}: {e}") from None
    return frozenset(out)


class Revocations:
    """The revocation list a server consults on every call, re-read when the file changes
    (its mtime, size or inode), so ``p2pep ca revoke`` takes effect without a restart. If
    a changed file cannot be read, every serial counts as revoked until it can (fail closed)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._serials: frozenset[int] = frozenset()
        self._broken = False

    def _current_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def is_revoked(self, serial: int) -> bool:
        stamp = self._current_stamp()
        if stamp != self._stamp or self._broken:
            try:
                self._serials = read_revoked(self.path)
                self._broken = False
            except (TlsDirError, OSError):
                self._broken = True
            self._stamp = stamp
        return self._broken or serial in self._serials
