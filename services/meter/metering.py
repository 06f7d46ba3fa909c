"""The meter's running measurement: its clock, its simulation (and so its registers), and the tick.

Built once, by :meth:`Metering.resume`, when the meter knows where it left off (its registers
from its database, or settlement's; see :mod:`.startup`); until then the meter has none, so
nothing before it can tick, read registers or judge the relay.

Every tick, under one lock (the periodic tick and the final one never interleave): advance the
simulation to now (import flows only while the relay is energized), attribute the import to
contracts, take and sign a reading, write it with the registers to the outbox (one
transaction) *before* the sender is woken, re-evaluate the relay, and start placing orders
when a window is near. Simulated days are prepared (the PV and load models run) a day ahead, in
a thread, never in the tick.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

from p2pep.metering.clock import SimClock
from p2pep.metering.contract_book import ContractBook, Party
from p2pep.metering.profiles import WMS_PER_WH
from p2pep.metering.registers import Registers, RegisterSnapshot
from p2pep.metering.relay import RelayReason, RelayTransition
from p2pep.metering.signing import MeterKey
from p2pep.metering.simulation import MeterSimulation
from p2pep.metering.sources import FlowTimeline
from p2pep.pbconv import now_ms
from p2pep.settings.meter import MeterSettings
from services.meter import metrics
from services.meter.order_windows import OrderWindows
from services.meter.relay_control import RelayControl
from services.meter.sender import ReadingSender
from services.meter.store import MeterStore
from services.meter.tasks import MeterTasks


class Metering:
    def __init__(self, s: MeterSettings, timeline: FlowTimeline, clock: SimClock, sim: MeterSimulation,
                 prepared_day: date, *, book: ContractBook, key: MeterKey, store: MeterStore,
                 sender: ReadingSender, relay_control: RelayControl, tasks: MeterTasks,
                 windows: OrderWindows | None, changed: Callable[[], None]) -> None:
        self.s = s
        self.timeline = timeline
        self.clock = clock
        self.sim = sim
        self._prepared_day = prepared_day
        self.book = book
        self.key = key
        self.store = store
        self.sender = sender
        self.relay_control = relay_control
        self.tasks = tasks
        self.windows = windows
        self.changed = changed
        self._lock = asyncio.Lock()

    @classmethod
    async def resume(cls, s: MeterSettings, timeline: FlowTimeline, snap: RegisterSnapshot, *, book: ContractBook,
                     key: MeterKey, store: MeterStore, sender: ReadingSender, relay_control: RelayControl,
                     tasks: MeterTasks, windows: OrderWindows | None, changed: Callable[[], None]) -> Metering:
        """Go on from ``snap``: simulated time never runs backwards (it starts at the later of
        the configured start, or now, and the last reading)."""
        start_ms = int(s.sim_start.timestamp() * 1000) if s.sim_start else now_ms()
        if snap.last_timestamp_ms is not None:
            start_ms = max(start_ms, snap.last_timestamp_ms)
        day = timeline.day_of(start_ms)
        await asyncio.to_thread(timeline.prepare, day)  # models run here, not per tick
        await asyncio.to_thread(timeline.prepare, day + timedelta(days=1))
        registers = Registers(snap)
        clock = SimClock(start_ms, time.monotonic_ns(), s.accel)
        sim = MeterSimulation(timeline, registers, start_ms)
        relay_control.start(start_ms)
        await store.save_registers(registers.snapshot())
        return cls(s, timeline, clock, sim, day, book=book, key=key, store=store, sender=sender,
                   relay_control=relay_control, tasks=tasks, windows=windows, changed=changed)

    @property
    def registers(self) -> Registers:
        return self.sim.registers

    def now_sim_ms(self) -> int:
        return self.clock.sim_ms(time.monotonic_ns())

    def sim_time_iso(self) -> str:
        return datetime.fromtimestamp(self.sim.now_ms / 1000, UTC).astimezone(self.timeline.tz).isoformat()

    def next_step_wh(self) -> int:
        """The import the next tick would take at the source's power (the nominal step)."""
        return self.sim.demand(self.s.tick_sim_ms).energy_wh

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        next_t = loop.time()
        while True:
            next_t += self.s.tick_s
            delay = next_t - loop.time()
            if delay < -5 * self.s.tick_s:  # far behind (loop stalled): do not try to catch up
                next_t = loop.time()
            await asyncio.sleep(max(0.0, delay))
            await self.tick()

    async def stop(self, tasks: MeterTasks, name: str = "ticks") -> None:
        """Stop the tick loop (the task ``name``) between two ticks, never inside one: a tick
        cancelled after it advanced the registers but before its reading was stored would
        leave a sequence number that no reading carries (the next tick takes the one after)."""
        async with self._lock:
            await tasks.cancel(name)

    async def tick(self, *, final: bool = False) -> None:
        """One metering step (see the module docstring)."""
        async with self._lock:
            now = self.now_sim_ms()
            self._prepare_ahead(now)
            regs = self.sim.registers
            before = regs.import_wh
            self.sim.advance(now, import_allowed=self.relay_control.relay.energized)
            self.book.attribute_import(regs.import_wh - before)
            signed = self.key.sign_reading(regs.read(now))
            attributed = {v.contract_id: v.attributed_wh for v in self.book.of(Party.CONSUMER)}
            await self.store.save_tick(regs.snapshot(), signed, attributed)
            metrics.READINGS.inc()
            metrics.UNMET_WH.set(self.sim.unserved_import_wms // WMS_PER_WH)
            metrics.IMPORT_WH.set(regs.import_wh)
            metrics.EXPORT_WH.set(regs.export_wh)
            metrics.SUPPLY_W.set(self.sim.supply_w())
            self.sender.notify()
            if final:
                self.block_relay(RelayReason.MANUAL_OFF, "meter leaving")
            else:
                self.evaluate_relay()
                if self.windows is not None and self.windows.due(now) and not self.tasks.running("orders"):
                    self.tasks.spawn("orders", self.windows.place(now))
            self.changed()

    def evaluate_relay(self) -> RelayTransition | None:
        demand = self.sim.demand(self.s.tick_sim_ms)
        metrics.DEMAND_W.set(demand.power_w)
        return self.relay_control.evaluate(self.sim.now_ms, demand.energy_wh)

    def block_relay(self, reason: RelayReason, detail: str) -> None:
        self.relay_control.block(self.sim.now_ms, reason, detail)

    def _prepare_ahead(self, now_ms: int) -> None:
        day = self.timeline.day_of(now_ms)
        if day != self._prepared_day:
            self._prepared_day = day
            self.tasks.spawn(f"prepare-{day}", asyncio.to_thread(self.timeline.prepare, day + timedelta(days=1)))
