"""The TLS material of a run: ``p2pep up`` and ``scenario run`` make it themselves.

In ``<run_dir>/tls`` (``Layout.tls_dir``) the runner creates the operator CA, issues each
service its certificate, enrolls each meter with a one-time token and its own secp256k1
key (the same enrollment an operator does with ``p2pep enroll``: token, proof of
possession, CSR), and issues the harness an operator certificate (``p2pep``) with which it
watches the run and which ``p2pep contract export`` and the tests use afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from p2pep.identity import Identity
from p2pep.metering.signing import MeterKey
from p2pep.pki.enrollment import Enrollment, enroll_local
from p2pep.pki.tlsdir import TlsDir
from p2pep.servicekit.tls import Tls
from p2pep.settings.tls import ToolTlsSettings

OPERATOR = "p2pep"


def prepare(tls_dir: Path, services: Iterable[str], meter_keys: Mapping[str, Path], *,
            plaintext_loopback: bool = False) -> Tls:
    """Make (or complete) a run's TLS folder; the operator's :class:`Tls`.

    ``meter_keys``: each meter's key file (created if missing, as the meter itself would).
    ``plaintext_loopback``: the TLS benchmark's measuring mode (:mod:`p2pep.servicekit.tls`)."""
    tls = TlsDir(tls_dir)
    tls.ensure_ca()
    for name in services:
        if not tls.crt(name).exists():
            tls.issue(Identity("service", name))
    if not tls.crt(OPERATOR).exists():
        tls.issue(Identity("operator", OPERATOR))
    book = Enrollment(tls)
    for meter_id, key_path in meter_keys.items():
        key = MeterKey.load_or_create(key_path)
        if tls.crt(meter_id).exists() and book.enrolled_key(meter_id) == key.pubkey_hex:
            continue
        enroll_local(tls, meter_id, book.allow(meter_id), key)
    return Tls.load(tls_dir, Identity("operator", OPERATOR), plaintext_loopback=plaintext_loopback)


def operator_tls(run_dir: Path) -> Tls:
    """The operator certificate a CLI command dials with: ``P2PEP_TLS_DIR`` and
    ``P2PEP_TLS_NAME`` if set, else the run's (``<run_dir>/tls``, ``p2pep``)."""
    s = ToolTlsSettings()
    return Tls.load(Path(s.dir) if s.dir else run_dir / "tls", Identity("operator", s.name))
