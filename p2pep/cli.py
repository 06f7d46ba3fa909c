"""The `p2pep` command line. Each feature registers its own sub-commands.

A command module exposes ``register(subparsers)`` which adds its parsers and
sets ``func`` (sync, taking the parsed args, returning an exit code) on them.
Command modules import the generated gRPC stubs (``p2pep/v1``, ``p2pep/lndrpc``)
inside their commands, never at import time, so ``--help`` works on a fresh
checkout; a command run before the stubs exist gets a one-line error.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = [
    "p2pep.regtest.cli",
    "p2pep.anchor.cli",
    "p2pep.market.cli",
    "p2pep.scenario.cli",
    "p2pep.webauth.cli",
    "p2pep.pki.cli",
    "p2pep.k8s.cli",
]
STUB_PACKAGES = ("p2pep.v1", "p2pep.lndrpc")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="p2pep", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def missing_stub(exc: ModuleNotFoundError) -> bool:
    """Whether ``exc`` is about a generated stub package (not some other missing module)."""
    name = exc.name or ""
    return any(name == pkg or name.startswith(pkg + ".") for pkg in STUB_PACKAGES)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ModuleNotFoundError as exc:
        if not missing_stub(exc):
            raise
        print(f"p2pep: the generated gRPC stubs are missing (no module {exc.name}): "
              "run `make setup` first (or `.venv/bin/python scripts/gen_protos.py`)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
