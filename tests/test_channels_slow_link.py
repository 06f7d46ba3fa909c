"""A client channel connects over a slow link (:mod:`p2pep.servicekit.channels`).

A GPRS link (scenarios/lossy.toml) takes seconds for a mutual-TLS handshake: a few KB of
certificates at 40 kbit/s and several round trips of half a second. gRPC's
``grpc.min_reconnect_backoff_ms`` is not only a backoff: it is the *minimum connect timeout*
(tcp connect, TLS handshake and HTTP/2 settings must finish within the larger of it and the
current backoff). Set to 200 ms for quick reconnects, with a 2 s maximum backoff, no
handshake that takes longer than ~2 s ever completed: settlement could not reach a meter on
GPRS to sign a contract, every proposal was rejected. Here a link that delays every chunk
of bytes (a pure asyncio proxy, no Toxiproxy needed) makes the handshake take ~3 s; a channel
must still connect, and quickly reconnect to a peer that comes back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic_settings import SettingsConfigDict
from tls_helpers import dial

from p2pep.servicekit import BaseServiceSettings, ServiceHost
from p2pep.servicekit.channels import MIN_CONNECT_TIMEOUT_MS, OPTIONS


class SlowSettings(BaseServiceSettings):
    model_config = SettingsConfigDict(env_prefix="P2PEP_SLOWLINK_")


@asynccontextmanager
async def slow_link(upstream_port: int, delay_s: float) -> AsyncIterator[int]:
    """A TCP proxy on loopback that holds every chunk ``delay_s`` before passing it on
    (in order), both ways: a link with a long round trip. Yields its port."""

    async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                await asyncio.sleep(delay_s)
                w.write(data)
                await w.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            w.close()

    tasks: set[asyncio.Task[None]] = set()

    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", upstream_port)
        for t in (asyncio.create_task(pipe(cr, uw)), asyncio.create_task(pipe(ur, cw))):
            tasks.add(t)
            t.add_done_callback(tasks.discard)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for t in list(tasks):
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def test_the_connect_timeout_fits_a_slow_handshake() -> None:
    opts = dict(OPTIONS)
    # gRPC reads grpc.min_reconnect_backoff_ms as the minimum connect timeout
    assert opts["grpc.min_reconnect_backoff_ms"] == MIN_CONNECT_TIMEOUT_MS >= 10_000
    assert opts["grpc.initial_reconnect_backoff_ms"] <= 500 and opts["grpc.max_reconnect_backoff_ms"] <= 5_000


async def test_a_channel_connects_over_a_link_whose_handshake_takes_seconds() -> None:
    host = ServiceHost(SlowSettings(), name="slowlink")
    await host.start(serving=[])
    try:
        async with slow_link(host.grpc_port, delay_s=0.6) as port, dial(f"127.0.0.1:{port}", "slowlink") as ch:
            t0 = time.monotonic()
            resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=30,
                                                             wait_for_ready=True)
            took = time.monotonic() - t0
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        assert took > 2.5, took  # the link really was slow: more than the old 2 s connect timeout
    finally:
        await host.stop(grace=0)
