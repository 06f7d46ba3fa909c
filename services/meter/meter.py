"""The meter: its clock, registers, relay and background tasks, wired together.

Startup: key, database and source are loaded by :meth:`Meter.open`; :meth:`Meter.start`
then (in the background) waits for its LND node, registers with settlement (retrying
until it answers), resumes its registers and sequence number, starts the tick loop,
the reading sender, the contract poll and the balance cache, opens its hub channel
if it has none, and only then starts trading (a consumer must be able to pay before
it contracts).

Every tick: advance the simulation (import flows only while the relay is energized),
attribute the import to contracts, take and sign a reading, write it to the outbox
(with the registers, one transaction) *before* sending it, re-evaluate the relay,
and place orders when a window begins.

When the relay may let usage flow is :mod:`.relay_control`'s to decide. The contract desk
(:mod:`.contracts`) and the billing desk (:mod:`.billing`) share the meter's parts and see
the meter itself only through :class:`.parts.MeterState`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import structlog

from p2pep.metering.clock import SimClock
from p2pep.metering.contract_book import ContractBook, Party
from p2pep.metering.ordering import window_index
from p2pep.metering.profiles import WMS_PER_WH
from p2pep.metering.registers import Registers, RegisterSnapshot
from p2pep.metering.relay import Relay, RelayReason, RelayTransition
from p2pep.metering.signing import MeterKey
from p2pep.metering.simulation import MeterSimulation
from p2pep.metering.sources import FlowTimeline
from p2pep.pbconv import now_ms
from p2pep.servicekit.channels import channel
from p2pep.servicekit.supervise import Backoff, supervised
from p2pep.settings.meter import MeterSettings, parse_node_address
from p2pep.v1 import matcher_pb2_grpc, meter_pb2, settlement_pb2, settlement_pb2_grpc
from services.meter import metrics
from services.meter.billing import Billing
from services.meter.contracts import ContractDesk
from services.meter.lightning import (
    BalanceCache,
    LightningNode,
    Stopping,
    ensure_channel,
    wait_node_ready,
)
from services.meter.parts import MeterParts
from services.meter.relay_control import RelayControl
from services.meter.sender import ReadingSender
from services.meter.sources import build_timeline
from services.meter.store import MeterStore
from services.meter.trader import Trader

log = structlog.get_logger("meter")

ESSENTIAL_TASKS = {"startup", "ticks", "sender", "contract-poll"}
"""If one of these fails the meter cannot do its job: the process exits with an error."""
RETRY_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL,
               grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED}


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
        self.fatal: BaseException | None = None
        self.failed = asyncio.Event()
        """Set when the meter cannot start (e.g. settlement refuses its registration)."""
        self._stop = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._settlement_ch = channel(settings.settlement_target)
        self.settlement = settlement_pb2_grpc.SettlementServiceStub(self._settlement_ch)
        self._matcher_ch = channel(settings.matcher_target) if settings.matcher_target else None
        self.balances = BalanceCache(lnd)
        self.sender = ReadingSender(store, lambda: self.settlement, key.pubkey_hex)
        self.trader: Trader | None = None
        if self._matcher_ch is not None:
            self.trader = Trader(settings, store, book, matcher_pb2_grpc.MatcherServiceStub(self._matcher_ch),
                                 self.expected_wms)
        parts = MeterParts(settings, store, book, key, lnd, self.settlement, self.trader)
        self.contracts = ContractDesk(parts, self)
        self.billing = Billing(parts, self, self.contracts)
        # set when started
        self.clock: SimClock | None = None
        self.sim: MeterSimulation | None = None
        self.relay_control = RelayControl(book, self.changed)
        self.first_contract_import_wh: int | None = None
        self._trigger = -1
        self._prepared_day: Any = None
        self._changed = asyncio.Event()
        self._tick_lock = asyncio.Lock()
        self._stopping = False

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    async def open(cls, settings: MeterSettings, lnd: LightningNode) -> Meter:
        key = MeterKey.load_or_create(settings.key_path)
        store = await MeterStore.open(settings.db_path, settings.meter_id)
        book = ContractBook(await store.contracts())
        timeline = build_timeline(settings)
        m = cls(settings, store, key, lnd, timeline, book)
        m.first_contract_import_wh = await store.get("first_contract_import_wh")
        await m.sender.start()
        log.info("meter opened", meter_id=settings.meter_id, role=settings.role, pubkey=key.pubkey_hex,
                 contracts=len(book), unacked=m.sender.size)
        return m

    def start(self, address: str) -> None:
        """Start in the background; :attr:`ready` is set once the meter is ticking."""
        self.address = address
        self._spawn("startup", self._startup())

    def _spawn(self, name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"meter:{name}")
        self._tasks[name] = task
        task.add_done_callback(lambda t: self._done(name, t))
        return task

    def _done(self, name: str, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or self._stopping:
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, Stopping):
            log.error("meter task failed", task=name, error=repr(exc), exc_info=exc)
            if name in ESSENTIAL_TASKS:
                self.fatal = exc
                self.failed.set()

    # -- startup ------------------------------------------------------------------------------------

    async def _startup(self) -> None:
        s = self.s
        self._spawn("balances", self._refresh_forever())
        self.node_pubkey = await wait_node_ready(self.lnd, self._stop, s.meter_id)
        last_seq = await self._register()
        await self._resume(last_seq)
        # A baseline reading before anything can be contracted: settlement measures energy
        # as the change between two readings, so whatever the first reading it sees holds
        # is nobody's; taken now (relay blocked, no contract yet) that is nothing.
        await self.tick()
        self._spawn("sender", self.sender.run())
        self._spawn("ticks", self._tick_forever())
        self._spawn("contract-poll", self.contracts.poll_forever())
        self.ready.set()
        log.info("meter running", meter_id=s.meter_id, node=self.node_pubkey, seq=self.sim_registers().seq,
                 sim_time=self.sim_time_iso())
        if s.network_mode == "hub" and s.hub:
            await self._ensure_hub_channel()
        if self.trader is not None:
            self._spawn("match-events", self.trader.follow_events())
            await self._place_orders(first=True)

    async def _register(self) -> int:
        req = settlement_pb2.RegisterMeterRequest(
            meter_id=self.s.meter_id, pubkey=self.key.pubkey_hex, node_pubkey=self.node_pubkey,
            address=self.address, role=self.s.role, node_address=self.s.lnd_p2p,
        )

        async def register() -> int:
            try:
                resp = await self.settlement.RegisterMeter(req, timeout=5)
            except grpc.aio.AioRpcError as e:
                if e.code() not in RETRY_CODES:
                    raise RuntimeError(f"settlement refused registration: {e.code().name}: {e.details()}") from e
                raise
            log.info("registered with settlement", address=self.address, last_seq=resp.last_seq)
            return int(resp.last_seq)

        def waiting(n: int, e: Exception) -> None:
            log.info("waiting for settlement", code=e.code().name if isinstance(e, grpc.aio.AioRpcError) else str(e))

        return await supervised(register, on_failure=waiting, retry_if=lambda e: isinstance(e, grpc.aio.AioRpcError),
                                backoff=Backoff(0.2, 3.0), sleep=self._sleep_unless_stopped)

    async def _sleep_unless_stopped(self, delay: float) -> None:
        """A retry's wait, cut short (with :class:`Stopping`) when the meter is asked to stop."""
        try:
            await asyncio.wait_for(self._stop.wait(), delay)
        except TimeoutError:
            return
        raise Stopping("stopped while waiting to retry")

    async def _resume(self, settlement_last_seq: int) -> None:
        """Registers from the database; a fresh database resumes from what settlement
        stored (never reuse a seq, never run a register backwards)."""
        snap = await self.store.registers()
        if snap is None:
            snap = RegisterSnapshot(self.s.meter_id)
            if settlement_last_seq:
                info = await self.meter_info(self.s.meter_id)
                snap = RegisterSnapshot(self.s.meter_id, settlement_last_seq,
                                        info.import_wh if info else 0, info.export_wh if info else 0)
                log.warning("fresh database: resuming from settlement", seq=snap.seq, import_wh=snap.import_wh,
                            export_wh=snap.export_wh)
        elif snap.seq < settlement_last_seq:
            log.warning("settlement has a later seq than the database", db_seq=snap.seq, settlement=settlement_last_seq)
            snap = RegisterSnapshot(snap.meter_id, settlement_last_seq, snap.import_wh, snap.export_wh,
                                    snap.import_remainder_wms, snap.export_remainder_wms, snap.last_timestamp_ms)
        start_ms = int(self.s.sim_start.timestamp() * 1000) if self.s.sim_start else now_ms()
        if snap.last_timestamp_ms is not None:
            start_ms = max(start_ms, snap.last_timestamp_ms)
        day = self.timeline.day_of(start_ms)
        await asyncio.to_thread(self.timeline.prepare, day)  # models run here, not per tick
        await asyncio.to_thread(self.timeline.prepare, day + timedelta(days=1))
        self._prepared_day = day
        registers = Registers(snap)
        self.clock = SimClock(start_ms, time.monotonic_ns(), self.s.accel)
        self.sim = MeterSimulation(self.timeline, registers, start_ms)
        self.relay_control.start(start_ms)
        await self.store.save_registers(registers.snapshot())

    async def meter_info(self, meter_id: str) -> settlement_pb2.MeterInfo | None:
        resp = await self.settlement.ListMeters(settlement_pb2.ListMetersRequest(), timeout=5)
        return next((m for m in resp.meters if m.meter_id == meter_id), None)

    async def _ensure_hub_channel(self) -> None:
        parsed = parse_node_address(self.s.hub)
        assert parsed is not None
        hub_pubkey, hub_host = parsed

        async def ensure() -> None:
            await ensure_channel(self.lnd, hub_pubkey, hub_host, need_sat=0, open_sat=self.s.channel_sat,
                                 push_sat=self.s.channel_sat // 2, wait_s=self.s.channel_wait_s, open_if_any=False)

        def not_ready(n: int, e: Exception) -> None:  # lnd errors, wallet not funded yet...
            log.warning("hub channel not ready", hub=hub_pubkey, error=str(e))

        await supervised(ensure, on_failure=not_ready, backoff=Backoff(1.0, 10.0), sleep=self._sleep_unless_stopped)

    @property
    def leaving(self) -> bool:
        return self._stop.is_set()

    # -- the simulation -------------------------------------------------------------------------------

    def sim_registers(self) -> Registers:
        assert self.sim is not None
        return self.sim.registers

    def now_sim_ms(self) -> int:
        assert self.clock is not None
        return self.clock.sim_ms(time.monotonic_ns())

    def sim_time_iso(self) -> str:
        if self.sim is None:
            return ""
        return datetime.fromtimestamp(self.sim.now_ms / 1000, UTC).astimezone(self.timeline.tz).isoformat()

    def expected_wms(self, t0_ms: int, t1_ms: int) -> tuple[int, int]:
        """(import, export) W·ms the source says flow in ``[t0, t1)`` (relay ignored)."""
        return self.timeline.energy_wms_between(t0_ms, t1_ms)

    @property
    def import_since_first_contract_wh(self) -> int:
        if self.sim is None or self.first_contract_import_wh is None:
            return 0
        return self.sim.registers.import_wh - self.first_contract_import_wh

    async def note_consumer_contract(self) -> None:
        """The first contract as consumer fixes the baseline of "imported under contracts"."""
        if self.first_contract_import_wh is None and self.sim is not None:
            self.first_contract_import_wh = self.sim.registers.import_wh
            await self.store.put("first_contract_import_wh", self.first_contract_import_wh)

    async def _tick_forever(self) -> None:
        loop = asyncio.get_running_loop()
        next_t = loop.time()
        while True:
            next_t += self.s.tick_s
            delay = next_t - loop.time()
            if delay < -5 * self.s.tick_s:  # far behind (loop stalled): do not try to catch up
                next_t = loop.time()
            await asyncio.sleep(max(0.0, delay))
            await self.tick()

    async def tick(self, *, final: bool = False) -> None:
        """One metering step (see the module docstring)."""
        async with self._tick_lock:
            assert self.sim is not None and self.clock is not None
            now = self.now_sim_ms()
            self._prepare_ahead(now)
            regs = self.sim.registers
            before = regs.import_wh
            self.sim.advance(now, import_allowed=self.relay.energized)
            self.book.attribute_import(regs.import_wh - before)
            signed = self.key.sign_reading(regs.read(now))
            attributed = {v.contract_id: v.attributed_wh for v in self.book.of(Party.CONSUMER)}
            await self.store.save_tick(regs.snapshot(), signed, attributed)
            metrics.READINGS.inc()
            metrics.UNMET_WH.set(self.sim.unserved_import_wms // WMS_PER_WH)
            self.sender.notify()
            if final:
                self.block_relay(RelayReason.MANUAL_OFF, "meter leaving")
            else:
                self.evaluate_relay()
                self._maybe_trade(now)
            self.changed()

    def _prepare_ahead(self, now_ms: int) -> None:
        day = self.timeline.day_of(now_ms)
        if day != self._prepared_day:
            self._prepared_day = day
            self._spawn(f"prepare-{day}", asyncio.to_thread(self.timeline.prepare, day + timedelta(days=1)))

    # -- the relay (services.meter.relay_control) ---------------------------------------------------

    @property
    def relay(self) -> Relay:
        return self.relay_control.relay

    @property
    def relay_changes(self) -> int:
        return self.relay_control.changes

    def evaluate_relay(self) -> RelayTransition | None:
        if self.sim is None or self._stopping:
            return None
        return self.relay_control.evaluate(self.sim.now_ms, self.sim.demand(self.s.tick_sim_ms).energy_wh)

    def block_relay(self, reason: RelayReason, detail: str) -> None:
        if self.sim is not None:
            self.relay_control.block(self.sim.now_ms, reason, detail)

    def payment_failed(self, detail: str) -> None:
        self.relay_control.payment_failed(self.sim.now_ms if self.sim is not None else None, detail)

    def contract_activated(self, signed_ms: int) -> None:
        self.relay_control.contract_activated(signed_ms)
        self.evaluate_relay()

    # -- trading ---------------------------------------------------------------------------------------

    def _lead_ms(self) -> int:
        """Orders go out this much simulated time before a window begins, so the
        contracts are signed and active when it does."""
        return self.s.window_ms // 10

    def _maybe_trade(self, now: int) -> None:
        if self.trader is None or self._trigger < 0:
            return
        k = window_index(now + self._lead_ms(), self.s.window_ms)
        if k != self._trigger and "orders" not in self._tasks:
            self._trigger = k
            self._spawn("orders", self._place_orders())

    async def _place_orders(self, first: bool = False) -> None:
        assert self.trader is not None and self.sim is not None
        try:
            now = self.sim.now_ms
            k = window_index(now + self._lead_ms(), self.s.window_ms)
            self._trigger = k
            until = (k + 1) * self.s.window_ms - self._lead_ms()
            await self.trader.place_window(k, now, until)
            await self.store.prune_orders(now_ms() - 3_600_000)
        except grpc.aio.AioRpcError as e:
            log.warning("orders not placed", code=e.code().name, detail=e.details())
        finally:
            self._tasks.pop("orders", None)

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
        )
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
        for name in ("startup", "orders", "match-events", "ticks"):
            task = self._tasks.get(name)
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.ready.is_set():
            try:
                await self.tick(final=True)
            except Exception:
                log.exception("final reading failed")
        self._stopping = True
        if not self.ready.is_set():
            return  # never registered: nothing was sent, signed or ordered
        if self.trader is not None:
            try:
                await asyncio.wait_for(self.trader.cancel_resting(), 5)
            except (TimeoutError, grpc.aio.AioRpcError):
                log.info("resting orders not cancelled")
        flushed = await self.sender.flush(self.s.flush_timeout_s)
        log.info("outbox flushed" if flushed else "outbox not flushed", unacked=self.sender.size)
        await self.contracts.leave(self.s.leave_timeout_s)
        await self.sender.flush(min(1.0, self.s.flush_timeout_s))

    async def close(self) -> None:
        self._stop.set()
        self._stopping = True
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        await self._settlement_ch.close()
        if self._matcher_ch is not None:
            await self._matcher_ch.close()
        await self.store.close()
        await self.lnd.close()
