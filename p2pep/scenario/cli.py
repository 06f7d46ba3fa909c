"""`p2pep up`, `p2pep scenario run|list|down`, `p2pep contract export`."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from p2pep.regtest.errors import RegtestError
from p2pep.regtest.run_dir import default_run_dir
from p2pep.servicekit.channels import channel

REPO = Path(__file__).resolve().parents[2]


def _run_dir(args: argparse.Namespace) -> Path:
    return Path(args.run_dir) if getattr(args, "run_dir", None) else default_run_dir()


def ensure_built(say: Callable[[str], None]) -> None:
    """Build lnd/btcd and generate the gRPC stubs if they are missing (both cached).

    The binaries come first: their build fetches the Go toolchain and the pinned lnd
    module, whose protos the stub generator reads. The build's progress goes to stderr.
    """
    from p2pep.regtest.binaries import find_binaries

    say("checking lnd/btcd binaries (built once from the pinned Go modules, then cached)")
    find_binaries()
    if not (REPO / "p2pep" / "v1" / "settlement_pb2.py").exists() or not (REPO / "p2pep" / "lndrpc").exists():
        say("generating gRPC stubs (scripts/gen_protos.py)")
        subprocess.run([sys.executable, str(REPO / "scripts" / "gen_protos.py")], check=True)
        importlib.invalidate_caches()


def _install_stop(stop: asyncio.Event, say: Callable[[str], None]) -> None:
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            say(f"{sig.name}: already stopping (services, then the network)")
        else:
            say(f"{sig.name}: stopping")
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _summary(report: dict[str, Any]) -> str:
    t = report["totals"]
    lines = [
        f"{report['scenario']['name']}: {t['contracts']} contracts, {t['payments']} payments, "
        f"{t['delivered_wh']} Wh delivered, {t['paid_msat']} msat paid (+{t['fees_msat']} msat fees) "
        f"in {report['run']['real_seconds']:.0f}s",
        f"  contracts by state: {json.dumps(t['contracts_by_state'])}",
    ]
    for name, m in report["meters"].items():
        lines.append(f"  {name:8} {m['role']:9} import {m.get('import_wh', '?')} Wh export {m.get('export_wh', '?')} Wh"
                     f"  paid {m['paid_msat_by_payments']} msat earned {m['earned_msat_by_payments']} msat")
    for name, sup in report["suppliers"].items():
        lines.append(f"  {name} received {sup['received_msat']} msat on its own invoices for "
                     f"{sup['delivered_wh']} Wh delivered (worth {sup['expected_msat']} msat)"
                     f"{'' if sup['within_one_increment'] else '  NOT within one increment of it'}")
    for e in report["events"]:
        lines.append(f"  event {e['description']}: {'ok' if e['ok'] else 'FAILED ' + e['error']}")
    for name in report["expected_checks"]:
        c = report["checks"].get(name, {})
        lines.append(f"  check {name}: {'ok' if c.get('ok') else 'FAILED'}"
                     + ("" if c.get("ok") else f"  {json.dumps(c.get('detail'))[:400]}"))
    for e in report["errors"]:
        lines.append(f"  error: {e}")
    if report["run"].get("interrupted"):
        lines.append("INTERRUPTED (the checks above cover the part that ran)")
    else:
        lines.append("OK" if report["ok"] else "NOT OK")
    return "\n".join(lines)


async def _run(args: argparse.Namespace, name: str, live: bool, with_prometheus: bool = False,
               until_end: bool = True) -> int:
    """``with_prometheus``: a loopback Prometheus scrapes the run (``p2pep up``), if installed;
    ``until_end``: stop at the scenario's simulated end (else run until Ctrl-C)."""
    from p2pep.monitoring.prometheus import serve_beside
    from p2pep.scenario.catalog import load_scenario

    scenario = load_scenario(name)
    run_dir = _run_dir(args)
    report_path = Path(args.report) if args.report else run_dir / "scenario" / "report.json"
    stop = asyncio.Event()
    quiet = live and not args.no_live
    say: Callable[[str], None] = (lambda m: None) if quiet else _stderr
    _install_stop(stop, _stderr if not quiet else (lambda m: None))
    ensure_built(_stderr)
    from p2pep.scenario.runner import RunOptions, ScenarioRunner  # needs the stubs ensure_built made

    opts = RunOptions(run_dir=run_dir, report_path=report_path, keep_network=args.keep_network,
                      reuse_network=args.reuse_network,
                      log_level=args.log_level, say=say, books_interval_s=1.0 if quiet else None,
                      until_end=until_end)
    runner = ScenarioRunner(scenario, opts)
    finished = asyncio.Event()
    prometheus = asyncio.create_task(serve_beside(runner, finished)) if with_prometheus else None
    try:
        report = await _run_runner(runner, stop, quiet)
    finally:
        finished.set()
        if prometheus is not None:
            await prometheus
    if report is None:
        _stderr("stopped before the scenario ran; no report")
        return 130
    print(_summary(report))
    print(f"report: {report_path}")
    if runner.interrupted:
        return 130
    return 0 if report["ok"] else 1


async def _run_runner(runner: Any, stop: asyncio.Event, quiet: bool) -> dict[str, Any] | None:
    if not quiet:
        report: dict[str, Any] | None = await runner.run(stop)
        return report
    from p2pep.scenario.live import run_live

    view = asyncio.create_task(run_live(runner, stop))
    try:
        report = await runner.run(stop)
    finally:
        await view
    return report


def _wrap(fn: Callable[[argparse.Namespace], Any]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from p2pep.scenario.model import ScenarioError

        try:
            return int(asyncio.run(fn(args)) or 0)
        except (RegtestError, ScenarioError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except subprocess.CalledProcessError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return run


async def _scenario_run(args: argparse.Namespace) -> int:
    return await _run(args, args.name, live=args.live)


async def _up(args: argparse.Namespace) -> int:
    return await _run(args, args.scenario, live=True, with_prometheus=True, until_end=args.until_end)


async def _list(args: argparse.Namespace) -> int:
    from p2pep.scenario.catalog import list_scenarios

    for s in list_scenarios():
        print(f"{s.name:22} {s.description}")
        print(f"{'':22} {len(s.meters)} meters, {'hub' if s.network.hub else 'ad hoc'}, "
              f"{s.timing.duration_s // 60} sim min at {s.timing.accel}x (~{s.timing.real_duration_s:.0f}s)")
        for e in s.events:
            print(f"{'':22} {e.describe()}")
    return 0


async def _down(args: argparse.Namespace) -> int:
    """Stop what a crashed scenario run left behind: its services, then the network."""
    import os

    from p2pep.regtest.network import RegtestNetwork
    from p2pep.regtest.process import stop_pid
    from p2pep.scenario import run_state as state

    run_dir = _run_dir(args)
    live = state.live_services(state.load(run_dir))
    for name, pid in live.items():
        print(f"stopping {name} (pid {pid})")
        await asyncio.to_thread(stop_pid, pid, 15)
    runner = (state.load(run_dir) or {}).get("runner_pid")
    if isinstance(runner, int) and runner != os.getpid() and live:
        print(f"(the runner, pid {runner}, may still be running)")
    try:
        net = RegtestNetwork.attach(run_dir)
    except RegtestError:
        print(f"no regtest network at {run_dir}")
        return 0
    await net.down()
    print("regtest network stopped")
    return 0


async def _export(args: argparse.Namespace) -> int:
    import grpc

    from p2pep.scenario import run_state as state
    from p2pep.v1 import settlement_pb2, settlement_pb2_grpc

    target = args.settlement
    if not target:
        st = state.load(_run_dir(args)) or {}
        target = st.get("services", {}).get("settlement", {}).get("target", "")
        if not target or not st.get("services", {}).get("settlement", {}).get("pid"):
            print(f"error: no running settlement found in {_run_dir(args)} (scenario state file); "
                  "pass --settlement HOST:PORT", file=sys.stderr)
            return 2
    from p2pep.pki.tlsdir import TlsDirError
    from p2pep.scenario.tls import operator_tls

    try:
        tls = operator_tls(_run_dir(args))
    except (TlsDirError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    async with channel(target, peer="settlement", tls=tls) as ch:
        stub = settlement_pb2_grpc.SettlementServiceStub(ch)
        try:
            doc = await stub.ExportContract(settlement_pb2.GetContractRequest(contract_id=args.contract_id),
                                            timeout=15)
        except grpc.aio.AioRpcError as e:
            print(f"error: settlement at {target}: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    text = doc.json
    try:
        text = json.dumps(json.loads(text), indent=2)
    except json.JSONDecodeError:
        pass
    if args.out:
        Path(args.out).write_text(text + "\n")
        print(f"contract {args.contract_id} written to {args.out}")
    else:
        print(text)
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", help="state dir (default $P2PEP_RUN_DIR or ~/.local/state/p2pep/regtest)")


def _run_flags(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--report", help="where to write the JSON report (default <run dir>/scenario/report.json)")
    p.add_argument("--keep-network", action="store_true",
                   help="leave the regtest network running afterwards (until `p2pep regtest down`)")
    p.add_argument("--reuse-network", action="store_true",
                   help="run on the network an earlier --keep-network run left in the run dir (fresh services)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="the services' log level (logs go to <run dir>/scenario/logs/)")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    up = sub.add_parser("up", help="run the demo microgrid (hackathon scenario) with a live view until Ctrl-C")
    _run_flags(up)
    up.add_argument("--until-end", action="store_true",
                    help="a bounded run: stop at the scenario's simulated end (as `scenario run` does) "
                         "instead of running until Ctrl-C")
    up.add_argument("--scenario", default="hackathon", help="which scenario (default hackathon)")
    up.add_argument("--no-live", action="store_true", help="plain progress lines instead of the live view")
    up.set_defaults(func=_wrap(_up))

    p = sub.add_parser("scenario", help="run named scenarios end to end on a real regtest network")
    ssub = p.add_subparsers(dest="scenario_command", required=True)
    run = ssub.add_parser("run", help="run a scenario to its end and write a JSON report")
    run.add_argument("name", help="a scenario name (`p2pep scenario list`) or a .toml file")
    _run_flags(run)
    run.add_argument("--live", action="store_true", help="show the live view while it runs")
    run.set_defaults(func=_wrap(_scenario_run), no_live=False)
    ls = ssub.add_parser("list", help="the scenarios shipped in scenarios/")
    ls.set_defaults(func=_wrap(_list))
    dn = ssub.add_parser("down", help="stop what an interrupted run left: its services and the network")
    _common(dn)
    dn.set_defaults(func=_wrap(_down))

    c = sub.add_parser("contract", help="contracts held by settlement")
    csub = c.add_subparsers(dest="contract_command", required=True)
    ex = csub.add_parser("export", help="a contract's self-contained JSON document (terms, hash, proofs)")
    ex.add_argument("contract_id")
    ex.add_argument("--out", help="write it to this file instead of stdout")
    ex.add_argument("--settlement", help="settlement's host:port (default: the running scenario's)")
    _common(ex)
    ex.set_defaults(func=_wrap(_export))
