"""`p2pep operator add NAME`: an operator account for the console's sign-in.

The password comes from ``$P2PEP_OPERATOR_PASSWORD``, else from standard input (one line)
when it is not a terminal, else it is asked for twice. The account goes into the console's
store: ``--db PATH``, or the running scenario's (``<run dir>/scenario/console/auth.db``). An
existing operator gets the new password and loses its sessions.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from pathlib import Path

PASSWORD_ENV = "P2PEP_OPERATOR_PASSWORD"


def _password() -> str:
    if (pw := os.environ.get(PASSWORD_ENV)) is not None:
        return pw
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("new operator password: ")
    if getpass.getpass("again: ") != first:
        raise ValueError("the two passwords differ")
    return first


def _add(args: argparse.Namespace) -> int:
    from p2pep.regtest.run_dir import default_run_dir
    from p2pep.scenario.launch import console_auth_db
    from p2pep.scenario.run_state import scenario_dir
    from p2pep.sqlitedb import SchemaVersionError
    from p2pep.webauth.accounts import AccountError, set_account

    db = Path(args.db) if args.db else console_auth_db(scenario_dir(Path(args.run_dir) if args.run_dir
                                                                     else default_run_dir()))
    try:
        password = _password()
        name = asyncio.run(set_account(str(db), args.name, password))
    except (AccountError, ValueError, EOFError, SchemaVersionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"operator {name} can sign in to the console ({db})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("operator", help="operator accounts of the console")
    osub = p.add_subparsers(dest="operator_command", required=True)
    add = osub.add_parser("add", help=f"add an operator (or set its password); password from ${PASSWORD_ENV} or stdin")
    add.add_argument("name")
    add.add_argument("--db", help="the console's account store (default: the run dir's console)")
    add.add_argument("--run-dir", help="state dir (default $P2PEP_RUN_DIR or ~/.local/state/p2pep/regtest)")
    add.set_defaults(func=_add)
