"""Wiring: store + the matcher core + gRPC servicer + background loops on a ServiceHost.

The matcher depends on nothing but its store: it is ready once the store is open and its
book loaded (both before it listens), and stays ready until it stops."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from contextlib import suppress

from p2pep.pbconv import now_ms
from p2pep.servicekit import ServiceHost
from p2pep.settings.matcher import MatcherSettings
from p2pep.v1 import matcher_pb2_grpc
from services.matcher.matcher import Matcher
from services.matcher.servicer import MatcherServicer
from services.matcher.store import Store

SERVICE_NAME = "p2pep.v1.MatcherService"


class MatcherApp:
    """A started matcher: ``host`` (ports, health), ``matcher`` (state)."""

    def __init__(self, host: ServiceHost, matcher: Matcher, store: Store) -> None:
        self.host = host
        self.matcher = matcher
        self.store = store
        self.tasks: list[asyncio.Task[None]] = []

    @property
    def target(self) -> str:
        return self.host.grpc_target

    async def stop(self, grace: float | None = None) -> None:
        await self.host.stop(grace)


async def start_matcher(settings: MatcherSettings, clock: Callable[[], int] = now_ms) -> MatcherApp:
    store = await Store.open(settings.db_path, settings.sqlite_synchronous)
    matcher = Matcher(settings, store, clock)
    try:
        await matcher.load()
    except BaseException:
        await store.close()
        raise
    # The book is long-lived: keep the collector from rescanning it (latency).
    gc.collect()
    gc.freeze()
    host = ServiceHost(settings, name="matcher")
    matcher_pb2_grpc.add_MatcherServiceServicer_to_server(MatcherServicer(matcher), host.grpc_server)
    app = MatcherApp(host, matcher, store)

    async def stopping() -> None:
        for t in app.tasks:
            t.cancel()
        for t in app.tasks:
            with suppress(asyncio.CancelledError):
                await t
        matcher.hub.close()

    async def close_store() -> None:
        async with matcher.lock:  # let a write in progress finish
            await store.close()

    host.add_stopping_hook(stopping)
    host.add_shutdown_hook(close_store)
    await host.start(serving=[SERVICE_NAME])
    app.tasks.append(asyncio.create_task(matcher.housekeeping_loop(), name="matcher-housekeeping"))
    if matcher.periodic:
        app.tasks.append(asyncio.create_task(matcher.clearing_loop(), name="matcher-clearing"))
    return app
