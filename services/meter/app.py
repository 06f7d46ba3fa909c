"""The meter process: settings -> key, DB, LND client -> gRPC server -> meter running
until SIGTERM -> leave gracefully.

Ready (health SERVING) when the meter can do its job: it is registered with settlement, has
resumed its registers and taken its baseline reading (``started``: :attr:`Meter.ready`), and
while its lnd, settlement and the matcher answer and (hub mode) it has an active channel with
the hub. Before that, or while one of them is lost, it is NOT_SERVING and still alive: it
keeps retrying on its own (:mod:`p2pep.servicekit.readiness`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import structlog

from p2pep.identity import Identity
from p2pep.lnd.client import LndClient, LndConnection
from p2pep.metering.pairing import PairingCodes
from p2pep.metering.signing import MeterKey
from p2pep.pki.service import ensure_enrolled
from p2pep.servicekit import ServiceHost, configure_logging, load_settings
from p2pep.servicekit.readiness import Check, NotMet, Readiness
from p2pep.settings.meter import MeterSettings, parse_node_address
from p2pep.v1 import meter_pb2_grpc
from services.meter.display import add_display_routes
from services.meter.lightning import LightningNode
from services.meter.meter import Meter
from services.meter.servicer import MeterServicer

log = structlog.get_logger("meter")

SERVICE = "p2pep.v1.MeterService"


@dataclass
class MeterApp:
    meter: Meter
    host: ServiceHost

    async def stop(self) -> None:
        """Graceful: the meter leaves (its gRPC server still answers settlement's last
        requests), then the servers stop and the DB and LND connection close."""
        try:
            await self.meter.shutdown()
        finally:
            await self.host.stop()
            await self.meter.close()


async def start_meter(settings: MeterSettings, lnd: LightningNode) -> MeterApp:
    """Enroll if it has no certificate yet, open the meter, serve MeterService, and start it
    (in the background)."""
    if settings.enroll_token:
        if settings.key_path is None:  # its key's default folder
            settings.state_folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        enrolled = await ensure_enrolled(Path(settings.tls_dir), settings.meter_id,
                                         MeterKey.load_or_create(settings.key_file), settings.enroll_target,
                                         settings.enroll_token, settings.enroll_server_name)
        if enrolled:
            log.info("enrolled: certificate stored", meter_id=settings.meter_id, tls_dir=settings.tls_dir)
    meter = await Meter.open(settings, lnd)
    host = ServiceHost(settings, name=f"meter {settings.meter_id}", identity=Identity("meter", settings.meter_id))
    pairing = PairingCodes(settings.pairing_ttl_s, settings.pairing_max_failures, settings.pairing_lockout_s)
    meter_pb2_grpc.add_MeterServiceServicer_to_server(MeterServicer(meter, pairing), host.grpc_server)
    add_display_routes(host.http_app, settings.meter_id, pairing, settings.display_allowed_hosts)
    watch_dependencies(host.readiness, meter, settings)
    await host.start(serving=[SERVICE])
    meter.start(settings.advertise_address or host.grpc_target)
    return MeterApp(meter, host)


def watch_dependencies(readiness: Readiness, meter: Meter, settings: MeterSettings) -> None:
    """The meter's readiness conditions (see the module's docstring)."""
    readiness.watch("lnd", meter.lnd.get_info)
    readiness.watch_peer("settlement", meter.settlement_channel)
    if meter.matcher_channel is not None:
        readiness.watch_peer("matcher", meter.matcher_channel)
    readiness.after("started", meter.ready)
    hub = parse_node_address(settings.hub) if settings.network_mode == "hub" else None
    if hub is not None:
        readiness.watch("hub-channel", active_channel_with(meter.lnd, hub[0]))


def active_channel_with(lnd: LightningNode, peer: str) -> Check:
    """A check that ``lnd`` has an active channel with ``peer`` (one that can carry payments now)."""

    async def check() -> None:
        if not await lnd.list_channels(active_only=True, peer=peer):
            raise NotMet(f"no active channel with {peer[:16]}")

    return check


def lnd_client(s: MeterSettings) -> LndClient:
    return LndClient(LndConnection(s.meter_id, s.lnd_rpcserver, s.lnd_tls_cert, s.lnd_macaroon))


async def main(stop: asyncio.Event) -> None:
    settings = load_settings(MeterSettings, "meter")
    configure_logging(settings.log_level, json=settings.log_json, service=f"meter:{settings.meter_id}")
    app = await start_meter(settings, lnd_client(settings))
    failed = asyncio.create_task(app.meter.failed.wait())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({failed, stopped}, return_when=asyncio.FIRST_COMPLETED)
    failed.cancel()
    stopped.cancel()
    await app.stop()
    if app.meter.fatal is not None:
        raise RuntimeError(f"meter {settings.meter_id} could not start: {app.meter.fatal}")

