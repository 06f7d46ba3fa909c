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


def snapshot(r: ScenarioRunner) -> View:
    now = time.monotonic()
    s = r.scenario
    running = r.phase == "running"
    meters = [(m.name, m.role, r.watcher.statuses.get(m.name),
               m.name in r.procs and r.procs[m.name].alive()) for m in s.meters]
    return View(
        scenario=s.name, description=s.description, phase=r.phase, real_elapsed_s=now - r.t0,
        sim_start_ms=s.timing.sim_start_ms,
        sim_now_ms=min(r.clock.sim_ms(now), s.timing.sim_end_ms) if running or r.clock.started else s.timing.sim_start_ms,
        sim_end_ms=s.timing.sim_end_ms, tz=s.meters[0].tz if s.meters else "UTC", meters=meters,
        contracts=list(r.watcher.books.contracts), payments=list(r.watcher.books.payments),
        messages=list(r.messages)[-6:], blocks_mined=int(r.miner_stats.get("blocks", 0)),
        urls=r.web_urls() if running else {},
        login=f"{r.operator[0]} / {r.operator[1]}" if running else "",
    )


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
    total = max(1, v.sim_end_ms - v.sim_start_ms)
    done = max(0, v.sim_now_ms - v.sim_start_ms)
    head = Table.grid(expand=True)
    head.add_column(ratio=3)
    head.add_column(justify="right")
    head.add_row(Text.assemble((f"P2PEP · {v.scenario}", "bold"), f"  {v.description}"),
                 Text(f"{v.phase} · {v.real_elapsed_s:.0f}s real · {v.blocks_mined} blocks mined"))
    bar = Table.grid(expand=True)
    bar.add_column(width=14)
    bar.add_column(ratio=1)
    bar.add_column(width=22, justify="right")
    bar.add_row(Text(f"sim {_clock(v.sim_now_ms, v.tz)}"), ProgressBar(total=total, completed=min(done, total)),
                Text(f"{_clock(v.sim_start_ms, v.tz)}–{_clock(v.sim_end_ms, v.tz)} {100 * done // total}%"))

    mt = Table(title="meters", expand=True, title_justify="left")
    for col, just in [("meter", "left"), ("role", "left"), ("relay", "left"), ("import kWh", "right"),
                      ("export kWh", "right"), ("power W", "right"), ("contracts", "right"),
                      ("paid sat", "right"), ("earned sat", "right"), ("unmet kWh", "right")]:
        mt.add_column(col, justify=just)  # type: ignore[arg-type]
    for name, role, st, alive in v.meters:
        if st is None:
            mt.add_row(name, role, Text("starting" if alive else "stopped", style="dim"), *[""] * 7)
            continue
        relay = (Text("● energized", style="green") if st.relay_energized
                 else Text(f"○ blocked {st.relay_reason.lower()}", style="red" if role != "producer" else "dim"))
        if not alive:
            relay = Text("stopped", style="dim")
        mt.add_row(name, role, relay, kwh(st.import_wh), kwh(st.export_wh), str(st.power_w),
                   str(st.active_contracts), sats(st.paid_msat), sats(st.earned_msat), kwh(st.unmet_wh))

    ct = Table(title="contracts", expand=True, title_justify="left")
    for col, just in [("contract", "left"), ("consumer → supplier", "left"), ("window", "left"),
                      ("kWh delivered / contracted", "right"), ("price sat/kWh", "right"), ("sats paid", "right"),
                      ("state", "left")]:
        ct.add_column(col, justify=just)  # type: ignore[arg-type]
    order = {settlement_pb2.CONTRACT_STATE_ACTIVE: 0, settlement_pb2.CONTRACT_STATE_PROPOSED: 1}
    shown = sorted(v.contracts, key=lambda r: (order.get(r.state, 2), -(ts_ms_or_none(r.contract.start) or 0)))[:8]
    for r in shown:
        c = r.contract
        win = f"{_clock(ts_ms_or_none(c.start) or 0, v.tz)}–{_clock(ts_ms_or_none(c.end) or 0, v.tz)}" if ts_ms_or_none(c.start) else ""
        state = _state(r.state)
        if r.fault:
            state.append(" ⚠ retrying", style="bold red")
        ct.add_row(c.contract_id, f"{c.consumer} → {c.supplier}", win,
                   f"{kwh(r.delivered_wh)} / {kwh(c.energy_wh)}", f"{c.price_msat_per_kwh // 1000:,}",
                   sats(r.paid_msat), state)
    if len(v.contracts) > len(shown):
        ct.caption = f"{len(v.contracts) - len(shown)} more"

    pt = Table(title=f"payments ({len(v.payments)})", expand=True, title_justify="left")
    for col, just in [("contract", "left"), ("#", "right"), ("Wh", "right"), ("sat", "right"),
                      ("fee sat", "right"), ("payer → payee", "left"), ("hash", "left")]:
        pt.add_column(col, justify=just)  # type: ignore[arg-type]
    for p in sorted(v.payments, key=lambda p: ts_ms_or_none(p.settled) or 0)[-6:][::-1]:
        pt.add_row(p.contract_id, str(p.increment), f"{p.from_wh}–{p.to_wh}", sats(p.amount_msat),
                   sats(p.fee_msat), f"{p.payer} → {p.payee}", p.payment_hash[:12])

    log = Text("\n".join(f"[{t:5.0f}s] {m}" for t, m in v.messages), style="dim")
    parts: list[RenderableType] = [head, bar]
    for r in v.contracts:
        if r.fault:  # an operator must see this at once, whatever else the tables show
            parts.append(Text(f"⚠ settlement is failing to pay contract {r.contract.contract_id} and retries: "
                              f"{r.fault}", style="bold red"))
    if v.urls:
        label = {"console": "console", "portal": "household portal", "prometheus": "prometheus"}
        operator = ("console", "prometheus")  # the operator's pages on one line, the households' on the next
        for names in ([n for n in operator if n in v.urls], [n for n in v.urls if n not in operator]):
            if names:
                parts.append(Text("  ".join(f"{label.get(n, n + ' display')} {v.urls[n]}"
                                            + (f" (sign in: {v.login})" if n == "console" and v.login else "")
                                            for n in names), style="cyan"))
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
