"""`python -m services.portal`: the household portal (HTTP), over settlement's registry and
the meters' gRPC APIs.

Ready (health SERVING) once its store is open and while settlement answers (it finds the
meters there); a household's meter is not a readiness dependency (one meter offline is one
household's page saying so, not the portal down)."""

from __future__ import annotations

import asyncio

from p2pep.identity import service
from p2pep.servicekit import ServiceHost, configure_logging, load_settings, run_service
from p2pep.servicekit.channels import channel
from p2pep.servicekit.meter_links import MeterLinks
from p2pep.servicekit.tls import service_tls
from p2pep.settings.portal import PortalSettings
from p2pep.v1 import anchor_pb2_grpc, matcher_pb2_grpc, settlement_pb2_grpc
from p2pep.webauth.web import AuthConfig, WebAuth
from services.portal.household import Household
from services.portal.store import PortalStore
from services.portal.web import Portal, add_portal_routes


async def main(stop: asyncio.Event) -> None:
    s = load_settings(PortalSettings, "portal")
    configure_logging(s.log_level, json=s.log_json, service="portal")
    store = await PortalStore.open_portal(s.auth_db_path)
    tls = service_tls(s, service("portal"))
    settlement = channel(s.settlement_target, peer="settlement", tls=tls)
    links = MeterLinks(settlement_pb2_grpc.SettlementServiceStub(settlement), s.rpc_timeout_s, tls)
    auth = WebAuth(store, AuthConfig.from_settings(s, "portal", "P2PEP household portal", can_register=True))
    host = ServiceHost(s, name="portal")
    host.readiness.watch_peer("settlement", settlement)
    auth.install(host.http_app)
    anchor = channel(s.anchor_target, peer="anchor", tls=tls) if s.anchor_target else None
    matcher = channel(s.matcher_target, peer="matcher", tls=tls) if s.matcher_target else None
    household = Household(links, s.rpc_timeout_s, anchor_pb2_grpc.AnchorServiceStub(anchor) if anchor else None,
                          matcher_pb2_grpc.MatcherServiceStub(matcher) if matcher else None)
    add_portal_routes(host.http_app, Portal(store, auth, links, s.rpc_timeout_s, s.pairing_failures_per_account,
                                            s.pairing_failures_per_client, s.limit_window_s), household)

    async def close() -> None:
        for ch in (anchor, matcher):
            if ch is not None:
                await ch.close()
        await links.close()
        await settlement.close()
        await store.close()

    host.add_shutdown_hook(close)
    await host.start(serving=["p2pep.v1.Portal"])
    await host.wait_and_stop(stop)


if __name__ == "__main__":
    raise SystemExit(run_service(main))
