"""The `p2pep` command line. Each feature registers its own sub-commands.

A command module exposes ``register(subparsers)`` which adds its parsers and
sets ``func`` (sync, taking the parsed args, returning an exit code) on them.
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
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="p2pep", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
