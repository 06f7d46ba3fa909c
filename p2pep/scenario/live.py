"""The live view of a running scenario (``p2pep up``), drawn with rich.

:func:`snapshot` reads what the runner already knows (no I/O: the runner's watcher
polls the meters and settlement); :func:`render` draws it: a progress bar of the
simulated day, the meters (role, relay, kWh, power, sats), the contracts and the
latest payments, and the runner's last messages.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from p2pep.pbconv import ts_ms_or_none
from p2pep.v1 import meter_pb2, settlement_pb2

if TYPE_CHECKING:
    from p2pep.scenario.runner import ScenarioRunner

STATE_STYLE = {
    "ACTIVE": "green", "PROPOSED": "yellow", "COMPLETED": "cyan", "ENDED_EARLY": "blue",
    "DEFAULTED": "red", "REJECTED": "red",
}


BLOCKED_BECAUSE = {  # the relay's reason, in the few words a 100-column table has room for
    "NO_CONTRACT": "no contract", "INSUFFICIENT_POWER": "short of power", "INSUFFICIENT_ENERGY": "short of kWh",
    "NOT_PAID_UP": "not paid up", "PAYMENT_FAILED": "payment failed", "MANUAL_OFF": "switched off",
}


@dataclass
class View:
    scenario: str
    description: str
    phase: str
    real_elapsed_s: float
    sim_start_ms: int
    sim_now_ms: int
    sim_end_ms: int
    tz: str
    meters: Sequence[tuple[str, str, meter_pb2.MeterStatus | None, bool]] = field(default_factory=list)
    contracts: list[settlement_pb2.ContractRecord] = field(default_factory=list)
    payments: list[settlement_pb2.Payment] = field(default_factory=list)
    messages: list[tuple[float, str]] = field(default_factory=list)
    blocks_mined: int = 0
    urls: dict[str, str] = field(default_factory=dict)
    login: str = ""  # the console's demo operator: "name / password"
    accel: int = 1  # simulated seconds per real second
    real_now_ms: int = 0  # wall-clock ms at sim_now_ms (0: contract times are shown as they are)
    bounded: bool = True  # the run ends at the scenario's end (else: until Ctrl-C)

    def sim_of_real(self, real_ms: int) -> int:
        """A real (wall-clock) time, e.g. a contract's start, on the simulated clock the
        view shows: one clock per screen."""
        if not self.real_now_ms:
            return real_ms
        return self.sim_now_ms - (self.real_now_ms - real_ms) * self.accel


def snapshot(r: ScenarioRunner) -> View:
    now = time.monotonic()
    s = r.scenario
    running = r.phase == "running"
    meters = [(m.name, m.role, r.watcher.statuses.get(m.name),
               m.name in r.procs and r.procs[m.name].alive()) for m in s.meters]
    bounded = r.opts.until_end
    sim_now = r.clock.sim_ms(now) if running or r.clock.started else s.timing.sim_start_ms
    if bounded:
        sim_now = min(sim_now, s.timing.sim_end_ms)
    # the final books once collected (the report's): the last frame agrees with the summary
    contracts, payments = r.final_books if r.final_books is not None else (r.watcher.books.contracts,
                                                                          r.watcher.books.payments)
    return View(
        scenario=s.name, description=s.description, phase=r.phase, real_elapsed_s=now - r.t0,
        sim_start_ms=s.timing.sim_start_ms, sim_now_ms=sim_now,
        sim_end_ms=s.timing.sim_end_ms, tz=s.meters[0].tz if s.meters else "UTC", meters=meters,
        contracts=list(contracts), payments=list(payments),
        messages=list(r.messages)[-6:], blocks_mined=int(r.miner_stats.get("blocks", 0)),
        urls=r.web_urls() if running else {},
        login=f"{r.operator[0]} / {r.operator[1]}" if running else "",
        accel=s.timing.accel, real_now_ms=int(time.time() * 1000),
        bounded=bounded,
    )


def short_id(contract_id: str) -> str:
    """A contract id as the tables show it: the matcher's ids (``c-<matcher>-<seq, 10
    digits>``) share their first 14 characters, so the distinguishing trade number is kept."""
    parts = contract_id.split("-")
    if len(parts) == 3 and parts[0] == "c" and parts[2].isdigit():
        return f"c{int(parts[2])}"
    return contract_id if len(contract_id) <= 12 else "…" + contract_id[-11:]


def _clock(ms: int, tz: str) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=ZoneInfo(tz)).strftime("%H:%M")


def kwh(wh: int) -> str:
    """Wh as kWh with 2 decimals, in integer arithmetic."""
    sign = "-" if wh < 0 else ""
    wh = abs(wh)
    return f"{sign}{wh // 1000}.{(wh % 1000) // 10:02d}"


def sats(msat: int) -> str:
    return f"{msat // 1000:,}.{msat % 1000:03d}"


def _state(v: settlement_pb2.ContractState.ValueType) -> Text:
    name = settlement_pb2.ContractState.Name(v).removeprefix("CONTRACT_STATE_") if v else "?"
    return Text(name.lower(), style=STATE_STYLE.get(name, ""))


def render(v: View) -> RenderableType:
    """The frame; it fits 100 columns (a table cell never wraps there)."""
    total = max(1, v.sim_end_ms - v.sim_start_ms)
    done = max(0, v.sim_now_ms - v.sim_start_ms)
    head = Table.grid(expand=True)
    head.add_column(ratio=3)
    head.add_column(justify="right")
    head.add_row(Text.assemble((f"P2PEP · {v.scenario}", "bold"), f"  {v.description}"),
                 Text(f"{v.phase} · {v.real_elapsed_s:.0f}s real · {v.blocks_mined} blocks"))
    bar = Table.grid(expand=True)
    bar.add_column(width=22)
    bar.add_column(ratio=1)
    bar.add_column(width=26, justify="right")
    pct = f"{100 * min(done, total) // total}%"
    end = (f"{_clock(v.sim_start_ms, v.tz)}–{_clock(v.sim_end_ms, v.tz)} {pct}" if v.bounded
           else f"from {_clock(v.sim_start_ms, v.tz)} · Ctrl-C stops")
    bar.add_row(Text(f"sim {_clock(v.sim_now_ms, v.tz)} ({v.accel}× real)"),
                ProgressBar(total=total, completed=min(done, total)), Text(end))

    mt = Table(title="meters (simulated clock)", expand=True, title_justify="left")
    for col, just in [("meter", "left"), ("role", "left"), ("relay", "left"), ("W", "right"),
                      ("kWh in/out", "right"), ("sat paid/earned", "right"), ("contr.", "right"),
                      ("unmet kWh", "right")]:
        mt.add_column(col, justify=just, no_wrap=True)  # type: ignore[arg-type]
    for name, role, st, alive in v.meters:
        if st is None:
            mt.add_row(name, role, Text("starting" if alive else "stopped", style="dim"), *[""] * 5)
            continue
        if not alive:
            relay = Text("stopped", style="dim")
        elif role == "producer":  # a producer's relay is about import: it sells, it is not blocked
            relay = Text("● producing" if st.power_w < 0 else "○ idle", style="green" if st.power_w < 0 else "dim")
        elif st.relay_energized:
            relay = Text("● energized", style="green")
        else:
            relay = Text(f"○ {BLOCKED_BECAUSE.get(st.relay_reason, 'blocked')}", style="red")
        mt.add_row(name, role, relay, str(st.power_w), f"{kwh(st.import_wh)}/{kwh(st.export_wh)}",
                   f"{st.paid_msat // 1000:,}/{st.earned_msat // 1000:,}", str(st.active_contracts), kwh(st.unmet_wh))

    ct = Table(title="contracts (windows on the simulated clock)", expand=True, title_justify="left")
    for col, just in [("id", "left"), ("consumer → supplier", "left"), ("window", "left"),
                      ("kWh done/of", "right"), ("sat/kWh", "right"), ("sat paid", "right"), ("state", "left")]:
        ct.add_column(col, justify=just, no_wrap=True)  # type: ignore[arg-type]
    order = {settlement_pb2.CONTRACT_STATE_ACTIVE: 0, settlement_pb2.CONTRACT_STATE_PROPOSED: 1}
    shown = sorted(v.contracts, key=lambda r: (order.get(r.state, 2), -(ts_ms_or_none(r.contract.start) or 0)))[:8]
    for r in shown:
        c = r.contract
        t0, t1 = ts_ms_or_none(c.start), ts_ms_or_none(c.end)
        win = f"{_clock(v.sim_of_real(t0), v.tz)}–{_clock(v.sim_of_real(t1 or t0), v.tz)}" if t0 else ""
        state = _state(r.state)
        if r.fault:
            state.append(" ⚠ retrying", style="bold red")
        ct.add_row(short_id(c.contract_id), f"{c.consumer} → {c.supplier}", win,
                   f"{kwh(r.delivered_wh)}/{kwh(c.energy_wh)}", f"{c.price_msat_per_kwh // 1000:,}",
                   sats(r.paid_msat), state)
    if len(v.contracts) > len(shown):
        ct.caption = f"{len(v.contracts) - len(shown)} more"

    pt = Table(title=f"payments ({len(v.payments)})", expand=True, title_justify="left")
    for col, just in [("contract", "left"), ("#", "right"), ("Wh", "right"), ("sat", "right"),
                      ("fee sat", "right"), ("payer → payee", "left"), ("hash", "left")]:
        pt.add_column(col, justify=just, no_wrap=True)  # type: ignore[arg-type]
    for p in sorted(v.payments, key=lambda p: ts_ms_or_none(p.settled) or 0)[-6:][::-1]:
        pt.add_row(short_id(p.contract_id), str(p.increment), f"{p.from_wh}–{p.to_wh}", sats(p.amount_msat),
                   sats(p.fee_msat), f"{p.payer} → {p.payee}", p.payment_hash[:8])

    log = Text("\n".join(f"[{t:5.0f}s] {m}" for t, m in v.messages), style="dim")
    parts: list[RenderableType] = [head, bar]
    for r in v.contracts:
        if r.fault:  # an operator must see this at once, whatever else the tables show
            parts.append(Text(f"⚠ settlement is failing to pay contract {r.contract.contract_id} and retries: "
                              f"{r.fault}", style="bold red"))
    if v.urls:
        label = {"console": "console", "portal": "household portal", "prometheus": "prometheus"}
        parts.append(Text("\n".join(f"{label.get(n, n + ' display')} {u}"
                                    + (f" (sign in: {v.login})" if n == "console" and v.login else "")
                                    for n, u in v.urls.items()), style="cyan"))
    return Group(Panel(Group(*parts)), mt, ct, pt, Panel(log, title="runner", title_align="left"))


async def run_live(runner: ScenarioRunner, stop: asyncio.Event, console: Console | None = None) -> None:
    """Redraw until the runner reaches its end (``runner.phase == "ended"``)."""
    from rich.live import Live

    console = console or Console()
    with Live(render(snapshot(runner)), console=console, refresh_per_second=4, screen=False,
              redirect_stderr=False) as live:
        while runner.phase != "ended":
            live.update(render(snapshot(runner)))
            await asyncio.sleep(0.25)
        live.update(render(snapshot(runner)))
