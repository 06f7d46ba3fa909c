"""`p2pep ca ...` and `p2pep enroll`: the operator's CA from the command line.

The TLS folder is ``--tls-dir``, else ``P2PEP_TLS_DIR``, else ``./tls``. Errors are one line
on stderr with exit code 2.

* ``p2pep ca init``: create the CA (ca.crt, ca.key 0600); refuses to overwrite one;
* ``p2pep ca issue service|operator <name>``: a key and certificate ``<name>.crt/.key``
  (meters get theirs by enrolling: ``p2pep ca issue meter <id> --meter-key HEX`` exists
  for operators who vouch for a key out of band);
* ``p2pep ca revoke <name|serial>``: servers refuse it from their next call on;
* ``p2pep ca list``: what was issued, and what is revoked;
* ``p2pep enroll <meter-id>``: print a one-time enrollment token for that meter id.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from p2pep.identity import BadIdentity, Identity
from p2pep.pki.enrollment import Enrollment
from p2pep.pki.tlsdir import TlsDir, TlsDirError, read_revoked
from p2pep.settings.tls import ToolTlsSettings


def _tls(args: argparse.Namespace) -> TlsDir:
    return TlsDir(Path(args.tls_dir or ToolTlsSettings().dir or "tls"))


def _fail(msg: str) -> int:
    print(f"p2pep: {msg}", file=sys.stderr)
    return 2


def _init(args: argparse.Namespace) -> int:
    tls = _tls(args)
    tls.init_ca()
    print(f"CA created in {tls.path} (ca.crt; ca.key is the operator's secret)")
    return 0


def _issue(args: argparse.Namespace) -> int:
    tls = _tls(args)
    ident = Identity(args.kind, args.name)
    if ident.kind == "meter" and not args.meter_key:
        return _fail("a meter certificate needs --meter-key (or let the meter enroll: `p2pep enroll ID`)")
    cert = tls.issue(ident, days=args.days, meter_key_hex=args.meter_key or None)
    print(f"issued {ident} serial {cert.serial_number:x}: {tls.crt(ident.name)}, {tls.key(ident.name)}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    tls = _tls(args)
    new = tls.revoke(args.what)
    if not new:
        print(f"{args.what}: already revoked")
    for serial in new:
        print(f"revoked serial {serial:x} ({tls.revoked_path})")
    return 0


def _list(args: argparse.Namespace) -> int:
    tls = _tls(args)
    revoked = read_revoked(tls.revoked_path)
    for i in tls.issued():
        state = "revoked" if i.serial in revoked else "valid"
        print(f"{i.serial:x}  {i.identity!s:32}  until {i.not_after}  {state}")
    return 0


def _enroll(args: argparse.Namespace) -> int:
    token = Enrollment(_tls(args)).allow(args.meter_id)
    print(token)
    return 0


def _wrap(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(fn(args))
        except (TlsDirError, BadIdentity, ValueError, OSError) as e:
            return _fail(str(e))

    return run


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    def tls_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--tls-dir", default="", help="the TLS folder (default: $P2PEP_TLS_DIR, else ./tls)")

    ca = sub.add_parser("ca", help="the operator's certificate authority")
    ca_sub = ca.add_subparsers(dest="ca_command", required=True)
    p = ca_sub.add_parser("init", help="create the CA")
    tls_flag(p)
    p.set_defaults(func=_wrap(_init))
    p = ca_sub.add_parser("issue", help="issue a key and certificate")
    p.add_argument("kind", choices=["service", "operator", "meter"])
    p.add_argument("name")
    p.add_argument("--days", type=int, default=365)
    p.add_argument("--meter-key", default="", help="meter only: its secp256k1 signing key (hex)")
    tls_flag(p)
    p.set_defaults(func=_wrap(_issue))
    p = ca_sub.add_parser("revoke", help="revoke every certificate of a name, or one serial")
    p.add_argument("what", metavar="NAME|SERIAL")
    tls_flag(p)
    p.set_defaults(func=_wrap(_revoke))
    p = ca_sub.add_parser("list", help="certificates issued and their state")
    tls_flag(p)
    p.set_defaults(func=_wrap(_list))
    p = sub.add_parser("enroll", help="print a one-time enrollment token for a meter id")
    p.add_argument("meter_id")
    tls_flag(p)
    p.set_defaults(func=_wrap(_enroll))
