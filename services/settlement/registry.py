"""The meters settlement knows: who they are, where they listen, how far their readings got.

A meter registers with its signing key, its lnd node, the address of its MeterService and
(optionally) its location, where it is installed; registering again with the same key updates
the rest (a location left out keeps the one told before), another key for the same id is
refused.
Every field is checked for its exact form first (:mod:`p2pep.registration`): settlement later
dials ``address`` (only through :attr:`MeterLink.stub`, the one place it dials a meter) and
pays ``node_pubkey``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import structlog

from p2pep.metering.signing import is_valid_pubkey
from p2pep.registration import check_address, check_location, check_meter_id, check_node_pubkey, check_role
from p2pep.servicekit.errors import InvalidArgument, PermissionDenied
from p2pep.settling.validation import StreamHead
from services.settlement.live import MeterLink
from services.settlement.store import MeterRow, Store

log = structlog.get_logger("settlement")


class MeterRegistry:
    def __init__(self, store: Store, dial: Callable[[str, str], grpc.aio.Channel] | None = None) -> None:
        self.store = store
        self.dial = dial  # (address, meter id) -> a channel to that meter (mutual TLS)
        self._links: dict[str, MeterLink] = {}

    async def load(self) -> None:
        for row in await self.store.meters():
            last = await self.store.last_reading(row.meter_id)
            self._links[row.meter_id] = MeterLink(row, StreamHead.of(last) if last else None,
                                                 dial=self.dial)

    def get(self, meter_id: str) -> MeterLink | None:
        return self._links.get(meter_id)

    def __getitem__(self, meter_id: str) -> MeterLink:
        return self._links[meter_id]

    def __contains__(self, meter_id: object) -> bool:
        return meter_id in self._links

    def __len__(self) -> int:
        return len(self._links)

    def __iter__(self) -> Iterator[str]:
        return iter(self._links)

    def values(self) -> list[MeterLink]:
        return list(self._links.values())

    def node_of(self, meter_id: str) -> str:
        link = self._links.get(meter_id)
        return link.row.node_pubkey if link else ""

    async def register(self, meter_id: str, pubkey: str, node_pubkey: str, address: str, role: str,
                       node_address: str = "", location: tuple[float, float] | None = None) -> int:
        """Register (or re-register) a meter; returns the last seq settlement holds of it.
        ``location``: (latitude, longitude) in degrees; None: not told (the stored one stays)."""
        check_meter_id(meter_id)
        if not is_valid_pubkey(pubkey):
            raise InvalidArgument("pubkey", "must be a 33-byte compressed secp256k1 key in hex")
        node_pubkey = check_node_pubkey(node_pubkey)
        check_address(address, "address")
        check_address(node_address, "node_address", required=False)
        check_role(role)
        if location is not None:
            location = check_location(*location)
        link = self._links.get(meter_id)
        if link is not None and link.row.pubkey != pubkey:
            raise PermissionDenied("pubkey", f"meter {meter_id} is registered with another key")
        lat, lon = location if location is not None else (None, None)
        if location is None and link is not None:  # not told: the place told before stays
            lat, lon = link.row.latitude, link.row.longitude
        row = MeterRow(meter_id, pubkey, node_pubkey, address, role, node_address, lat, lon)
        await self.store.upsert_meter(row)
        if link is None:
            link = self._links[meter_id] = MeterLink(row, dial=self.dial)
        else:  # liveness stays as it was: only an accepted new reading refreshes it
            await link.reconnect(row)
        if self.dial is not None:
            link.connect()
        log.info("meter registered", meter_id=meter_id, address=address, role=role, location=location)
        return link.head.seq if link.head else 0

    async def close(self) -> None:
        for link in self._links.values():
            await link.close()
