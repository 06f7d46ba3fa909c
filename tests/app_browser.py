"""A household using its app, and the operator the console, in a real browser (PyPI
playwright driving Debian's ``/usr/bin/chromium``; ``playwright install`` is not used), during
a real scenario run.

:func:`household_in_browser`: sign up, pair the consumer's meter with the code its display
shows, place a demand in Trade, watch the contract it formed appear and get paid, place a
second one and cancel it (gone from the matcher's book), look at the producers on the Peers
map and search them, the Usage chart, the Wallet's channel balance against the household's
own lnd, and the Activity log: the contract's anchoring with its confirmations, its
document verified by the portal and downloaded through the household's session.
:func:`operator_in_browser`: sign in to the console, watch the live grid draw energy flowing
from producers to the consumer, chart three meters' usage and production between two times
and download the CSV (its totals are compared with settlement's books by the caller).
Screenshots of every view at 390 px and at desktop width go to :func:`artifacts_dir`. Each
step waits on what the page shows (with a deadline), never a bare sleep.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from grpc.aio import AioRpcError

from p2pep.regtest import wait_for
from p2pep.regtest.waiting import timeout_scale
from p2pep.scenario.runner import ScenarioRunner
from p2pep.servicekit.channels import channel
from p2pep.v1 import matcher_pb2, matcher_pb2_grpc

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
REPO = Path(__file__).resolve().parents[1]


def artifacts_dir(name: str) -> Path:
    """Where a test's screenshots go: ``$P2PEP_TEST_ARTIFACTS/<name>`` (default
    ``build/test-artifacts/<name>`` in the repository, which git ignores)."""
    root = Path(os.environ.get("P2PEP_TEST_ARTIFACTS", REPO / "build" / "test-artifacts"))
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    return out


OVERFLOW_JS = """innerScrollOk => {
  const vw = document.documentElement.clientWidth, out = [];
  const name = (el) => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") +
    (typeof el.className === "string" && el.className.trim() ? "." + el.className.trim().split(/\\s+/).join(".") : "");
  const scrolls = (el) => ["auto", "scroll"].includes(getComputedStyle(el).overflowX);
  const inScroller = (el) => { for (let a = el.parentElement; a && a !== document.body; a = a.parentElement) if (scrolls(a)) return true; return false; };
  const page = Math.max(document.documentElement.scrollWidth, document.body.scrollWidth);
  if (page > vw) out.push("the page is " + page + " px wide in a " + vw + " px viewport");
  for (const el of document.body.querySelectorAll("*")) {
    const r = el.getBoundingClientRect();
    if (!r.width || !r.height) continue;  // not rendered (a hidden view)
    if (scrolls(el) && el.scrollWidth > el.clientWidth + 1) {
      if (!innerScrollOk) out.push(name(el) + " scrolls sideways: " + el.scrollWidth + " > " + el.clientWidth + " px");
    } else if ((r.right > vw + 0.5 || r.left < -0.5) && !inScroller(el)) {
      out.push(name(el) + " spans " + Math.round(r.left) + ".." + Math.round(r.right));
    }
  }
  return out.slice(0, 12);
}"""


async def horizontal_overflow(page: Any, inner_scroll_ok: bool = False) -> list[str]:
    """What sticks out sideways at the current viewport (empty: nothing): the page wider than
    the viewport, a rendered element reaching past its edges (cut off, or widening the page),
    or a box scrolling sideways inside (allowed with ``inner_scroll_ok``: a card that scrolls
    its own wide table on a phone, as the console's do, loses nothing). Measured element by
    element, so a clipping ``overflow-x: hidden`` on the page cannot hide content cut off at
    the edge."""
    return [str(x) for x in await page.evaluate(OVERFLOW_JS, inner_scroll_ok)]


async def household_in_browser(runner: ScenarioRunner, meter: str, out: Path) -> dict[str, Any]:
    """The whole household flow in the browser; returns what it saw (checked by the caller)."""
    from playwright.async_api import TimeoutError as PlaywrightTimeout
    from playwright.async_api import async_playwright

    scale = timeout_scale()
    portal = f"http://127.0.0.1:{runner.procs['portal'].launch.metrics_port}"
    display = f"http://127.0.0.1:{runner.procs[meter].launch.metrics_port}"
    async with aiohttp.ClientSession(display) as http, http.get("/api/pairing") as resp:
        code = (await resp.json())["code"]
    seen: dict[str, Any] = {"screens": [], "overflow": []}
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport=PHONE)
            page.set_default_timeout(30_000 * scale)
            await page.goto(portal + "/")  # not signed in: the sign-in page
            await page.wait_for_url("**/signin")
            await page.wait_for_selector("#register", state="visible")
            await page.fill("#re-name", f"browser-household-{meter}")
            await page.get_by_label("Password (at least 10 characters)").fill("a household password, typed")
            await page.get_by_role("button", name="Create account").click()
            await page.wait_for_url(portal + "/")
            await page.get_by_label("Meter id").fill(meter)
            await page.get_by_label("Pairing code").fill(code)
            await page.get_by_role("button", name="Add meter").click()
            await page.wait_for_selector("#meter-view", state="visible")
            await page.wait_for_function("document.getElementById('relay-state').textContent.startsWith('POWER')")
            seen["home_clock"] = await page.inner_text("#simtime")
            await shoot(page, out, "home", seen)

            # Trade: a demand above the meter's standing limit, valid 30 minutes of the meter's clock
            await page.get_by_role("tab", name="Trade").click()
            await page.get_by_label("I want to").select_option("demand")
            await page.get_by_label("Energy (kWh)").fill("0.02")
            await page.get_by_label("Price (sat per kWh)").fill("400")
            await page.get_by_label("Valid for (minutes, meter clock)").fill("30")
            async with page.expect_response(lambda r: r.url.endswith("/orders") and r.request.method == "POST") as placed:
                await page.get_by_role("button", name="Place order").click()
            order = await (await placed.value).json()
            seen["order"] = order
            await page.wait_for_function("document.getElementById('order-ok').textContent.startsWith('order placed')")
            contract_id = await _contract_of(runner, meter, order["order"]["order_id"], 90 * scale)
            seen["contract_id"] = contract_id
            row = page.locator(f'#contracts li[data-contract="{contract_id}"]')
            await row.wait_for(timeout=60_000 * scale)
            # it fills and gets paid: the row's payment count moves off 0 (pushed, not polled)
            await page.wait_for_function(
                """cid => { const li = document.querySelector(`#contracts li[data-contract="${cid}"]`);
                            return li && /(^|\\D)[1-9]\\d* payments/.test(li.textContent); }""",
                arg=contract_id, timeout=120_000 * scale)
            seen["contract_row"] = await row.inner_text()
            # a second bid, far below every seller: it rests in the book until the household cancels it
            await page.get_by_label("Energy (kWh)").fill("0.01")
            await page.get_by_label("Price (sat per kWh)").fill("1")
            async with page.expect_response(lambda r: r.url.endswith("/orders") and r.request.method == "POST") as placed:
                await page.get_by_role("button", name="Place order").click()
            low = (await (await placed.value).json())["order"]["order_id"]
            mine = page.locator(f'#orders li[data-order="{low}"]')
            await mine.wait_for()
            seen["cancel"] = {"order_id": low, "in_book": await _in_book(runner, meter, low, True, 30 * scale)}
            await shoot(page, out, "trade", seen)
            await mine.get_by_role("button", name=f"cancel order {low}").click()
            await mine.wait_for(state="detached")
            seen["cancel"]["in_book_after"] = await _in_book(runner, meter, low, False, 30 * scale)

            await page.get_by_role("tab", name="Peers").click()
            await page.wait_for_selector("#map svg g.peer")
            seen["map"] = await page.eval_on_selector_all(
                "#map svg g.peer", "gs => gs.map(g => [g.dataset.meter, g.querySelector('text:last-of-type') ? g.textContent : ''])")
            seen["peers"] = await page.eval_on_selector_all("#peer-list li", "ls => ls.map(l => l.textContent)")
            await shoot(page, out, "peers", seen)
            # the search: who sells at 260 sat/kWh or less (meter-1's 250, not meter-2's 280)
            await page.get_by_label("Who").select_option("sells")
            await page.get_by_label("Price at most (sat per kWh)").fill("260")
            await page.wait_for_function("!document.querySelector('#peer-list li[data-peer=\"meter-2\"]')")
            seen["peers_cheap"] = await page.eval_on_selector_all("#peer-list li[data-peer]", "ls => ls.map(l => l.dataset.peer)")
            await page.get_by_label("Price at most (sat per kWh)").fill("")
            await page.get_by_label("Who").select_option("")

            await page.get_by_role("tab", name="Usage").click()
            await page.wait_for_function("document.getElementById('chart-sum').textContent.startsWith('used')")
            seen["chart_sum"] = await page.inner_text("#chart-sum")
            seen["chart_drawn"] = await page.evaluate("typeof Chart !== 'undefined' && !!Chart.getChart('chart')")
            await shoot(page, out, "usage", seen)
            await page.get_by_role("button", name="Last 7 days").click()
            await page.wait_for_function(
                "document.getElementById('chart-range').textContent.startsWith('last 7 days')")
            seen["week_bars"] = await page.evaluate("Chart.getChart('chart').data.labels.length")
            seen["week_sum"] = await page.inner_text("#chart-sum")

            await page.get_by_role("tab", name="Wallet").click()
            await page.get_by_role("button", name="New receive address").click()
            await page.wait_for_function("document.getElementById('w-address').textContent.length > 20")
            seen["address"] = await page.inner_text("#w-address")
            seen["wallet"] = await _wallet_against_lnd(page, _lnd_local_sat(runner, meter), scale)
            await shoot(page, out, "wallet", seen)

            await page.get_by_role("tab", name="Activity").click()
            # (the page's placeholder is an li too: wait for the loaded list with this contract's payments)
            await page.wait_for_function(
                "cid => [...document.querySelectorAll('#ln-payments li')].some(li => li.textContent.includes(cid))",
                arg=contract_id, timeout=60_000 * scale)
            seen["activity_payments"] = await page.eval_on_selector_all("#ln-payments li", "ls => ls.map(l => l.textContent)")
            # the contract anchored (each of its leaves in a block, >= 1 confirmation) and its
            # document verified by the portal: after the contract ends its summary is anchored too,
            # so wait; re-opening the view reloads it (blocks are not pushed)
            anchored = """cid => {
                const as = [...document.querySelectorAll('#anchors li[data-contract]')].filter(li => li.dataset.contract === cid);
                const doc = document.querySelector(`#docs li[data-contract="${cid}"]`);
                return as.length > 0 && as.every(li => Number(li.dataset.confirmations) >= 1)
                    && !!doc && doc.dataset.verified === 'verified'; }"""
            deadline = asyncio.get_running_loop().time() + 120 * scale
            while True:
                try:
                    await page.wait_for_function(anchored, arg=contract_id, timeout=10_000 * scale)
                    break
                except PlaywrightTimeout:
                    if asyncio.get_running_loop().time() > deadline:
                        raise
                    await page.get_by_role("tab", name="Activity").click()
            seen["anchors"] = await page.eval_on_selector_all(
                "#anchors li[data-contract]", "ls => ls.map(l => ({...l.dataset}))")
            seen["doc_rows"] = await page.eval_on_selector_all("#docs li[data-contract]", "ls => ls.map(l => l.textContent)")
            seen["documents"] = await page.eval_on_selector_all("#docs li a", "as => as.map(a => a.href)")
            # the document, downloaded through the household's own session (checked by the caller with p2pep verify)
            async with page.expect_download() as dl:
                await page.locator(f'#docs li[data-contract="{contract_id}"] a').click()
            download = await dl.value
            seen["document_path"] = str(out / download.suggested_filename)
            await download.save_as(seen["document_path"])
            await shoot(page, out, "activity", seen)
            seen["page_text"] = await page.content()

            # the household lets its meter go again (the suite's API checks pair it next)
            page.once("dialog", lambda d: d.accept())
            await page.get_by_role("tab", name="Home").click()
            await page.get_by_role("button", name="Remove this meter from my account").click()
            await page.wait_for_selector("#meter-view", state="hidden")
        finally:
            await browser.close()
    return seen


async def operator_in_browser(runner: ScenarioRunner, out: Path, meters: list[str], start: datetime,
                              span: timedelta) -> dict[str, Any]:
    """The operator's console in the browser: sign in, the live grid's flows, then usage and
    production of ``meters`` per hour for ``span`` from ``start`` (the meters' clock) as a
    chart and as the CSV a click downloads; returns what it saw."""
    from playwright.async_api import async_playwright

    scale = timeout_scale()
    console = f"http://127.0.0.1:{runner.procs['console'].launch.metrics_port}"
    seen: dict[str, Any] = {"screens": [], "overflow": []}
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            # the usage form's times are local times of the browser: UTC here, so the test knows them
            ctx = await browser.new_context(viewport=DESKTOP, timezone_id="UTC", locale="en-US", accept_downloads=True)
            page = await ctx.new_page()
            page.set_default_timeout(30_000 * scale)
            await page.goto(console + "/")
            await page.wait_for_url("**/signin")
            await page.get_by_label("Name or e-mail").first.fill(runner.operator[0])
            await page.get_by_label("Password", exact=True).fill(runner.operator[1])
            await page.get_by_role("button", name="Sign in").click()
            await page.wait_for_url(console + "/")
            # the live grid: households as nodes, energy animated along each active contract
            await page.wait_for_selector("#grid svg path.flow", timeout=60_000 * scale)
            seen["flows"] = await page.eval_on_selector_all(
                "#grid svg path.flow", "ps => ps.map(p => [p.dataset.from, p.dataset.to])")
            seen["flow_labels"] = await page.eval_on_selector_all("#grid svg text.flowlabel",
                                                                  "ts => ts.map(t => t.textContent)")
            # every time on the page is on the meters' clock, from the first rendering on
            await page.wait_for_selector("#contracts tbody tr")
            seen["contract_starts"] = await page.eval_on_selector_all(
                "#contracts tbody tr", "rs => rs.map(r => r.cells[7].textContent)")
            await shoot(page, out, "grid", seen, prefix="console")

            t0 = start.astimezone(UTC).replace(tzinfo=None)  # the form's local time, in the browser's UTC
            await page.get_by_label("meters (comma-separated)").fill(",".join(meters))
            await page.get_by_label("from", exact=True).fill(t0.isoformat(timespec="seconds"))
            await page.get_by_label("to", exact=True).fill((t0 + span).isoformat(timespec="seconds"))
            await page.locator("#sf").get_by_role("button", name="show").click()
            await page.wait_for_selector("#csv", state="visible")
            seen["chart_drawn"] = await page.evaluate("typeof Chart !== 'undefined' && !!Chart.getChart('series')")
            async with page.expect_download() as dl:
                await page.click("#csv")
            download = await dl.value
            path = out / download.suggested_filename
            await download.save_as(str(path))
            seen["csv_name"] = download.suggested_filename
            seen["csv"] = path.read_text()
            await shoot(page, out, "usage", seen, prefix="console")
            await ctx.close()
        finally:
            await browser.close()
    return seen


async def shoot(page: Any, out: Path, name: str, seen: dict[str, Any], prefix: str = "app") -> None:
    """The view at phone width and at desktop width, each screenshot saved, and what sticks
    out sideways at either (at phone width a card may scroll its own table; at desktop
    nothing scrolls sideways)."""
    for label, size in (("390", PHONE), ("desktop", DESKTOP)):
        await page.set_viewport_size(size)
        path = out / f"{prefix}-{name}-{label}.png"
        await page.screenshot(path=str(path), full_page=True)
        seen["screens"].append(str(path))
        if over := await horizontal_overflow(page, inner_scroll_ok=label == "390"):
            seen["overflow"].append(f"{name} at {label}: {over}")
    await page.set_viewport_size(PHONE)


async def _contract_of(runner: ScenarioRunner, meter: str, order_id: str, timeout: float) -> str:
    """The contract the matcher formed from ``order_id`` (its buy order), asked as the operator."""
    assert runner.tls is not None
    async with channel(runner.procs["matcher"].launch.target, peer="matcher", tls=runner.tls) as ch:
        stub = matcher_pb2_grpc.MatcherServiceStub(ch)

        async def formed() -> str | None:
            try:
                resp = await stub.ListContracts(matcher_pb2.ListContractsRequest(meter_id=meter, limit=200), timeout=10)
            except AioRpcError:
                return None
            ids = [c.contract_id for c in resp.contracts if order_id in (c.buy_order_id, c.sell_order_id)]
            return ids[0] if ids else None

        return str(await wait_for(formed, timeout=timeout, what=f"a contract from {order_id}"))


async def _in_book(runner: ScenarioRunner, meter: str, order_id: str, want: bool, timeout: float) -> bool:
    """Wait until ``order_id`` is (``want``) or is no longer in the matcher's book, asked as the operator."""
    assert runner.tls is not None
    async with channel(runner.procs["matcher"].launch.target, peer="matcher", tls=runner.tls) as ch:
        stub = matcher_pb2_grpc.MatcherServiceStub(ch)

        async def there() -> bool:
            book = await stub.GetBook(matcher_pb2.GetBookRequest(depth=1, meter_ids=[meter]), timeout=10)
            return (order_id in {o.order_id for o in book.orders}) is want

        await wait_for(there, timeout=timeout, what=f"{order_id} {'in' if want else 'gone from'} the book")
    return want


def _lnd_local_sat(runner: ScenarioRunner, meter: str) -> Callable[[], Awaitable[int]]:
    """The channel balance the household's own lnd reports (what its meter can send)."""
    async def read() -> int:
        assert runner.net is not None
        return int((await runner.net.nodes[meter].client.channel_balance()).local_balance.sat)
    return read


async def _wallet_against_lnd(page: Any, lnd_local: Callable[[], Awaitable[int]], scale: float) -> dict[str, int]:
    """The Wallet's "can send" figure bracketed by lnd's own: ``early`` read first, then two
    changes of the figure waited for (the meter reads lnd every few seconds; the second change
    is surely a read after ``early``), then ``late``. A consumer's local balance only falls
    while it pays, so the figure must lie in ``[late, early]``; if it does not move, nothing
    was paid meanwhile and all three are equal."""
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    early = await lnd_local()
    shown = await page.inner_text("#w-local")
    for _ in range(2):
        try:
            await page.wait_for_function("t => document.getElementById('w-local').textContent !== t",
                                         arg=shown, timeout=6_000 * scale)
        except PlaywrightTimeout:
            break
        shown = await page.inner_text("#w-local")
    late = await lnd_local()
    return {"early": early, "shown": int(re.sub(r"\D", "", shown) or -1), "late": late}
