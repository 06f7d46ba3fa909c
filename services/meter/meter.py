"""The meter: its parts and background tasks, wired together.

Startup: key, database and source are loaded by :meth:`Meter.open`; :meth:`Meter.start`
then (in the background) waits for its LND node, registers with settlement (retrying
until it answers), resumes its registers and sequence number, starts the tick loop,
the reading sender, the contract poll and the balance cache, opens its hub channel
if it has none, and only then starts trading (a consumer must be able to pay before
it contracts).

Each seam has its module: startup's steps :mod:`.startup`, the clock, simulation and tick
:mod:`.metering`, the background tasks :mod:`.tasks`, when to trade :mod:`.order_windows`,
when the relay may let usage flow :mod:`.relay_control`. The contract desk
(:mod:`.contract_desk`) and the billing desk (:mod:`.billing`) share the meter's parts and see
the meter itself only through :class:`.parts.MeterState`.
"""

from __future__ import annotations

import asyncio

import grpc
import structlog

from p2pep.identity import Identity
from p2pep.metering.contract_book import ContractBook, Party
from p2pep.metering.profiles import WMS_PER_WH
from p2pep.metering.registers import Registers
from p2pep.metering.relay import Relay, RelayTransition
from p2pep.metering.signing import MeterKey
from p2pep.metering.simulation import MeterSimulation
from p2pep.metering.sources import FlowTimeline
from p2pep.pbconv import now_ms
from p2pep.servicekit.channels import channel
from p2pep.servicekit.tls import service_tls
from p2pep.settings.meter import MeterSettings
from p2pep.v1 import matcher_pb2_grpc, meter_pb2, settlement_pb2, settlement_pb2_grpc
from services.meter import startup
from services.meter.billing import Billing
from services.meter.contract_desk import ContractDesk
from services.meter.household_orders import HouseholdOrders
from services.meter.lightning import BalanceCache, LightningNode, Stopping, wait_node_ready
from services.meter.metering import Metering
from services.meter.order_windows import OrderWindows
from services.meter.parts import MeterParts
from services.meter.relay_control import RelayControl
from services.meter.sender import ReadingSender
from services.meter.sources import build_timeline
from services.meter.store import MeterStore
from services.meter.tasks import MeterTasks
from services.meter.trader import Trader

log = structlog.get_logger("meter")

INVOICE_WATCH_RETRY_S = 2.0  # a broken invoice stream (lnd restarting) is opened again after this


class Meter:
    def __init__(
        self,
        settings: MeterSettings,
        store: MeterStore,
        key: MeterKey,
        lnd: LightningNode,
        timeline: FlowTimeline,
        book: ContractBook,
    ) -> None:
        self.s = settings
        self.store = store
        self.key = key
        self.lnd = lnd
        self.timeline = timeline
        self.book = book
        self.node_pubkey = ""
        self.address = ""
        self.ready = asyncio.Event()
        self.tasks = MeterTasks()
        self._stop = asyncio.Event()
        tls = service_tls(settings, Identity("meter", settings.meter_id))
        self._settlement_ch = channel(settings.settlement_target, peer="settlement", tls=tls)
        self.settlement = settlement_pb2_grpc.SettlementServiceStub(self._settlement_ch)
        self._matcher_ch = channel(settings.matcher_target, peer="matcher", tls=tls) if settings.matcher_target else None
        self.balances = BalanceCache(lnd, settings.meter_id)
        self.sender = ReadingSender(store, lambda: self.settlement, key.pubkey_hex)
        self.trader: Trader | None = None
        self.windows: OrderWindows | None = None
        if self._matcher_ch is not None:
            self.trader = Trader(settings, store, book, matcher_pb2_grpc.MatcherServiceStub(self._matcher_ch),
                                 self.expected_wms)
            self.windows = OrderWindows(self.trader, store, settings.window_ms)
        self.household = HouseholdOrders(
            settings, store, matcher_pb2_grpc.MatcherServiceStub(self._matcher_ch) if self._matcher_ch else None)
        parts = MeterParts(settings, store, book, key, lnd, self.settlement, self.trader, self.household)
        self.contracts = ContractDesk(parts, self)
        self.billing = Billing(parts, self, self.contracts)
        self.relay_control = RelayControl(book, self.changed)
        self.metering: Metering | None = None
        """Set once, at startup, when the meter knows where it left off."""
        self.first_contract_import_wh: int | None = None
        self._changed = asyncio.Event()
        self._stopping = False

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    async def open(cls, settings: MeterSettings, lnd: LightningNode) -> Meter:
        if settings.key_path is None or not settings.db_path:  # a default under its state folder
            settings.state_folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = MeterKey.load_or_create(settings.key_file)
        store = await MeterStore.open(settings.db_file, settings.meter_id)
        book = ContractBook(await store.contracts())
        timeline = build_timeline(settings)
        m = cls(settings, store, key, lnd, timeline, book)
        m.first_contract_import_wh = await store.get("first_contract_import_wh")
        await m.sender.start()
        log.info("meter opened", meter_id=settings.meter_id, role=settings.role, pubkey=key.pubkey_hex,
                 contracts=len(book), unacked=m.sender.size)
        return m

    def start(self, address: str) -> None:
        """Start in the background; :attr:`ready` is set once the meter is ticking, and
        ``tasks.failed`` if it cannot start."""
        self.address = address
        self.tasks.spawn("startup", self._startup())

    @property
    def failed(self) -> asyncio.Event:
        return self.tasks.failed

    @property
    def settlement_channel(self) -> grpc.aio.Channel:
        return self._settlement_ch

    @property
    def matcher_channel(self) -> grpc.aio.Channel | None:
        return self._matcher_ch

    @property
    def fatal(self) -> BaseException | None:
        return self.tasks.fatal

    # -- startup (the steps: services.meter.startup) ------------------------------------------------

    async def _startup(self) -> None:
        s = self.s
        self.tasks.spawn("balances", self._refresh_forever())
        self.node_pubkey = await wait_node_ready(self.lnd, self._stop, s.meter_id)
        self.tasks.spawn("invoice-watch", self.billing.watch_invoices(retry_s=INVOICE_WATCH_RETRY_S))
        last_seq = await startup.register(self.settlement, settlement_pb2.RegisterMeterRequest(
            meter_id=s.meter_id, pubkey=self.key.pubkey_hex, node_pubkey=self.node_pubkey,
            address=self.address, role=s.role, node_address=s.lnd_p2p,
            location=settlement_pb2.Location(latitude=s.lat, longitude=s.lon),
        ), self._sleep_unless_stopped)
        await self._resume(last_seq)
        # A baseline reading before anything can be contracted: settlement measures energy
        # as the change between two readings, so whatever the first reading it sees holds
        # is nobody's; taken now (relay blocked, no contract yet) that is nothing.
        await self.tick()
        self.tasks.spawn("sender", self.sender.run())
        assert self.metering is not None
        self.tasks.spawn("ticks", self.metering.run_forever())
        self.tasks.spawn("contract-poll", self.contracts.poll_forever())
        self.ready.set()
        log.info("meter running", meter_id=s.meter_id, node=self.node_pubkey, seq=self.sim_registers().seq,
                 sim_time=self.sim_time_iso())
        if s.network_mode == "hub" and s.hub:
            await startup.ensure_hub_channel(self.lnd, s, self._sleep_unless_stopped)
        if self.trader is not None and self.windows is not None:
            self.tasks.spawn("match-events", self.trader.follow_events())
            await self.windows.place(self.metering.sim.now_ms)

    async def _sleep_unless_stopped(self, delay: float) -> None:
        """A retry's wait, cut short (with :class:`Stopping`) when the meter is asked to stop."""
        try:
            await asyncio.wait_for(self._stop.wait(), delay)
        except TimeoutError:
            return
        raise Stopping("stopped while waiting to retry")

    async def _resume(self, settlement_last_seq: int) -> None:
        """Registers, clock and simulation from where the meter (or settlement) left off."""
        snap = await startup.resume_registers(self.store, self.s.meter_id, settlement_last_seq,
                                              lambda: self.meter_info(self.s.meter_id))
        self.metering = await Metering.resume(
            self.s, self.timeline, snap, book=self.book, key=self.key, store=self.store, sender=self.sender,
            relay_control=self.relay_control, tasks=self.tasks, windows=self.windows, changed=self.changed)

    async def meter_info(self, meter_id: str) -> settlement_pb2.MeterInfo | None:
        return await startup.meter_info(self.settlement, meter_id)

    @property
    def leaving(self) -> bool:
        return self._stop.is_set()
    # -- the measurement (services.meter.metering) ------------------------------------------------------

    @property
    def sim(self) -> MeterSimulation | None:
        return self.metering.sim if self.metering is not None else None

    def sim_registers(self) -> Registers:
        assert self.metering is not None
        return self.metering.registers

    def sim_time_iso(self) -> str:
        return self.metering.sim_time_iso() if self.metering is not None else ""

    def expected_wms(self, t0_ms: int, t1_ms: int) -> tuple[int, int]:
        """(import, export) W·ms the source says flow in ``[t0, t1)`` (relay ignored)."""
        return self.timeline.energy_wms_between(t0_ms, t1_ms)

    @property
    def import_since_first_contract_wh(self) -> int:
        if self.metering is None or self.first_contract_import_wh is None:
            return 0
        return self.metering.registers.import_wh - self.first_contract_import_wh

    async def note_consumer_contract(self) -> None:
        """The first contract as consumer fixes the baseline of "imported under contracts"."""
        if self.first_contract_import_wh is None and self.metering is not None:
            self.first_contract_import_wh = self.metering.registers.import_wh
            await self.store.put("first_contract_import_wh", self.first_contract_import_wh)

    async def tick(self, *, final: bool = False) -> None:
        assert self.metering is not None
        await self.metering.tick(final=final)

    # -- the relay (services.meter.relay_control) ---------------------------------------------------

    @property
    def relay(self) -> Relay:
        return self.relay_control.relay

    @property
    def relay_changes(self) -> int:
        return self.relay_control.changes

    def evaluate_relay(self) -> RelayTransition | None:
        if self.metering is None or self._stopping:
            return None
        return self.metering.evaluate_relay()

    def payment_failed(self, detail: str) -> None:
        self.relay_control.payment_failed(self.sim.now_ms if self.sim is not None else None, detail)

    def contract_activated(self, signed_ms: int) -> None:
        self.relay_control.contract_activated(signed_ms)
        self.evaluate_relay()

    # -- status ---------------------------------------------------------------------------------------------

    def changed(self) -> None:
        """Wake every status watcher (each waits on the event current when it started)."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_changed(self, timeout_s: float) -> None:
        try:
            await asyncio.wait_for(self._changed.wait(), timeout_s)
        except TimeoutError:
            pass

    def status(self) -> meter_pb2.MeterStatus:
        b = self.balances.value
        st = meter_pb2.MeterStatus(
            meter_id=self.s.meter_id, role=self.s.role, relay_energized=self.relay.energized,
            relay_reason=self.relay.reason.value, relay_changes=self.relay_changes,
            active_contracts=sum(1 for v in self.book.all() if v.active),
            wallet_sat=b.wallet_sat, channel_local_sat=b.channel_local_sat, channel_remote_sat=b.channel_remote_sat,
            paid_msat=self.book.paid_msat_total(Party.CONSUMER), earned_msat=self.book.paid_msat_total(Party.SUPPLIER),
            unacked_readings=self.sender.size, node_pubkey=self.node_pubkey,
            clock_accel=self.s.accel, latitude=self.s.lat, longitude=self.s.lon,
            price_msat_per_kwh=self.s.price_msat_per_kwh, tz=self.s.tz,
        )
        st.real_time.FromMilliseconds(now_ms())
        if self.sim is not None:
            regs = self.sim.registers
            imp_w, exp_w = self.timeline.power_w_at(self.sim.now_ms)
            st.seq, st.import_wh, st.export_wh = regs.seq, regs.import_wh, regs.export_wh
            st.sim_time.FromMilliseconds(self.sim.now_ms)
            st.power_w = imp_w - exp_w
            st.unmet_wh = self.sim.unserved_import_wms // WMS_PER_WH
        return st

    async def _refresh_forever(self) -> None:
        while True:
            try:
                await self.balances.refresh()
                await self.billing.check_invoices()
                self.changed()
            except Exception as e:  # noqa: BLE001 - lnd down for a moment: keep the last values
                log.debug("balance refresh failed", error=str(e))
            await asyncio.sleep(self.s.balance_refresh_s)

    # -- shutdown --------------------------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Leave gracefully: final reading, no new contracts (resting orders cancelled,
        SignContract refused), flush the outbox, end its contracts (settlement pays what
        was delivered, which needs this meter's gRPC server: it is stopped after this)."""
        self._stop.set()
        await self.tasks.cancel("startup", "orders", "match-events")
        if self.metering is not None:
            await self.metering.stop(self.tasks)
        if self.ready.is_set():
            try:
                await self.tick(final=True)
            except Exception:
                log.exception("final reading failed")
        self._stopping = True
        self.tasks.stopping()
        if not self.ready.is_set():
            return  # never registered: nothing was sent, signed or ordered
        if self.trader is not None:
            try:
                await asyncio.wait_for(self.trader.cancel_resting(), 5)
                await asyncio.wait_for(self.household.cancel_open(), 5)  # the household's own, too
            except (TimeoutError, grpc.aio.AioRpcError):
                log.info("resting orders not cancelled")
        flushed = await self.sender.flush(self.s.flush_timeout_s)
        log.info("outbox flushed" if flushed else "outbox not flushed", unacked=self.sender.size)
        await self.contracts.leave(self.s.leave_timeout_s)
        await self.sender.flush(min(1.0, self.s.flush_timeout_s))

    async def close(self) -> None:
        self._stop.set()
        self._stopping = True
        await self.tasks.cancel_all()
        await self._settlement_ch.close()
        if self._matcher_ch is not None:
            await self._matcher_ch.close()
        await self.store.close()
        await self.lnd.close()
