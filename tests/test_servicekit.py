"""The service runtime: settings, ports 0, /metrics, /healthz, gRPC health, graceful stop."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import Counter
from pydantic_settings import SettingsConfigDict

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


async def health_status(target: str, service: str = "") -> int:
    async with grpc.aio.insecure_channel(target) as ch:
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


async def test_set_serving_flips_healthz() -> None:
    host = ServiceHost(DummySettings(), name="dummy2")
    await host.start()
    try:
        await host.set_serving(False)
        assert await health_status(host.grpc_target) == health_pb2.HealthCheckResponse.NOT_SERVING
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
