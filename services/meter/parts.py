"""The seams of a meter: what its desks share, and the little they may ask of the meter.

The meter (:class:`services.meter.meter.Meter`) wires a contract desk (signing, contract
updates, leaving) and a billing desk (invoices as supplier, payments as consumer). Both get
the same :class:`MeterParts`, built once at construction, and see the meter only through
:class:`MeterState`: whether it runs, its node, and the events they report (a contract became
active, a payment failed, something changed). Neither imports the meter: no cycle, and every
reach back into it is listed here.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from p2pep.metering.contract_book import ContractBook
from p2pep.metering.signing import MeterKey
from p2pep.settings.meter import MeterSettings
from p2pep.v1 import settlement_pb2, settlement_pb2_grpc
from services.meter.lightning import LightningNode
from services.meter.store import MeterStore

if TYPE_CHECKING:
    from services.meter.household_orders import HouseholdOrders
    from services.meter.trader import Trader


@dataclass(frozen=True)
class MeterParts:
    """Everything a desk works with, all there from construction on."""

    s: MeterSettings
    store: MeterStore
    book: ContractBook
    key: MeterKey
    lnd: LightningNode
    settlement: settlement_pb2_grpc.SettlementServiceAsyncStub
    trader: Trader | None
    household: HouseholdOrders
    """The household's own orders from its app (they widen the signing price while open)."""


class MeterState(Protocol):
    """What a desk may read of the running meter, and tell it."""

    ready: asyncio.Event

    @property
    def node_pubkey(self) -> str: ...
    @property
    def leaving(self) -> bool: ...
    @property
    def import_since_first_contract_wh(self) -> int: ...

    async def meter_info(self, meter_id: str) -> settlement_pb2.MeterInfo | None: ...
    async def note_consumer_contract(self) -> None: ...
    def evaluate_relay(self) -> object: ...
    def contract_activated(self, signed_ms: int) -> None: ...
    def payment_failed(self, detail: str) -> None: ...
    def changed(self) -> None: ...
