"""`python -m services.settlement`: contracts, readings and Lightning payments per increment.

Ready (health SERVING) once its store is open, migrated and loaded (before it listens at all)
and while the matcher and the anchor service it is configured with answer; a meter is never a
readiness dependency (meters come and go; settlement serves the others meanwhile)."""

from __future__ import annotations

import asyncio

import grpc

from p2pep.identity import service
from p2pep.pki.service import EnrollmentServer
from p2pep.pki.tlsdir import TlsDir
from p2pep.servicekit import ServiceHost, configure_logging, load_settings, run_service
from p2pep.servicekit.channels import channel
from p2pep.servicekit.tls import service_tls
from p2pep.settings.settlement import SettlementSettings
from p2pep.v1 import matcher_pb2_grpc, settlement_pb2_grpc
from services.settlement.engine import Engine
from services.settlement.matcher_feed import follow_matcher
from services.settlement.metrics import install_operator_collector
from services.settlement.server import SettlementServicer
from services.settlement.store import Store


async def main(stop: asyncio.Event) -> None:
    s = load_settings(SettlementSettings, "settlement")
    configure_logging(s.log_level, json=s.log_json)
    store = await Store.open(s.db_path, s.sqlite_busy_timeout_ms)
    tls = service_tls(s, service("settlement"))
    matcher = None
    channels: list[grpc.aio.Channel] = []
    if s.matcher_target:
        ch = channel(s.matcher_target, peer="matcher", tls=tls)
        channels.append(ch)
        matcher = matcher_pb2_grpc.MatcherServiceStub(ch)
    anchor = None
    if s.anchor_target:
        from p2pep.anchor.client import AnchorClient

        anchor = AnchorClient(s.anchor_target, tls=tls)
    engine = Engine(s, store, matcher, anchor)
    await engine.load()
    install_operator_collector(engine.contracts, engine.meters, settled_defaults=engine.settled_defaults)
    host = ServiceHost(s, name="settlement")
    if s.matcher_target:
        host.readiness.watch_peer("matcher", channels[0])
    if anchor is not None:
        host.readiness.watch_peer("anchor", anchor.channel)
    if s.enrollment_port >= 0:  # where the operator's CA key is: meters without a certificate enroll here
        enrollment = EnrollmentServer(TlsDir(s.tls_dir), service("settlement"))
        await enrollment.start(s.grpc_host, s.enrollment_port)
        host.add_stopping_hook(enrollment.stop)
    settlement_pb2_grpc.add_SettlementServiceServicer_to_server(SettlementServicer(engine), host.grpc_server)

    async def shutdown() -> None:
        await engine.stop()
        for c in channels:
            await c.close()
        if anchor is not None:
            await anchor.close()
        await store.close()

    host.add_shutdown_hook(shutdown)
    await host.start(serving=["p2pep.v1.SettlementService"])
    engine.spawn(engine.sweep_forever())
    if matcher is not None:
        engine.spawn(follow_matcher(engine, matcher))
    await host.wait_and_stop(stop)


if __name__ == "__main__":
    raise SystemExit(run_service(main))
