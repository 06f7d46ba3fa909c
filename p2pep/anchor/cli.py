"""`p2pep verify CONTRACT.json`: check a contract document, its signatures and its proofs against btcd.

The meters' signatures are checked against the keys the terms name; settlement's signature
over the summary against the key the document gives, or against ``--settlement-pubkey``
(the operator's settlement key, printed in settlement's log at start) when given.

Connection defaults, first found wins: command-line flags, then the environment
(``P2PEP_BTCD_RPC`` host:port, ``P2PEP_BTCD_USER``, ``P2PEP_BTCD_PASS``, ``P2PEP_BTCD_CERT``,
``P2PEP_MIN_CONFIRMATIONS``), then the running regtest network's saved state, if any.

Exit codes: 0 verified; 1 a check failed (the last line names each failed check and why);
2 the file or the connection settings are unusable (one line on stderr says why: a file that
is not a contract document, whatever its bytes, is this); 3 the node could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from p2pep.anchor.chain import ChainView
from p2pep.anchor.document import DocumentError, parse_document, reject_duplicate_keys
from p2pep.anchor.verify import (
    DEFAULT_MIN_CONFIRMATIONS,
    VerifyReport,
    verify_document,
    verify_offline,
)
from p2pep.chain.btcd_rpc import BtcdRpcConfig
from p2pep.metering.signing import is_valid_pubkey
from p2pep.oneline import one_line
from p2pep.servicekit.settings import BadSettings, read_settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CHAIN = 0, 1, 2, 3
MAX_DOCUMENT_BYTES = 16 << 20  # a document with two proofs of the largest tree is a few kB


class VerifySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="P2PEP_", extra="ignore")

    btcd_rpc: str | None = Field(default=None, description="btcd JSON-RPC host:port")
    btcd_user: str | None = None
    btcd_pass: str | None = None
    btcd_cert: str | None = Field(default=None, description="btcd's rpc.cert (TLS)")
    min_confirmations: int = Field(default=DEFAULT_MIN_CONFIRMATIONS, ge=1)


def regtest_btcd_config(run_dir: str | None = None) -> BtcdRpcConfig | None:
    """btcd connection of the regtest network brought up by `p2pep regtest up`, if any."""
    try:
        from p2pep.regtest.btcd import BtcdInfo
        from p2pep.regtest.run_dir import load_state
    except ImportError:
        return None
    try:
        state = load_state(Path(run_dir) if run_dir else None)
        if not state or "btcd" not in state:
            return None
        return BtcdInfo(**state["btcd"]).rpc_config()
    except (OSError, ValueError, TypeError):
        return None


def resolve_btcd(args: argparse.Namespace, settings: VerifySettings) -> BtcdRpcConfig | str:
    """The connection to use, or a message saying what is missing."""
    regtest = None if all(
        (getattr(args, f) or getattr(settings, f)) for f in ("btcd_rpc", "btcd_user", "btcd_pass", "btcd_cert")
    ) else regtest_btcd_config(args.run_dir)
    host = args.btcd_rpc or settings.btcd_rpc or (regtest.host if regtest else None)
    user = args.btcd_user or settings.btcd_user or (regtest.user if regtest else None)
    password = args.btcd_pass or settings.btcd_pass or (regtest.password if regtest else None)
    cert = args.btcd_cert or settings.btcd_cert or (regtest.cert_path if regtest else None)
    missing = [flag for flag, v in (("--btcd-rpc", host), ("--btcd-user", user), ("--btcd-pass", password),
                                    ("--btcd-cert", cert)) if not v]
    if missing:
        return (f"no btcd connection: missing {', '.join(missing)} (flags, P2PEP_BTCD_* environment "
                f"variables, or a running `p2pep regtest up` network); use --offline to skip chain checks")
    assert host and user and password and cert
    if not Path(cert).is_file():
        return f"--btcd-cert: no such file {cert}"
    return BtcdRpcConfig(host, user, password, cert)


async def _btcd_chain(config: BtcdRpcConfig) -> tuple[ChainView, Callable[[], Awaitable[None]]]:
    from p2pep.anchor.btcd_chain import BtcdChain
    from p2pep.chain.btcd_rpc import BtcdRpc

    rpc = BtcdRpc(config)
    return BtcdChain(rpc), rpc.close


# Replaced in tests by a fake chain; the lead's real btcd goes through BtcdRpc.
open_chain: Callable[[BtcdRpcConfig], Awaitable[tuple[ChainView, Callable[[], Awaitable[None]]]]] = _btcd_chain


async def _verify_on_chain(doc: Any, config: BtcdRpcConfig, k: int, settlement_pubkey: str | None) -> VerifyReport:
    chain, close = await open_chain(config)
    try:
        return await verify_document(doc, chain, min_confirmations=k, settlement_pubkey=settlement_pubkey)
    finally:
        await close()


def read_document(data: bytes) -> dict[str, Any]:
    """The document's JSON object, checked for the documented shape (the checks of
    :func:`p2pep.anchor.document.parse_document`); :class:`DocumentError` for anything else:
    not UTF-8, not JSON, duplicate keys, numbers of thousands of digits, nesting too deep,
    not an object, wrong or missing fields."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DocumentError("$", f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        doc: Any = json.loads(text, object_pairs_hook=reject_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise DocumentError("$", f"not JSON: {exc}") from None
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, DocumentError):
            raise
        raise DocumentError("$", f"not usable JSON ({type(exc).__name__})") from None
    parse_document(doc)
    return cast(dict[str, Any], doc)


def run(args: argparse.Namespace) -> int:
    try:
        settings = read_settings(VerifySettings)
    except BadSettings as exc:
        print(f"p2pep verify: bad environment: {exc.summary}", file=sys.stderr)
        return EXIT_USAGE
    k = args.min_confirmations if args.min_confirmations is not None else settings.min_confirmations
    if k < 1:
        print("p2pep verify: --min-confirmations must be >= 1", file=sys.stderr)
        return EXIT_USAGE
    pinned = args.settlement_pubkey
    if pinned is not None and not is_valid_pubkey(pinned):
        print("p2pep verify: --settlement-pubkey must be a 33-byte compressed secp256k1 key in hex", file=sys.stderr)
        return EXIT_USAGE
    try:
        with Path(args.document).open("rb") as f:
            data = f.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as exc:
        print(one_line(f"p2pep verify: cannot read {args.document}: {exc.strerror or exc}"), file=sys.stderr)
        return EXIT_USAGE
    if len(data) > MAX_DOCUMENT_BYTES:
        print(one_line(f"p2pep verify: {args.document}: larger than {MAX_DOCUMENT_BYTES} bytes: not a contract "
                       "document"), file=sys.stderr)
        return EXIT_USAGE
    try:
        doc = read_document(data)
    except DocumentError as exc:
        print(one_line(f"p2pep verify: {args.document}: malformed document: {exc}"), file=sys.stderr)
        return EXIT_USAGE
    if args.offline:
        where = "offline (hashes and Merkle paths only; no chain checks)"
        report = verify_offline(doc, settlement_pubkey=pinned)
    else:
        config = resolve_btcd(args, settings)
        if isinstance(config, str):
            print(f"p2pep verify: {config}", file=sys.stderr)
            return EXIT_USAGE
        where = f"against btcd at {config.host}, {k} confirmation(s) required"
        report = asyncio.run(_verify_on_chain(doc, config, k, pinned))
    if args.json:
        print(json.dumps({"document": args.document, **report.to_json()}, indent=2))
    else:
        print(f"Verifying {args.document} {where}")
        print(report.render())
    if report.ok:
        return EXIT_OK
    return EXIT_CHAIN if report.chain_unavailable else EXIT_FAILED


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "verify", help="check a contract document's hashes and anchoring proofs against btcd",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("document", metavar="CONTRACT.json", help="document written by `p2pep contract export`")
    p.add_argument("--btcd-rpc", metavar="HOST:PORT", help="btcd JSON-RPC address")
    p.add_argument("--btcd-user", metavar="U")
    p.add_argument("--btcd-pass", metavar="P")
    p.add_argument("--btcd-cert", metavar="PATH", help="btcd's TLS certificate (rpc.cert)")
    p.add_argument("--min-confirmations", type=int, metavar="K",
                   help=f"blocks each proof's block must be deep (default {DEFAULT_MIN_CONFIRMATIONS})")
    p.add_argument("--offline", action="store_true", help="check hashes, signatures and Merkle paths only")
    p.add_argument("--settlement-pubkey", metavar="HEX",
                   help="the operator's settlement key: the summary must be signed by it")
    p.add_argument("--run-dir", help="regtest run dir to take btcd defaults from")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)
