"""Running a scenario end to end on a real regtest network (I/O).

Order of things:

1. the regtest network (btcd, hub unless ad hoc, ``meter-N`` lnd nodes) comes up in
   the run dir (:meth:`RegtestNetwork.up`);
2. the matcher, settlement and one meter service per meter start as subprocesses
   (``python -m services.X``, env from :mod:`p2pep.scenario.launch`, logs under
   ``<run dir>/scenario/logs``), in dependency order (matcher and anchor, then settlement,
   console and portal, then the meters), each awaited until its gRPC health is SERVING, which
   means ready (:mod:`p2pep.servicekit.readiness`: a meter is registered, has its baseline
   reading and its hub channel); each also has a plaintext health-only port (``health`` in
   ``state.json``), as a Kubernetes probe sees it;
   Meters with a ``link`` (or a partition event) reach the services through Toxiproxy
   (:mod:`p2pep.scenario.links`): its server starts before the meters, with one proxy per
   meter and service (settlement, the matcher, and the way back to the meter, which the
   meter advertises to settlement) and the profile's toxics;
3. while the simulated time runs: an auto-miner mines a block every few seconds
   (channels the meters open need confirmations), the scenario's events fire at
   their simulated times, the meters' statuses are sampled;
4. at the end the runner collects settlement's contracts and payments, the meters'
   statuses and the suppliers' own invoices, writes the JSON report
   (:mod:`p2pep.scenario.report`), stops the services (SIGTERM, meters first) and
   the network (unless it is kept).

A stop request (Ctrl-C, SIGTERM: the ``stop`` event) during bring-up cancels it and
cleans up; during the run it ends the run early, still with a report.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc

from p2pep.anchor.document import DocumentError, parse_document
from p2pep.paging import follow
from p2pep.regtest.binaries import find_binaries
from p2pep.regtest.btcd import RPC_PASS, RPC_USER
from p2pep.regtest.errors import RegtestError
from p2pep.regtest.network import NetworkSpec, RegtestNetwork
from p2pep.regtest.ports import free_port
from p2pep.regtest.run_dir import load_state as load_network_state
from p2pep.regtest.waiting import timeout_scale
from p2pep.scenario import run_state as scenario_state
from p2pep.scenario import tls as run_tls
from p2pep.scenario.clock import ScenarioClock
from p2pep.scenario.drain import keep_msat
from p2pep.scenario.funds import drain_channels, sweep_wallet
from p2pep.scenario.launch import (
    BtcdEndpoint,
    Layout,
    NodeEndpoint,
    ServiceLaunch,
    anchor_launch,
    console_auth_db,
    console_launch,
    matcher_launch,
    meter_launch,
    portal_launch,
    settlement_launch,
    with_health_port,
    with_plaintext_loopback,
)
from p2pep.scenario.links import UPSTREAMS, Proxy, Upstream, meter_proxies, profile
from p2pep.scenario.model import BTCD, Event, Scenario, link_target, lnd_target
from p2pep.scenario.processes import ServiceProcess
from p2pep.scenario.report import EventOutcome, RunFacts, build_report
from p2pep.scenario.toxiproxy import ToxiproxyClient, ToxiproxyServer
from p2pep.scenario.watch import Watcher
from p2pep.servicekit.tls import Tls
from p2pep.v1 import settlement_pb2
from p2pep.webauth.accounts import set_account

T = TypeVar("T")


def _unanchored(doc: Any) -> list[str]:
    """Leaves of a document (JSON) still without a proof; a document that is missing or
    cannot be parsed is not waited for."""
    if not isinstance(doc, dict) or "error" in doc:
        return []
    try:
        return list(parse_document(doc).unanchored())
    except DocumentError:
        return []


class ScenarioRunError(RegtestError):
    """The scenario could not be run (a service did not start, a stale run is in the way...)."""


class Interrupted(Exception):
    """A stop was requested during bring-up."""


@dataclass
class RunOptions:
    run_dir: Path
    report_path: Path | None = None
    keep_network: bool = False
    reuse_network: bool = False  # run on the network running in run_dir (kept by an earlier run), if any
    log_level: str = "INFO"
    mine_interval_s: float = 2.0
    books_interval_s: float | None = None  # poll settlement's books (the live view does)
    status_interval_s: float = 0.5
    startup_timeout_s: float = 90.0
    anchor_wait_s: float = 90.0  # for the last settlement summaries to be anchored
    until_end: bool = True
    """Stop at the scenario's simulated end (``scenario run``, tests, CI). False: the meters
    run on past it, and the pages with them, until a stop request (``p2pep up``'s default:
    the demo runs until Ctrl-C); the report then covers what ran."""
    say: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr, flush=True))
    # bench/bench_mtls.py only: every gRPC port and channel of the run plaintext over loopback,
    # to measure what TLS costs (p2pep.servicekit.tls); no scenario, CLI or `p2pep up` sets it
    grpc_plaintext_loopback: bool = False


class ScenarioRunner:
    def __init__(self, scenario: Scenario, options: RunOptions) -> None:
        self.scenario = scenario
        self.opts = options
        self.run_dir = Path(options.run_dir)
        self.layout = Layout(scenario_state.scenario_dir(self.run_dir), tls=self.run_dir / "tls")
        self.tls: Tls | None = None  # the harness's operator certificate, once the run's CA exists
        self.phase = "starting"
        self.messages: deque[tuple[float, str]] = deque(maxlen=50)
        self.t0 = time.monotonic()
        self.started_at = datetime.now(UTC)
        self.clock = ScenarioClock(scenario.timing.sim_start_ms, scenario.timing.accel)
        self.watcher = Watcher(self.clock, self.t0, options.status_interval_s, options.books_interval_s)
        self.net: RegtestNetwork | None = None
        self.procs: dict[str, ServiceProcess] = {}
        self.outcomes: list[EventOutcome] = []
        self.errors: list[str] = []
        self.expected_down: set[str] = set()
        self.interrupted = False
        self.report: dict[str, Any] | None = None
        self.final_books: tuple[list[settlement_pb2.ContractRecord], list[settlement_pb2.Payment]] | None = None
        """Settlement's final contracts and payments, once collected (what the report holds)."""
        self.miner_stats: dict[str, Any] = {"blocks": 0, "errors": 0, "last_error": ""}
        self._tasks: list[asyncio.Task[Any]] = []
        self.operator: tuple[str, str] = ("operator", secrets.token_urlsafe(12))  # the demo's console sign-in
        self.extra_urls: dict[str, str] = {}  # pages beside the run, e.g. `p2pep up`'s Prometheus
        self.proxies: dict[str, list[Proxy]] = {}  # meter -> the proxies of its link (Toxiproxy)
        self.toxiproxy: ToxiproxyServer | None = None

    # --- reporting progress ----------------------------------------------------------------
    def say(self, msg: str) -> None:
        self.messages.append((time.monotonic() - self.t0, msg))
        self.opts.say(msg)

    def _set_phase(self, phase: str) -> None:
        self.phase = phase
        self._save_state()

    def _save_state(self) -> None:
        if not self.layout.root.exists():
            return
        scenario_state.save(self.run_dir, {
            "scenario": self.scenario.name,
            "phase": self.phase,
            "runner_pid": os.getpid(),
            "pages": self.web_urls() if self.procs else {},  # what people open: console, portal, displays
            "started_at": self.started_at.isoformat(),
            "run_dir": str(self.run_dir),
            "report": str(self.opts.report_path) if self.opts.report_path else "",
            "services": {
                name: {"module": p.launch.module, "target": p.launch.target, "pid": p.pid if p.alive() else None,
                       "metrics": f"http://127.0.0.1:{p.launch.metrics_port}/metrics",
                       "health": p.launch.health_target,
                       "log": str(p.launch.log_path)}
                for name, p in self.procs.items()
            },
            "toxiproxy": {"pid": self.toxiproxy.pid if self.toxiproxy.alive() else None, "api": self.toxiproxy.api,
                          "log": str(self.toxiproxy.log_path),
                          "proxies": {m: [p.body() for p in ps] for m, ps in self.proxies.items()}}
            if self.toxiproxy is not None else None,
        })

    # --- the whole run -----------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> dict[str, Any] | None:
        """Run to the end (or until ``stop``); returns the report (None if stopped during bring-up)."""
        try:
            try:
                await self._until_stopped(self._bring_up(), stop)
            except Interrupted:
                self.interrupted = True
                self.say("stopped during start-up; cleaning up")
                return None
            await self._run_until_end(stop)
            self._set_phase("collecting")
            facts = await self._collect()
            self.final_books = (list(facts.contracts), list(facts.payments))
            self.report = build_report(facts)
            if self.opts.report_path is not None:
                self.opts.report_path.parent.mkdir(parents=True, exist_ok=True)
                self.opts.report_path.write_text(json.dumps(self.report, indent=2))
                self.say(f"report written to {self.opts.report_path}")
            return self.report
        finally:
            await self._teardown()

    async def _until_stopped(self, coro: Awaitable[T], stop: asyncio.Event) -> T:
        task = asyncio.ensure_future(coro)
        waiter = asyncio.ensure_future(stop.wait())
        try:
            done, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if task in done:
            return task.result()
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):  # noqa: BLE001 - cleanup follows
            pass
        raise Interrupted()

    # --- bring up ----------------------------------------------------------------------------------
    async def _bring_up(self) -> None:
        s = self.scenario
        stale = scenario_state.live_services(scenario_state.load(self.run_dir))
        if stale:
            raise ScenarioRunError(
                f"services of an earlier scenario still run in {self.run_dir} "
                f"({', '.join(f'{n} pid {p}' for n, p in stale.items())}): `p2pep scenario down` first")
        self._set_phase("network")
        kind = "with hub" if s.network.hub else "ad hoc (no hub)"
        t = time.monotonic()
        if (self.opts.reuse_network and load_network_state(self.run_dir) is not None
                and RegtestNetwork.attach(self.run_dir).is_running()):
            self.net = self._reused_network()
            await self.net.bake_service_macaroons()  # each service's own lnd macaroon (p2pep.lnd.macaroons)
            self.say(f"running on the regtest network already up in {self.run_dir} ({kind})")
        else:
            self.say(f"starting regtest network in {self.run_dir}: btcd, {len(s.meters)} meter nodes, {kind}")
            self.net = await RegtestNetwork.up(
                # utxos > 1: more funding outputs, so a meter can open channels back to back
                NetworkSpec(meters=len(s.meters), hub=s.network.hub, fund_sat=s.network.fund_sat,
                            channel_sat=s.network.channel_sat, push_sat=s.network.push_sat, utxos=s.network.utxos),
                self.run_dir,
            )
            self.say(f"network up in {time.monotonic() - t:.0f}s")
        if self.layout.root.exists():  # an earlier run's services: keep their logs, start afresh
            aside = self.layout.root.with_name(f"{self.layout.root.name}.{int(time.time() * 1000)}")
            self.layout.root.rename(aside)
            if self.layout.tls_dir.exists():  # its CA and enrollments go with it: this run enrolls afresh
                self.layout.tls_dir.rename(aside / "tls")
        self.layout.root.mkdir(parents=True, exist_ok=True)
        self._set_phase("services")
        self._plan_services()
        self._save_state()
        await self._start_and_wait(["matcher", "anchor"] if s.anchor else ["matcher"])
        await set_account(str(console_auth_db(self.layout.root)), *self.operator)
        await self._start_and_wait(["settlement", "console", "portal"])
        self.say(f"operator console: {self.web_urls()['console']} (sign in as {self.operator[0]}, "
                 f"password {self.operator[1]})")
        self.say(f"household portal: {self.web_urls()['portal']} (register, then add a meter with its display's code)")
        assert self.tls is not None
        self.watcher.set_settlement(self.procs["settlement"].launch.target, self.tls)
        if self.proxies:
            await self._start_links()
        meters = s.meter_names
        self.clock.launched(time.monotonic())
        await self._start_and_wait(meters)
        for m in meters:
            self.watcher.add_meter(m, self.procs[m].launch.target, self.tls)
            self.say(f"meter display of {m} (its pairing code): {self.web_urls()[m]}")
        self.watcher.start()

    async def _start_links(self) -> None:
        """toxiproxy-server, each linked meter's proxies, and its profile's toxics in each."""
        self.toxiproxy = ToxiproxyServer(find_binaries().toxiproxy, free_port(), self.layout.log("toxiproxy"))
        await self.toxiproxy.start()
        self._save_state()
        linked = self.scenario.linked_meters
        async with ToxiproxyClient(self.toxiproxy.api) as api:
            for meter, proxies in self.proxies.items():
                toxics = profile(linked[meter]).toxics()
                for p in proxies:
                    await api.create_proxy(p)
                    for t in toxics:
                        await api.add_toxic(p.name, t)
        self.say("links: " + ", ".join(f"{m} {linked[m]}" for m in self.proxies)
                 + f" (toxiproxy on {self.toxiproxy.api})")

    def _reused_network(self) -> RegtestNetwork:
        """The network an earlier run kept running, if it has this scenario's nodes."""
        s = self.scenario
        net = RegtestNetwork.attach(self.run_dir)
        want = set(s.meter_names) | ({"hub"} if s.network.hub else set())
        if not want <= set(net.nodes):
            raise ScenarioRunError(
                f"--reuse-network: the network in {self.run_dir} lacks nodes of {sorted(want)} "
                f"(it has {sorted(net.nodes)}); start one with `scenario run ... --keep-network`")
        return net

    def web_urls(self) -> dict[str, str]:
        """The web pages people look at: the operator's console, the household portal and
        each meter's display (served on the services' HTTP ports, beside /metrics), and the
        pages started beside the run (``extra_urls``: `p2pep up`'s Prometheus)."""
        own = {n: f"http://127.0.0.1:{p.launch.metrics_port}/" for n, p in self.procs.items()
               if n in ("console", "portal") or n in self.scenario.meter_names}
        return {**own, **self.extra_urls}

    def endpoints(self) -> dict[str, NodeEndpoint]:
        assert self.net is not None
        return {
            name: NodeEndpoint(name, n.info.pubkey, n.info.rpcserver, n.info.tls_cert,
                               {svc: n.info.service_macaroon(svc) for svc in n.info.services}, n.info.p2p_host)
            for name, n in self.net.nodes.items()
        }

    def _plan_services(self) -> None:
        s, lay, lvl = self.scenario, self.layout, self.opts.log_level
        eps = self.endpoints()
        matcher = matcher_launch(s, lay, free_port(), free_port(), lvl)
        launches: list[ServiceLaunch] = [matcher]
        anchor_target = ""
        if s.anchor:
            assert self.net is not None and self.net.btcd is not None
            b = self.net.btcd.info
            anchor = anchor_launch(s, lay, free_port(), free_port(), eps["hub"],
                                   BtcdEndpoint(b.rpchost, RPC_USER, RPC_PASS, b.cert), lvl)
            launches.append(anchor)
            anchor_target = anchor.target
        settlement = settlement_launch(s, lay, free_port(), free_port(), matcher.target, lvl, anchor_target)
        launches.append(settlement)
        launches.append(console_launch(s, lay, free_port(), free_port(), settlement.target, matcher.target, lvl,
                                       anchor_target))
        launches.append(portal_launch(s, lay, free_port(), free_port(), settlement.target, lvl, anchor_target,
                                      matcher.target))
        meter_nodes = [eps[m.name] for m in s.meters]
        linked = s.linked_meters
        for m in s.meters:
            grpc_port = free_port()
            matcher_target, settlement_target, advertise = matcher.target, settlement.target, ""
            if m.name in linked:  # through its link: the services' targets and its own are proxies
                targets: dict[Upstream, str] = {"settlement": settlement.target, "matcher": matcher.target,
                                                "meter": f"127.0.0.1:{grpc_port}"}
                listen: dict[Upstream, str] = {u: f"127.0.0.1:{free_port()}" for u in UPSTREAMS}
                self.proxies[m.name] = meter_proxies(m.name, targets, listen)
                matcher_target, settlement_target, advertise = listen["matcher"], listen["settlement"], listen["meter"]
            launches.append(meter_launch(s, m, lay, grpc_port, free_port(), eps[m.name], matcher_target,
                                         settlement_target, eps.get("hub") if s.network.hub else None,
                                         meter_nodes, lvl, advertise_address=advertise))
        meter_keys = {m.name: lay.data_dir(m.name) / "meter.key" for m in s.meters}
        plain = self.opts.grpc_plaintext_loopback
        if plain:
            launches = [with_plaintext_loopback(ln) for ln in launches]
        self.tls = run_tls.prepare(lay.tls_dir, [ln.name for ln in launches if ln.kind != "meter"], meter_keys,
                                   plaintext_loopback=plain)
        launches = [with_health_port(ln, free_port()) for ln in launches]
        self.procs = {ln.name: ServiceProcess(ln, self.tls) for ln in launches}

    async def _start_and_wait(self, names: list[str]) -> None:
        for n in names:
            self.procs[n].start()
        self._save_state()
        await asyncio.gather(*(self.procs[n].wait_healthy(self.opts.startup_timeout_s) for n in names))
        self.say(f"{', '.join(names)} healthy")

    # --- while it runs -----------------------------------------------------------------------------
    async def _run_until_end(self, stop: asyncio.Event) -> None:
        s = self.scenario
        self._set_phase("running")
        if self.opts.until_end:
            self.say(f"running {s.name}: {s.timing.duration_s // 60} simulated minutes at {s.timing.accel}x "
                     f"(~{s.timing.real_duration_s:.0f}s)")
        else:
            self.say(f"running {s.name} at {s.timing.accel}x until Ctrl-C (SIGTERM)")
        self._tasks.append(asyncio.create_task(self._miner(), name="miner"))
        self._tasks.append(asyncio.create_task(self._events(), name="events"))
        # generous real-time bound: the meters' clocks run by themselves
        deadline = time.monotonic() + s.timing.real_duration_s * 1.5 + 60
        end_ms = s.timing.sim_end_ms
        while True:
            now = time.monotonic()
            if stop.is_set():
                if not self.opts.until_end:  # the way an open-ended run ends: not an interruption
                    self.say("stop requested: collecting the books and stopping")
                    return
                self.interrupted = True
                self.say("stop requested: ending the run early")
                return
            if self.opts.until_end and self.clock.sim_ms(now) >= end_ms:
                self.say("simulated time is up")
                await self._event_in_progress_done()
                return
            if self.opts.until_end and now > deadline:
                self.errors.append("the meters' simulated time did not reach the end in time")
                return
            for name, p in self.procs.items():
                if not p.alive() and name not in self.expected_down:
                    self.expected_down.add(name)  # report it once
                    msg = f"{name} exited unexpectedly (code {p.returncode}); log: {p.launch.log_path}"
                    self.errors.append(msg)
                    self.say(msg)
                    if name in ("matcher", "settlement", "anchor"):
                        return
            await asyncio.sleep(0.2)

    async def _miner(self) -> None:
        assert self.net is not None
        while True:
            await asyncio.sleep(self.opts.mine_interval_s)
            try:
                await self.net.mine(1)
                self.miner_stats["blocks"] += 1
            except Exception as e:  # noqa: BLE001 - keep mining; the report shows it
                self.miner_stats["errors"] += 1
                self.miner_stats["last_error"] = str(e)

    async def _event_in_progress_done(self, timeout_s: float = 120.0) -> None:
        """An event still being applied when simulated time is up is let finish before the books
        are collected, so the report holds its outcome (a btcd started again late in a run
        waits for every lnd node to follow it, and lnd dials btcd again only after 5, 10, 20 s)."""
        def busy() -> bool:
            return any(o.applied_real_s is not None and not o.ok and not o.error for o in self.outcomes)

        deadline = time.monotonic() + timeout_s * timeout_scale()
        if busy():
            self.say("waiting for the event in progress to finish")
        while busy() and time.monotonic() < deadline:
            await asyncio.sleep(0.25)

    async def _events(self) -> None:
        for ev in self.scenario.events:
            out = EventOutcome(ev.describe(), ev.action, ev.target, ev.at_s)
            self.outcomes.append(out)
            due = self.scenario.timing.sim_start_ms + ev.at_s * 1000
            while (wait := self.clock.real_until(time.monotonic(), due)) > 0:
                await asyncio.sleep(min(wait, 0.25))
            now = time.monotonic()
            out.applied_real_s = round(now - self.t0, 3)
            out.applied_sim_ms = self.clock.sim_ms(now)
            self.say(f"event: {ev.describe()}")
            try:
                out.detail = await self._apply(ev)
                out.ok = True
                self.say(f"event done: {ev.action} {ev.target} {json.dumps(out.detail)[:300]}")
            except Exception as e:  # noqa: BLE001 - recorded in the report
                out.error = f"{type(e).__name__}: {e}"
                self.say(f"event failed: {ev.describe()}: {out.error}")

    async def _apply(self, ev: Event) -> dict[str, Any]:
        if lnd_target(ev.target) is not None:
            return await self._lnd_event(ev)
        if ev.target == BTCD:
            return await self._btcd_event(ev)
        if ev.action == "partition":
            return await self._partition(ev)
        if ev.action == "stop":
            p = self.procs[ev.target]
            before: dict[str, int] = {}
            if ev.target in self.scenario.meter_names:  # what was delivered when it stopped
                errors: list[str] = []
                before = {r.contract.contract_id: r.delivered_wh for r in await self._contracts(errors, "event")}
            self.expected_down.add(ev.target)
            code = await p.stop(signal.Signals[ev.signal])
            return {"exit_code": code, "signal": ev.signal, "delivered_wh_before": before}
        if ev.action == "start":
            p = self.procs[ev.target]
            if p.alive():
                return {"already_running": True, "pid": p.pid}
            p.start()
            self._save_state()
            await p.wait_healthy(self.opts.startup_timeout_s)
            self.expected_down.discard(ev.target)
            return {"pid": p.pid, "starts": p.starts}
        if ev.action == "drain_channel":
            return await self._drain(ev)
        raise ValueError(f"unknown action {ev.action}")

    async def _partition(self, ev: Event) -> dict[str, Any]:
        """Cut a meter's link now; heal it ``for_s`` simulated seconds later (in the background:
        other events go on meanwhile). The outcome's detail gets ``healed_real_s`` then."""
        assert self.toxiproxy is not None
        meter = link_target(ev.target)
        assert meter is not None
        names = [p.name for p in self.proxies[meter]]
        async with ToxiproxyClient(self.toxiproxy.api) as api:
            await api.partition(names)
        detail: dict[str, Any] = {"proxies": names}
        heal_ms = self.scenario.timing.sim_start_ms + (ev.at_s + ev.for_s) * 1000

        async def heal() -> None:
            while (wait := self.clock.real_until(time.monotonic(), heal_ms)) > 0:
                await asyncio.sleep(min(wait, 0.25))
            assert self.toxiproxy is not None
            try:
                async with ToxiproxyClient(self.toxiproxy.api) as api:
                    await api.heal(names)
            except Exception as e:  # noqa: BLE001 - recorded in the report
                detail["heal_error"] = f"{type(e).__name__}: {e}"
                self.errors.append(f"{meter}'s link not healed: {detail['heal_error']}")
                return
            now = time.monotonic()
            detail["healed_real_s"] = round(now - self.t0, 3)
            detail["healed_sim_ms"] = self.clock.sim_ms(now)
            self.say(f"event done: {meter}'s link healed")

        self._tasks.append(asyncio.create_task(heal(), name=f"heal {meter}"))
        return detail

    async def _lnd_event(self, ev: Event) -> dict[str, Any]:
        """Stop or start one of the regtest network's lnd nodes on its data (``lnd:hub``,
        ``lnd:meter-2``). Started again, the node is waited on until its RPC answers and its
        wallet is synced to the chain."""
        assert self.net is not None and self.net.btcd is not None
        name = lnd_target(ev.target)
        assert name is not None
        node = self.net.nodes[name]
        if ev.action == "stop":
            pid = node.proc.pid
            await (node.kill() if ev.signal == "SIGKILL" else node.stop())
            return {"signal": ev.signal, "pid": pid}
        t0 = time.monotonic()
        await node.start(self.opts.startup_timeout_s, btcd_proc=self.net.btcd.proc)
        self.net.save()
        return {"pid": node.proc.pid, "seconds": round(time.monotonic() - t0, 2)}

    async def _btcd_event(self, ev: Event) -> dict[str, Any]:
        """Stop or start the network's (main) btcd. Started again it has an empty chain (regtest
        mode) and fetches it back from ``btcd-peer``; the event is done once it has the peer's tip
        and every running lnd node is synced to it. The miner waits meanwhile
        (:meth:`RegtestNetwork.mine`)."""
        assert self.net is not None and self.net.btcd is not None
        if ev.action == "stop":
            pid = self.net.btcd.proc.pid
            # the relay peer's height now: the chain the restarted btcd must fetch back at least
            peer_height = await self.net.btcd_peer.height() if self.net.btcd_peer is not None else None
            await self.net.stop_btcd(kill=ev.signal == "SIGKILL")
            return {"signal": ev.signal, "pid": pid, "peer_height": peer_height}
        if self.net.btcd.proc.alive():
            return {"already_running": True, "pid": self.net.btcd.proc.pid}
        back = await self.net.start_btcd_again(self.opts.startup_timeout_s)
        return {"pid": self.net.btcd.proc.pid, **back}

    async def _drain(self, ev: Event) -> dict[str, Any]:
        assert self.net is not None
        s = self.scenario
        node = self.net.nodes[ev.target]
        peers = {n.info.pubkey: n.client for n in self.net.nodes.values() if n.name != ev.target}
        keep = keep_msat(ev.keep_increments, s.increment_wh, s.meter(ev.target).price_msat_per_kwh,
                         routed=s.network.hub)
        drained = await drain_channels(node.client, peers, keep)
        out: dict[str, Any] = {"keep_msat": keep, "channels": [d.__dict__ for d in drained]}
        if ev.sweep_wallet:
            sink = self.net.nodes["hub"] if "hub" in self.net.nodes else next(
                n for n in self.net.nodes.values() if n.name != ev.target)
            sent, txid = await sweep_wallet(node.client, await sink.client.new_address())
            out["swept_sat"], out["sweep_txid"] = sent, txid
        errors = [d.error for d in drained if d.error]
        if errors:
            raise RuntimeError("; ".join(errors) + f" (partial result: {json.dumps(out)[:500]})")
        return out

    # --- the end ------------------------------------------------------------------------------------
    async def _collect(self) -> RunFacts:
        assert self.net is not None
        s = self.scenario
        now = time.monotonic()
        f = RunFacts(
            scenario=s, run_dir=str(self.run_dir), started_at=self.started_at,
            ended_at=datetime.now(UTC), real_seconds=now - self.t0,
            sim_reached_ms=self.clock.sim_ms(now), interrupted=self.interrupted,
            events=self.outcomes, miner=dict(self.miner_stats), errors=list(self.errors),
        )
        for m in s.meter_names:
            fresh = self.procs[m].alive() and await self.watcher.poll_status(m) is not None
            f.status_fresh[m] = fresh
        f.statuses = dict(self.watcher.statuses)
        f.relay_samples = {k: list(v) for k, v in self.watcher.samples.items()}
        f.nodes = {n: {"pubkey": e.pubkey, "rpcserver": e.rpcserver, "p2p": e.p2p, "tlscertpath": e.tls_cert,
                       "macaroonpath": self.net.nodes[n].info.macaroon()} for n, e in self.endpoints().items()}
        stub = self.watcher.settlement
        f.contracts_at_sim_end = await self._contracts(f.errors, "at the end of the simulated period")
        # The meters leave (SIGTERM): they end their contracts, settlement pays the last
        # partial increments; then the books are final. Pure consumers go first: a last
        # increment is paid to a supplier that is still there to invoice it.
        self._set_phase("settling")
        self.say("stopping the meters; settlement closes their contracts")
        self.expected_down.update(s.meter_names)
        first = [m.name for m in s.meters if m.role == "consumer"]
        for group in (first, [m for m in s.meter_names if m not in first]):
            await asyncio.gather(*(self.procs[m].stop() for m in group))
        await self._wait_settled(f.errors)
        f.contracts = await self._contracts(f.errors, "final")
        try:
            f.payments = await follow(stub.ListPayments, settlement_pb2.ListPaymentsRequest(), "payments", 15)
            f.registry = await follow(stub.ListMeters, settlement_pb2.ListMetersRequest(), "meters", 15)
        except grpc.aio.AioRpcError as e:
            f.errors.append(f"settlement: {e.code().name}: {e.details()}")
        f.documents = await self._documents(f.contracts, f.errors)
        for supplier in s.suppliers:
            try:
                f.invoices[supplier.name] = await self.net.nodes[supplier.name].client.list_invoices()
            except Exception as e:  # noqa: BLE001 - the report says so
                f.errors.append(f"{supplier.name} invoices: {e}")
        f.services = {n: {"module": p.launch.module, "target": p.launch.target, "log": str(p.launch.log_path),
                          "running_after_sim_end": p.alive() if n not in s.meter_names else None,
                          "starts": p.starts, "exit_code": p.returncode}
                      for n, p in self.procs.items()}
        return f

    async def _documents(self, contracts: list[settlement_pb2.ContractRecord], errors: list[str]) -> dict[str, Any]:
        """Each contract's document. With the anchor service, the settlement summaries of
        contracts that just ended join a batch a block or two later: wait (bounded, the
        miner still runs) until every hash a document holds has its proof. A contract the
        meters never both signed (rejected) is anchored by nobody, and not waited for."""
        stub = self.watcher.settlement
        contract_ids = [r.contract.contract_id for r in contracts]
        never_signed = {r.contract.contract_id for r in contracts if r.state == settlement_pb2.CONTRACT_STATE_REJECTED}
        deadline = time.monotonic() + self.opts.anchor_wait_s * timeout_scale()
        docs: dict[str, Any] = {}
        todo = contract_ids
        while True:
            for cid in todo:
                try:
                    doc = await stub.ExportContract(settlement_pb2.GetContractRequest(contract_id=cid), timeout=15)
                    docs[cid] = json.loads(doc.json) if doc.json else None
                except grpc.aio.AioRpcError as e:
                    docs[cid] = {"error": f"{e.code().name}: {e.details()}"}
                    if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                        return docs
                except json.JSONDecodeError as e:
                    docs[cid] = {"error": f"not JSON: {e}"}
            if not self.scenario.anchor:
                return docs
            waiting = {cid: missing for cid, d in docs.items() if cid not in never_signed and (missing := _unanchored(d))}
            if not waiting:
                return docs
            if time.monotonic() > deadline:
                errors.append(f"documents not anchored {self.opts.anchor_wait_s:.0f}s after the meters left: "
                              + ", ".join(f"{cid} ({'/'.join(m)})" for cid, m in sorted(waiting.items())))
                return docs
            todo = list(waiting)  # the others are complete
            await asyncio.sleep(1.0)

    async def _contracts(self, errors: list[str], when: str) -> list[settlement_pb2.ContractRecord]:
        try:
            return await follow(self.watcher.settlement.ListContracts,
                                settlement_pb2.ListSettlementContractsRequest(), "contracts", 15)
        except grpc.aio.AioRpcError as e:
            errors.append(f"settlement ListContracts ({when}): {e.code().name}: {e.details()}")
            return []

    async def _wait_settled(self, errors: list[str], timeout: float = 30.0) -> None:
        """Wait until settlement holds no proposed or active contract (the meters have left)."""
        open_states = (settlement_pb2.CONTRACT_STATE_PROPOSED, settlement_pb2.CONTRACT_STATE_ACTIVE)
        end = time.monotonic() + timeout
        left: list[str] = []
        while time.monotonic() < end:
            try:
                contracts = await follow(self.watcher.settlement.ListContracts,
                                         settlement_pb2.ListSettlementContractsRequest(states=list(open_states)),
                                         "contracts", 10)
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.5)
                continue
            left = [r.contract.contract_id for r in contracts if r.state in open_states]
            if not left:
                return
            await asyncio.sleep(0.5)
        errors.append(f"contracts still open {timeout:.0f}s after the meters left: {', '.join(left)}")

    async def _close_links(self) -> None:
        """Once the meters are gone, their links are cut: settlement, still stopping, then dials a
        closed port, not a proxy whose upstream refuses (which Toxiproxy logs as an error, and a
        run's logs must hold none: seen once as a failed lossy-links test)."""
        if self.toxiproxy is None or not self.toxiproxy.alive():
            return
        names = [p.name for proxies in self.proxies.values() for p in proxies]
        try:
            async with ToxiproxyClient(self.toxiproxy.api) as api:
                await api.partition(names)
        except Exception as e:  # noqa: BLE001 - stopping anyway; toxiproxy is stopped next
            self.say(f"links not cut before settlement stopped: {type(e).__name__}: {e}")

    async def _teardown(self) -> None:
        self._set_phase("stopping")
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.watcher.close()
        meters = [p for n, p in self.procs.items() if n not in ("matcher", "settlement", "anchor")]
        await asyncio.gather(*(p.stop() for p in meters))
        await self._close_links()
        for n in ("settlement", "anchor", "matcher"):
            if n in self.procs:
                await self.procs[n].stop()
        if self.toxiproxy is not None:
            await self.toxiproxy.stop()
        if self.net is not None:
            if self.opts.keep_network:
                await self.net.close()
                self.say(f"network kept running in {self.run_dir}: `p2pep regtest status --run-dir {self.run_dir}`, "
                         f"`p2pep regtest down --run-dir {self.run_dir}` when done")
            else:
                self.say("stopping the regtest network")
                await self.net.down()
        self._set_phase("ended")
