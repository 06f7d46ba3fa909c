"""`python -m services.console`: the operator's console (HTTP), over settlement and the matcher.

Ready (health SERVING) once its sign-in store is open and while settlement (and the matcher,
when configured) answer: without them its pages would show nothing but errors."""

from __future__ import annotations

import asyncio

from p2pep.identity import service
from p2pep.servicekit import ServiceHost, configure_logging, load_settings, run_service
from p2pep.servicekit.channels import channel
from p2pep.servicekit.meter_links import MeterLinks
from p2pep.servicekit.tls import service_tls
from p2pep.settings.console import ConsoleSettings
from p2pep.v1 import anchor_pb2_grpc, matcher_pb2_grpc, settlement_pb2_grpc
from p2pep.webauth.store import AuthStore
from p2pep.webauth.web import AuthConfig, WebAuth
from services.console.reports import Reports
from services.console.web import Console, add_console_routes


async def main(stop: asyncio.Event) -> None:
    s = load_settings(ConsoleSettings, "console")
    configure_logging(s.log_level, json=s.log_json, service="console")
    tls = service_tls(s, service("console"))
    channels = [channel(s.settlement_target, peer="settlement", tls=tls)]
    needed = {"settlement": channels[0]}  # what its readiness watches (the anchor's batches page may fail alone)
    matcher = None
    if s.matcher_target:
        channels.append(channel(s.matcher_target, peer="matcher", tls=tls))
        needed["matcher"] = channels[-1]
        matcher = matcher_pb2_grpc.MatcherServiceStub(channels[-1])
    settlement = settlement_pb2_grpc.SettlementServiceStub(channels[0])
    links = MeterLinks(settlement, s.rpc_timeout_s, tls)  # the meters' clock, read from a meter's status
    console = Console(settlement, matcher, s.rpc_timeout_s, links)
    anchor = None
    if s.anchor_target:
        channels.append(channel(s.anchor_target, peer="anchor", tls=tls))
        anchor = anchor_pb2_grpc.AnchorServiceStub(channels[-1])
    reports = Reports(settlement, s.rpc_timeout_s, anchor, links)
    store = await AuthStore.open(s.auth_db_path)
    auth = WebAuth(store, AuthConfig.from_settings(s, "console", "P2PEP operator console", can_register=False))
    host = ServiceHost(s, name="console")
    for peer, ch in needed.items():
        host.readiness.watch_peer(peer, ch)
    add_console_routes(host.http_app, console, auth, reports)

    async def close() -> None:
        await links.close()
        for ch in channels:
            await ch.close()
        await store.close()

    host.add_shutdown_hook(close)
    await host.start(serving=["p2pep.v1.Console"])
    await host.wait_and_stop(stop)


if __name__ == "__main__":
    raise SystemExit(run_service(main))
