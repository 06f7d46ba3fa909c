"""Readiness that means ready (p2pep.servicekit.readiness), on the host's health (gRPC on both
ports, /healthz, /livez), and each service's conditions against fake dependencies: NOT_SERVING
until its startup work is done and what it calls answers, NOT_SERVING while one is lost,
SERVING again when it returns, and alive (``liveness`` SERVING) throughout."""

from __future__ import annotations

import asyncio
import importlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import logcheck
import pytest
from fakes.lightning import FakeLightning
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pydantic_settings import SettingsConfigDict
from test_meter_service import FakeSettlement
from tls_helpers import dial, server_credentials

from p2pep.identity import Identity
from p2pep.regtest import wait_for
from p2pep.servicekit import BaseServiceSettings, ServiceHost
from p2pep.servicekit.host import LIVENESS
from p2pep.servicekit.readiness import NotMet, Readiness, grpc_peer_check
from p2pep.settings.meter import MeterSettings
from p2pep.v1 import settlement_pb2_grpc
from services.meter.app import MeterApp, start_meter

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


# -- the helper ----------------------------------------------------------------------------------


async def test_conditions_flip_readiness_and_listeners_hear_only_flips() -> None:
    r = Readiness("svc")
    heard: list[bool] = []
    r.subscribe(heard.append)
    assert r.ready  # nothing declared: ready
    r.require("store")
    r.require("peer", "not dialled")
    assert not r.ready and r.unmet == {"store": "not yet", "peer": "not dialled"}
    r.mark("store", True)
    r.mark("peer", False, "UNAVAILABLE")  # still unmet: a new reason, no flip
    assert heard == [] and r.unmet == {"peer": "UNAVAILABLE"}
    r.mark("peer", True)
    r.mark("peer", True)
    assert r.ready and heard == [True]
    r.mark("store", False, "disk gone")
    r.mark("peer", False, "lost")
    assert heard == [True, False] and set(r.unmet) == {"store", "peer"}
    r.mark("store", True)
    r.mark("peer", True)
    assert heard == [True, False, True]
    with pytest.raises(ValueError, match="twice"):
        r.require("store")
    with pytest.raises(KeyError):
        r.mark("unknown", True)


async def test_watch_follows_a_dependency_and_after_waits_for_startup() -> None:
    r = Readiness("svc", interval_s=0.02, timeout_s=0.2)
    up = {"value": False, "hang": False}

    async def check() -> None:
        if up["hang"]:
            await asyncio.sleep(10)
        if not up["value"]:
            raise NotMet("peer says no")

    started = asyncio.Event()
    r.watch("peer", check)
    r.after("started", started)
    r.start()
    try:
        await wait_for(lambda: r.unmet.get("peer") == "peer says no", 5, what="first check")
        up["value"] = True
        await wait_for(lambda: "peer" not in r.unmet, 5, what="peer met")
        assert not r.ready and r.unmet == {"started": "startup not done"}
        started.set()
        await wait_for(lambda: r.ready, 5, what="ready")
        up["hang"] = True  # a dependency that stops answering is unmet after timeout_s
        await wait_for(lambda: not r.ready, 5, what="not ready")
        assert r.unmet == {"peer": "no answer within 0.2s"}
        up["hang"] = False
        await wait_for(lambda: r.ready, 5, what="ready again")
        assert "started" not in r.unmet  # startup, once done, stays done
    finally:
        await r.stop()
    assert all(t.done() for t in asyncio.all_tasks() if t.get_name().startswith("readiness:"))


async def test_a_check_stuck_in_its_cancellation_holds_up_neither_the_watch_nor_the_stop() -> None:
    """A check that overruns is cancelled and left behind: a gRPC call whose cancellation waits
    on the network once kept a service's graceful stop waiting forever (CI, settlement)."""
    r = Readiness("svc", interval_s=0.02, timeout_s=0.2)
    release = asyncio.Event()
    calls = {"n": 0}

    async def check() -> None:
        calls["n"] += 1
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await release.wait()  # its cancellation does not end until released
            raise

    r.watch("peer", check)
    r.start()
    try:
        await wait_for(lambda: r.unmet.get("peer") == "no answer within 0.2s", 5, what="unmet after timeout")
        await wait_for(lambda: calls["n"] >= 3, 5, what="the watch goes on checking")
    finally:
        await asyncio.wait_for(r.stop(), 2)  # bounded, though every abandoned check still hangs
    release.set()
    await wait_for(lambda: not [t for t in asyncio.all_tasks() if t.get_coro().__qualname__.endswith("check")],
                   5, what="abandoned checks ended once released")


async def test_grpc_peer_check_carries_its_timeout_as_the_call_deadline() -> None:
    seen: list[float | None] = []

    class SlowHealth(health.aio.HealthServicer):
        async def Check(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
                        ) -> health_pb2.HealthCheckResponse:
            seen.append(context.time_remaining())
            await asyncio.sleep(5)
            return health_pb2.HealthCheckResponse(status=SERVING)

    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(SlowHealth(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await grpc_peer_check(ch, 0.3)()
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert seen and seen[0] is not None and 0 < seen[0] <= 0.3
    finally:
        await server.stop(0)


# -- the host --------------------------------------------------------------------------------------


class ProbedSettings(BaseServiceSettings):
    model_config = SettingsConfigDict(env_prefix="P2PEP_PROBED_")


async def plain_health(port: int, service: str = "") -> int:
    """What the kubelet's gRPC probe sees: plaintext, no certificate."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(resp.status)


async def tls_health(target: str, peer: str, service: str = "") -> int:
    async with dial(target, peer) as ch:
        resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(resp.status)


async def http_json(url: str) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        return r.status, await r.json()


async def test_host_is_not_serving_until_ready_and_alive_throughout_on_every_port() -> None:
    host = ServiceHost(ProbedSettings(health_port=0, readiness_interval_s=0.05), name="probed")
    dep = {"up": False}

    async def check() -> None:
        if not dep["up"]:
            raise NotMet("down")

    host.readiness.watch("dep", check)
    await host.start(serving=["p2pep.v1.Probed"])
    try:
        port = host.health_port
        assert port > 0 and port != host.grpc_port
        for service in ("", "p2pep.v1.Probed"):
            assert await plain_health(port, service) == NOT_SERVING
            assert await tls_health(host.grpc_target, "probed", service) == NOT_SERVING
        assert await plain_health(port, LIVENESS) == SERVING
        assert await http_json(f"{host.http_url}/healthz") == (503, {"status": "NOT_SERVING", "waiting_for": ["dep"]})
        assert await http_json(f"{host.http_url}/livez") == (200, {"status": "SERVING"})

        dep["up"] = True
        await wait_for(lambda: host.serving, 5, what="serving")
        for service in ("", "p2pep.v1.Probed"):
            assert await plain_health(port, service) == SERVING
            assert await tls_health(host.grpc_target, "probed", service) == SERVING
        assert await http_json(f"{host.http_url}/healthz") == (200, {"status": "SERVING"})

        dep["up"] = False  # lost: not ready, still alive
        await wait_for(lambda: not host.serving, 5, what="not serving")
        assert await plain_health(port) == NOT_SERVING
        assert await plain_health(port, LIVENESS) == SERVING
        dep["up"] = True
        await wait_for(lambda: host.serving, 5, what="serving again")
        assert await plain_health(port) == SERVING

        # the plaintext port serves health and nothing else
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            other = ch.unary_unary("/p2pep.v1.SettlementService/ListMeters")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await other(b"", timeout=5)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await host.stop(grace=0)
    with pytest.raises(grpc.aio.AioRpcError):
        await plain_health(port, LIVENESS)


async def test_no_health_port_unless_configured() -> None:
    host = ServiceHost(ProbedSettings(), name="probed")
    await host.start()
    try:
        assert host.health_port == -1 and host.serving  # no condition declared: ready at start
    finally:
        await host.stop(grace=0)


@pytest.mark.expected_log_errors("shutdown step overran, going on without it")
async def test_host_stop_goes_on_when_grpc_stop_overruns(monkeypatch: pytest.MonkeyPatch,
                                                        log_errors: logcheck.Capture) -> None:
    """gRPC's own server stop is bounded (grace + slack): the process must still end within the
    pod's termination grace period, and the log says where the stop waited."""
    import p2pep.servicekit.host as host_module

    monkeypatch.setattr(host_module, "_STOP_SLACK_S", 0.3)
    host = ServiceHost(ProbedSettings(log_json=False), name="probed")
    await host.start()
    real_stop = host.grpc_server.stop
    release = asyncio.Event()
    hooks: list[str] = []

    async def stuck_stop(grace: float | None) -> None:
        await release.wait()

    async def hook() -> None:
        hooks.append("ran")

    host.add_shutdown_hook(hook)
    monkeypatch.setattr(host.grpc_server, "stop", stuck_stop)
    await asyncio.wait_for(host.stop(grace=0), 5)
    assert hooks == ["ran"]  # the shutdown hooks (stores, channels) still ran
    # what structlog printed is not captured reliably (its stream is bound when logging is set
    # up, before capsys), so read the ERROR event from the in-process log tap
    overran = [p.text for p in log_errors.problems if "shutdown step overran" in p.text]
    assert len(overran) == 1 and "grpc server stop" in overran[0] and "stuck_stop" in overran[0], overran
    release.set()
    await real_stop(0)


# -- fake dependencies ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class FakePeer:
    """A P2PEP component on a fixed port, mutual TLS as ``service/<name>``, serving health (and
    ``add``'s servicers), that a test stops (it is lost) and starts again (it is back)."""

    name: str
    port: int
    add: Callable[[grpc.aio.Server], None] | None = None
    server: grpc.aio.Server | None = None
    kind: str = "service"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), self.server)
        if self.add is not None:
            self.add(self.server)
        bound = self.server.add_secure_port(self.target, server_credentials(Identity(self.kind, self.name)))
        assert bound == self.port
        await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)
            self.server = None


@pytest.fixture
async def peers() -> AsyncIterator[dict[str, FakePeer]]:
    made: dict[str, FakePeer] = {}
    yield made
    for p in made.values():
        await p.stop()


async def status_after(port: int, want: int, what: str, timeout: float = 15) -> None:
    async def now() -> bool:
        return await plain_health(port) == want  # no answer yet (not listening): not yet

    await wait_for(now, timeout, interval=0.05, what=what)


async def lose_and_regain(port: int, peer: FakePeer) -> None:
    """``peer`` stops: the service goes NOT_SERVING (and stays alive); back: SERVING again."""
    await peer.stop()
    await status_after(port, NOT_SERVING, f"{peer.name} lost")
    assert await plain_health(port, LIVENESS) == SERVING
    await peer.start()
    await status_after(port, SERVING, f"{peer.name} back")


# -- the meter ------------------------------------------------------------------------------------------


async def test_meter_ready_only_when_registered_with_channel_and_dependencies(
        tmp_path: Path, peers: dict[str, FakePeer]) -> None:
    fake = FakeSettlement()
    settlement = peers["settlement"] = FakePeer(
        "settlement", free_port(), lambda s: settlement_pb2_grpc.add_SettlementServiceServicer_to_server(fake, s))
    hub = "02" + "44" * 32  # not the fake node's own channel peer: the meter must open one
    lnd = FakeLightning().node("home")
    lnd.fail_open = "wallet not funded yet"
    health_port = free_port()
    settings = MeterSettings(
        meter_id="home", role="consumer", key_path=tmp_path / "home.key", db_path=str(tmp_path / "home.sqlite"),
        settlement_target=settlement.target, price_msat_per_kwh=150_000, source="constant", constant_w=2000,
        accel=60, tick_s=0.05, hub=f"{hub}@127.0.0.1:9736", channel_sat=1_000_000, contract_poll_s=0.2,
        balance_refresh_s=0.2, flush_timeout_s=1, leave_timeout_s=1, log_json=False, health_port=health_port,
        readiness_interval_s=0.1, readiness_timeout_s=1)  # type: ignore[call-arg]
    app: MeterApp = await start_meter(settings, lnd)
    try:
        r = app.host.readiness
        assert set(r.conditions) == {"lnd", "settlement", "started", "hub-channel"}
        # settlement unreachable: not registered, nothing started
        await wait_for(lambda: "settlement" in r.unmet and "lnd" not in r.unmet, 10, what="first checks")
        assert await plain_health(health_port) == NOT_SERVING
        assert await plain_health(health_port, LIVENESS) == SERVING
        assert {"started", "hub-channel"} <= set(r.unmet)
        # settlement up: registered and ticking, but no channel with the hub yet
        await settlement.start()
        await wait_for(lambda: app.meter.ready.is_set(), 30, what="registered and ticking")
        await wait_for(lambda: set(r.unmet) == {"hub-channel"}, 10, what="only the channel missing")
        assert await plain_health(health_port) == NOT_SERVING
        lnd.fail_open = None  # the wallet is funded: the startup retry opens the channel
        await status_after(health_port, SERVING, "channel open", timeout=30)
        # its lnd goes away and comes back
        lnd.down = True
        await status_after(health_port, NOT_SERVING, "lnd lost")
        assert "lnd" in r.unmet and await plain_health(health_port, LIVENESS) == SERVING
        lnd.down = False
        await status_after(health_port, SERVING, "lnd back")
        # settlement restarts
        await lose_and_regain(health_port, settlement)
    finally:
        await app.stop()


# -- settlement, console, portal: their main() in process, against fake peers -----------------------------


@dataclass(frozen=True)
class Case:
    service: str
    prefix: str
    depends: tuple[str, ...]
    env: Callable[[Path, dict[str, FakePeer]], dict[str, str]]


CASES = [
    Case("settlement", "P2PEP_SETTLEMENT_", ("matcher", "anchor"), lambda tmp, p: {
        "DB_PATH": str(tmp / "settlement.sqlite"), "MATCHER_TARGET": p["matcher"].target,
        "ANCHOR_TARGET": p["anchor"].target}),
    Case("console", "P2PEP_CONSOLE_", ("settlement", "matcher"), lambda tmp, p: {
        "AUTH_DB_PATH": str(tmp / "auth.db"), "SETTLEMENT_TARGET": p["settlement"].target,
        "MATCHER_TARGET": p["matcher"].target}),
    Case("portal", "P2PEP_PORTAL_", ("settlement",), lambda tmp, p: {
        "AUTH_DB_PATH": str(tmp / "auth.db"), "SETTLEMENT_TARGET": p["settlement"].target}),
]


@pytest.mark.parametrize("case", CASES, ids=[c.service for c in CASES])
async def test_service_ready_while_its_dependencies_answer(
        case: Case, tmp_path: Path, peers: dict[str, FakePeer], monkeypatch: pytest.MonkeyPatch) -> None:
    for name in case.depends:
        peers[name] = FakePeer(name, free_port())
    health_port = free_port()
    env = {"GRPC_PORT": "0", "METRICS_PORT": "0", "HEALTH_PORT": str(health_port), "LOG_JSON": "false",
           "READINESS_INTERVAL_S": "0.1", "READINESS_TIMEOUT_S": "1", **case.env(tmp_path, peers)}
    for k, v in env.items():
        monkeypatch.setenv(case.prefix + k, v)
    main: Callable[[asyncio.Event], Awaitable[None]] = importlib.import_module(f"services.{case.service}.__main__").main
    stop = asyncio.Event()
    task = asyncio.create_task(main(stop))
    try:
        await status_after(health_port, NOT_SERVING, "started, dependencies down")
        assert await plain_health(health_port, LIVENESS) == SERVING
        for i, name in enumerate(case.depends):
            await peers[name].start()
            if i < len(case.depends) - 1:  # one dependency still missing
                await asyncio.sleep(0.3)
                assert await plain_health(health_port) == NOT_SERVING, name
        await status_after(health_port, SERVING, "all dependencies up")
        for name in case.depends:
            await lose_and_regain(health_port, peers[name])
    finally:
        stop.set()
        await stopped_within(task, 30)


async def stopped_within(task: asyncio.Task[None], timeout: float) -> None:
    """``task`` (a service's main) ends within ``timeout``; if not, fail with every task's stack
    (where a shutdown hangs is the point of the failure)."""
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        stacks = []
        for t in asyncio.all_tasks():
            frames = t.get_stack(limit=12)
            stacks.append(f"{t.get_name()}: " + " <- ".join(
                f"{f.f_code.co_name}({Path(f.f_code.co_filename).name}:{f.f_lineno})" for f in reversed(frames)))
        task.cancel()
        pytest.fail(f"service did not stop within {timeout}s; tasks:\n" + "\n".join(sorted(stacks)))
    task.result()


# -- the anchor: its lnd wallet and btcd ---------------------------------------------------------------


async def test_anchor_ready_while_its_wallet_and_btcd_answer() -> None:
    from services.anchor.__main__ import watch_dependencies

    down = {"lnd": True, "btcd": False}

    class Hub:
        async def wallet_balance(self) -> object:
            if down["lnd"]:
                raise OSError("connection refused")
            return object()

    class Chain:
        async def get_best_height(self) -> int:
            if down["btcd"]:
                raise OSError("connection refused")
            return 101

    r = Readiness("anchor", interval_s=0.02, timeout_s=0.5)
    watch_dependencies(r, Hub(), Chain())
    r.start()
    try:
        await wait_for(lambda: r.unmet == {"lnd": "OSError: connection refused"}, 5, what="lnd down")
        down["lnd"] = False
        await wait_for(lambda: r.ready, 5, what="ready")
        down["btcd"] = True
        await wait_for(lambda: set(r.unmet) == {"btcd"}, 5, what="btcd lost")
        down["btcd"] = False
        await wait_for(lambda: r.ready, 5, what="ready again")
    finally:
        await r.stop()
