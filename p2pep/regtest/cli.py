"""`p2pep regtest up|status|mine|down`.

``p2pep.regtest.network`` (and the LND stubs under it) is imported inside each command,
so that ``p2pep regtest --help`` works before ``make setup`` has generated the stubs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from p2pep.regtest.errors import RegtestError
from p2pep.regtest.run_dir import default_run_dir


def _run_dir(args: argparse.Namespace) -> Path:
    return Path(args.run_dir) if args.run_dir else default_run_dir()


async def _up(args: argparse.Namespace) -> int:
    from p2pep.regtest.network import NetworkSpec, RegtestNetwork

    direct = [tuple(p.split(":", 1)) for p in args.direct or []]
    spec = NetworkSpec(meters=args.meters, hub=not args.no_hub, direct_channels=direct)
    net = await RegtestNetwork.up(spec, _run_dir(args))
    st = await net.status()
    await net.close()
    print(f"regtest network up in {st['run_dir']}: btcd at {st['btcd']['rpchost']}, "
          f"height {st['btcd']['height']}")
    for n in st["nodes"]:
        print(f"  {n['name']:10} {n['pubkey']}  rpc {n['rpcserver']}  channels {len(n.get('channels', []))}")
    print("`p2pep regtest status` for details, `p2pep regtest down` to stop it.")
    return 0


def _print_status(st: dict[str, Any]) -> None:
    b = st["btcd"]
    print(f"run dir  {st['run_dir']}")
    print(f"btcd     {'running' if b['running'] else 'STOPPED'} rpc {b['rpchost']} user {b['rpcuser']} "
          f"pass {b['rpcpass']} cert {b['rpccert']} height {b['height']}")
    if (peer := st.get("btcd_peer")) is not None:
        print(f"peer     {'running' if peer['running'] else 'STOPPED'} p2p {peer['p2p']} rpc {peer['rpchost']} "
              f"height {peer['height']} (btcd-peer: relays blocks; a restarted btcd fetches its chain from it)")
    print(f"lncli    {st['binaries']['lncli']}")
    print(f"btcctl   {st['binaries']['btcctl']}")
    for n in st["nodes"]:
        print(f"\n{n['name']}  {'running' if n['running'] else 'STOPPED'}  {n['pubkey']}")
        print(f"  rpcserver {n['rpcserver']}  tlscertpath {n['tlscertpath']}")
        print(f"  macaroonpath {n['macaroonpath']}  (admin: the operator's only)")
        for service, path in n.get("service_macaroons", {}).items():
            print(f"  {service} macaroon {path}")
        print(f"  metrics {n['metrics']}")
        if "wallet_sat" in n:
            w, c = n["wallet_sat"], n["channel_balance_sat"]
            print(f"  wallet {w['confirmed']} sat (+{w['unconfirmed']} unconfirmed)  "
                  f"channels local {c['local']} / remote {c['remote']} sat")
            for ch in n["channels"]:
                print(f"    {ch['channel_point']} peer {ch['peer'][:16]}… cap {ch['capacity']} "
                      f"local {ch['local']} remote {ch['remote']} {'active' if ch['active'] else 'inactive'}")
        if "error" in n:
            print(f"  error: {n['error']}")


async def _status(args: argparse.Namespace) -> int:
    from p2pep.regtest.network import RegtestNetwork

    net = RegtestNetwork.attach(_run_dir(args))
    try:
        st = await net.status()
    finally:
        await net.close()
    if args.json:
        print(json.dumps(st, indent=2))
    else:
        _print_status(st)
    return 0 if st["btcd"]["running"] else 1


async def _mine(args: argparse.Namespace) -> int:
    from p2pep.regtest.network import RegtestNetwork

    net = RegtestNetwork.attach(_run_dir(args))
    try:
        hashes = await net.mine(args.blocks)
        print(json.dumps({"mined": len(hashes), "tip": hashes[-1] if hashes else None,
                          "height": await net.btcd.height()}))  # type: ignore[union-attr]
    finally:
        await net.close()
    return 0


async def _down(args: argparse.Namespace) -> int:
    from p2pep.regtest.network import RegtestNetwork

    try:
        net = RegtestNetwork.attach(_run_dir(args))
    except RegtestError as exc:
        print(str(exc))
        return 0
    await net.down(purge=args.purge)
    print("regtest network stopped" + (" and purged" if args.purge else ""))
    return 0


def _wrap(fn: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(asyncio.run(fn(args)))
        except RegtestError as exc:
            print(f"error: {exc}")
            return 2

    return run


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("regtest", help="a real btcd regtest network with LND nodes")
    rsub = p.add_subparsers(dest="regtest_command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--run-dir", help="state dir (default $P2PEP_RUN_DIR or ~/.local/state/p2pep/regtest)")

    up = rsub.add_parser("up", help="start btcd, hub and meters with channels; returns when ready")
    common(up)
    up.add_argument("--meters", type=int, default=3)
    up.add_argument("--no-hub", action="store_true", help="ad hoc microgrid: no operator hub")
    up.add_argument("--direct", action="append", metavar="A:B", help="also open a channel A→B (repeatable)")
    up.set_defaults(func=_wrap(_up))

    st = rsub.add_parser("status", help="nodes, balances, channels, credentials")
    common(st)
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=_wrap(_status))

    mi = rsub.add_parser("mine", help="mine N blocks")
    common(mi)
    mi.add_argument("blocks", type=int)
    mi.set_defaults(func=_wrap(_mine))

    dn = rsub.add_parser("down", help="stop everything")
    common(dn)
    dn.add_argument("--purge", action="store_true", help="also delete the run dir")
    dn.set_defaults(func=_wrap(_down))
