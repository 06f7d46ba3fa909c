"""The service runtime: settings, ports 0, /metrics, /healthz, gRPC health, graceful stop."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import Counter
from pydantic_settings import SettingsConfigDict
from tls_helpers import dial, tls_as

from p2pep.identity import Identity
from p2pep.regtest import wait_for
from p2pep.servicekit import BaseServiceSettings, ServiceHost, configure_logging, install_signal_handlers

ROOT = Path(__file__).resolve().parent.parent

DUMMY_COUNTER = Counter("p2pep_servicekit_test_dummy_total", "Counts nothing, proves /metrics works")


class DummySettings(BaseServiceSettings):
    model_config = SettingsConfigDict(env_prefix="P2PEP_DUMMY_")


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P2PEP_DUMMY_GRPC_PORT", "50123")
    monkeypatch.setenv("P2PEP_DUMMY_LOG_JSON", "false")
    monkeypatch.setenv("P2PEP_DUMMY_LOG_LEVEL", "DEBUG")
    s = DummySettings()
    assert (s.grpc_port, s.log_json, s.log_level, s.metrics_port) == (50123, False, "DEBUG", 0)


def test_settings_reject_bad_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P2PEP_DUMMY_GRPC_PORT", "70000")
    with pytest.raises(ValueError, match="grpc_port"):
        DummySettings()


async def health_status(target: str, service: str = "", peer: str = "dummy") -> int:
    async with dial(target, peer) as ch:
        resp = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
        return resp.status


async def test_dummy_service_serves_then_stops_on_sigterm() -> None:
    configure_logging("INFO", json=True, service="dummy")
    host = ServiceHost(DummySettings(), name="dummy")
    hook_ran = asyncio.Event()

    async def hook() -> None:
        hook_ran.set()

    host.add_shutdown_hook(hook)
    order: list[str] = []

    async def stopping() -> None:
        order.append("stopping")

    async def closing() -> None:
        order.append("shutdown")

    host.add_shutdown_hook(closing)
    host.add_stopping_hook(stopping)
    await host.start(serving=["p2pep.v1.Dummy"])
    assert host.grpc_port > 0 and host.http_port > 0
    DUMMY_COUNTER.inc()

    assert await health_status(host.grpc_target) == health_pb2.HealthCheckResponse.SERVING
    assert await health_status(host.grpc_target, "p2pep.v1.Dummy") == health_pb2.HealthCheckResponse.SERVING
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{host.http_url}/metrics") as r:
            assert r.status == 200
            assert "p2pep_servicekit_test_dummy_total 1.0" in await r.text()
        async with http.get(f"{host.http_url}/healthz") as r:
            assert r.status == 200 and (await r.json())["status"] == "SERVING"

        stop = asyncio.Event()
        uninstall = install_signal_handlers(stop)
        try:
            task = asyncio.create_task(host.wait_and_stop(stop, grace=1))
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(task, timeout=10)
        finally:
            uninstall()
    assert hook_ran.is_set()
    assert order == ["stopping", "shutdown"]
    assert not host.serving
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await health_status(host.grpc_target)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_readiness_flips_health_and_healthz() -> None:
    host = ServiceHost(DummySettings(), name="dummy2")
    host.readiness.require("store")
    await host.start()
    try:
        assert await health_status(host.grpc_target, peer="dummy2") == health_pb2.HealthCheckResponse.NOT_SERVING
        async with aiohttp.ClientSession() as http, http.get(f"{host.http_url}/healthz") as r:
            assert r.status == 503 and (await r.json())["waiting_for"] == ["store"]
        host.readiness.mark("store", True)
        await wait_for(lambda: host.serving, 5, what="serving")
        assert await health_status(host.grpc_target, peer="dummy2") == health_pb2.HealthCheckResponse.SERVING
        host.readiness.mark("store", False, "disk gone")
        await wait_for(lambda: not host.serving, 5, what="not serving")
        async with aiohttp.ClientSession() as http, http.get(f"{host.http_url}/healthz") as r:
            assert r.status == 503
    finally:
        await host.stop(grace=0)


DUMMY_MAIN = textwrap.dedent(
    """
    import asyncio, sys
    from p2pep.servicekit import BaseServiceSettings, ServiceHost, configure_logging, run_service

    async def main(stop: asyncio.Event) -> None:
        configure_logging("INFO", json=True, service="dummy")
        host = ServiceHost(BaseServiceSettings(), name="dummy")
        await host.start()
        print(host.grpc_port, host.http_port, flush=True)
        await host.wait_and_stop(stop, grace=1)
        print("clean", flush=True)

    sys.exit(run_service(main))
    """
)


async def test_run_service_subprocess_sigterm_exits_zero() -> None:
    tls_as(Identity("service", "dummy"))  # its certificate, in the test CA's folder the subprocess reads
    proc = subprocess.Popen(
        [sys.executable, "-c", DUMMY_MAIN], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), timeout=20)
        grpc_port, _http_port = map(int, line.split())
        assert await health_status(f"127.0.0.1:{grpc_port}") == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.to_thread(proc.communicate, timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "clean" in out
    assert '"event": "service stopped"' in err


def test_bad_settings_exit_with_one_line_naming_each_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from p2pep.servicekit import load_settings
    from p2pep.settings.console import ConsoleSettings

    monkeypatch.delenv("P2PEP_CONSOLE_SETTLEMENT_TARGET", raising=False)
    monkeypatch.setenv("P2PEP_CONSOLE_RPC_TIMEOUT_S", "-1")
    with pytest.raises(SystemExit) as info:
        load_settings(ConsoleSettings, "console")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("console: bad configuration: ")
    assert "P2PEP_CONSOLE_SETTLEMENT_TARGET: Field required" in msg and "P2PEP_CONSOLE_RPC_TIMEOUT_S: " in msg
    monkeypatch.setenv("P2PEP_CONSOLE_SETTLEMENT_TARGET", "127.0.0.1:1")
    monkeypatch.setenv("P2PEP_CONSOLE_RPC_TIMEOUT_S", "2.5")
    assert load_settings(ConsoleSettings, "console").rpc_timeout_s == 2.5


async def test_refusals_become_their_status_for_unary_and_streaming_calls() -> None:
    """One interceptor answers every Refused with its status and "field: message", counted."""
    from prometheus_client import REGISTRY

    from p2pep.refusals import NotFound, PermissionDenied
    from p2pep.servicekit.errors import RefusalInterceptor

    async def unary(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        raise NotFound("contract_id", "no contract 'x'")

    async def stream(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> AsyncIterator[bytes]:
        yield b"first"
        raise PermissionDenied("meter_id", "not yours")

    handler = grpc.method_handlers_generic_handler("t.T", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
    })
    server = grpc.aio.server(interceptors=[RefusalInterceptor()])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    before = REGISTRY.get_sample_value("p2pep_grpc_refusals_total", {"method": "Unary", "code": "NOT_FOUND"}) or 0
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ch.unary_unary("/t.T/Unary")(b"")
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert err.value.details() == "contract_id: no contract 'x'"
            call = ch.unary_stream("/t.T/Stream")(b"")
            got = []
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for msg in call:
                    got.append(msg)
            assert got == [b"first"] and err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert err.value.details() == "meter_id: not yours"
    finally:
        await server.stop(0)
    assert REGISTRY.get_sample_value("p2pep_grpc_refusals_total",
                                     {"method": "Unary", "code": "NOT_FOUND"}) == before + 1


async def test_supervised_retries_with_backoff_gives_up_and_resets_on_progress() -> None:
    from p2pep.servicekit import Backoff, GaveUp, supervised

    slept: list[float] = []
    seen: list[tuple[int, str]] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    calls = {"n": 0}

    async def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 4:
            raise ValueError(f"boom {calls['n']}")
        return "done"

    out = await supervised(flaky, on_failure=lambda n, e: seen.append((n, str(e))), sleep=sleep,
                           backoff=Backoff(0.1, 0.3))
    assert out == "done" and seen == [(1, "boom 1"), (2, "boom 2"), (3, "boom 3")]
    assert slept == [0.1, 0.2, 0.3]  # doubled, capped

    async def always() -> None:
        raise OSError("disk")

    with pytest.raises(GaveUp) as gave_up:
        await supervised(always, on_failure=lambda n, e: None, sleep=sleep, attempts=2)
    assert gave_up.value.attempts == 2 and isinstance(gave_up.value.last, OSError)

    async def refused() -> None:
        raise PermissionError("never retried")

    with pytest.raises(PermissionError):  # retry_if says no: raised at once, no wait
        await supervised(refused, on_failure=lambda n, e: None, sleep=sleep,
                         retry_if=lambda e: not isinstance(e, PermissionError))

    progress = {"done": 0}
    counts: list[int] = []

    async def streams() -> None:
        progress["done"] += 1
        if progress["done"] > 3:
            return
        raise ConnectionError("stream broke after some work")

    slept.clear()
    await supervised(streams, on_failure=lambda n, e: counts.append(n), sleep=sleep, backoff=Backoff(0.1, 5.0),
                     progressed=lambda: True)
    assert counts == [1, 1, 1] and slept == [0.1, 0.1, 0.1]  # each run got something done: afresh


@pytest.mark.expected_log_errors("boom")
async def test_storage_contention_is_unavailable_and_a_bug_stays_unknown() -> None:
    """SQLite's "database is locked" escaping a handler is transient: UNAVAILABLE (clients
    retry), in a streaming call too; any other exception is a bug and stays UNKNOWN."""
    import sqlite3

    from p2pep.servicekit.errors import RefusalInterceptor

    async def locked(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
                     ) -> AsyncIterator[bytes]:
        async for r in requests:
            yield r
            raise sqlite3.OperationalError("database is locked")

    async def bug(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        raise ValueError("boom")

    handler = grpc.method_handlers_generic_handler("t.T", {
        "Locked": grpc.stream_stream_rpc_method_handler(locked),
        "Bug": grpc.unary_unary_rpc_method_handler(bug),
    })
    server = grpc.aio.server(interceptors=[RefusalInterceptor()])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ch.stream_stream("/t.T/Locked")()
            await call.write(b"r1")
            assert await call.read() == b"r1"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call.read()
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert err.value.details().startswith("storage: busy, try again (database is locked)")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ch.unary_unary("/t.T/Bug")(b"")
            assert err.value.code() == grpc.StatusCode.UNKNOWN
    finally:
        await server.stop(0)
