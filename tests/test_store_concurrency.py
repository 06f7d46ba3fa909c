"""Every store under many overlapping calls of its methods, on a real SQLite file.

`make up` once failed because two contract workers overlapped on settlement's shared
connection (one switched its row factory while the other read). These tests run each store's
methods concurrently, cancel some calls part-way (as a stopping service or a timed-out
handler does), then reopen the file and check the invariant each logical write promises:
a reading is stored with its attribution or not at all, a tick's registers never run ahead of
its outbox, a batch's proofs are never seen half-replaced, a matcher call is whole.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fakes.chain import FakeChain, FakeWallet

from p2pep.anchor.batching import BatchPolicy
from p2pep.metering.ordering import PlacedOrder
from p2pep.metering.readings import Reading, SignedReading
from p2pep.metering.registers import RegisterSnapshot
from services.anchor.anchorer import Anchorer, AnchorerConfig
from services.matcher.store import ORDER_COLUMNS, Changes
from services.matcher.store import Store as MatcherStore
from services.meter.store import InvoiceRow, MeterStore, PaymentRow
from services.settlement.store import MeterRow
from services.settlement.store import Store as SettlementStore

ROUNDS = 300


async def overlap(rng: random.Random, calls: list[Callable[[], Awaitable[Any]]], cancel_share: float = 0.2) -> None:
    """Start every call at once; cancel some of them after a few scheduler turns.
    Any exception other than the cancellations fails the test."""
    tasks = [asyncio.create_task(c()) for c in calls]
    victims = [t for t in tasks if rng.random() < cancel_share]
    for t in victims:
        for _ in range(rng.randrange(0, 6)):
            await asyncio.sleep(0)
        t.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)]
    assert not errors, errors[:3]


async def test_settlement_store_overlapping_calls(tmp_path: Path) -> None:
    rng = random.Random(9)
    path = str(tmp_path / "settlement.sqlite")
    store = await SettlementStore.open(path)
    await store.upsert_meter(MeterRow("m", "02" + "11" * 32, "03" + "22" * 32, "127.0.0.1:1", "consumer"))
    await store.save_contract({"contract_id": "c", "terms_json": "{}", "state": "ACTIVE"})

    async def reader() -> None:
        for p in await store.payments():
            assert isinstance(p, dict) and isinstance(p["contract_id"], str), p
        for p in await store.payments("c"):
            assert p["contract_id"] == "c"
        for c in await store.contracts():
            assert isinstance(c, dict) and c["contract_id"] == "c"
        assert [m.meter_id for m in await store.meters()] == ["m"]
        last = await store.last_reading("m")
        assert last is None or last.meter_id == "m"
        assert await store.register_at("m", "import_wh", 10**15) >= 0
        assert await store.reading_count("m", 0, 10**15) >= 0

    async def pay(inc: int) -> None:
        await store.payment_intent("c", inc, inc * 10, inc * 10 + 10, 1000)
        await store.payment_invoice("c", inc, f"h{inc}", f"lnbc{inc}")
        row = await store.payment("c", inc)
        assert row is not None and row["payment_hash"] == f"h{inc}"
        await store.payment_settled("c", inc, f"p{inc}", 1, inc)
        await store.put("matcher_seq", str(inc))

    seq = 0
    for _ in range(ROUNDS // 10):
        calls: list[Callable[[], Awaitable[Any]]] = []
        for _ in range(10):
            seq += 1
            s = seq
            reading = Reading("m", s, s * 10, 0, s * 1000)
            calls.append(lambda r=reading: store.accept_reading(r, b"sig", [("c", "consumer", 10)]))
            calls.append(reader)
            calls.append(lambda i=s: pay(i))
        await overlap(rng, calls)
    await store.close()

    store = await SettlementStore.open(path)
    stored = await store.reading_count("m", -1, 10**15)
    (contract,) = await store.contracts()
    assert 0 < stored < seq  # some readings were cancelled, most were stored
    assert contract["consumer_wh"] == 10 * stored, "a reading was stored without its attribution or vice versa"
    for p in await store.payments():
        assert p["payment_hash"] in (None, f"h{p['increment']}")
    await store.close()


async def test_meter_store_overlapping_calls(tmp_path: Path) -> None:
    rng = random.Random(11)
    path = str(tmp_path / "meter.sqlite")
    store = await MeterStore.open(path, "m")
    seq = 0

    def tick(s: int) -> Callable[[], Awaitable[None]]:
        snap = RegisterSnapshot("m", seq=s, import_wh=10 * s)
        signed = SignedReading(Reading("m", s, 10 * s, 0, s * 1000), b"sig")
        return lambda: store.save_tick(snap, signed, {})

    async def others(i: int) -> None:
        await store.put_invoice(InvoiceRow("c", i, 0, 10, 1000, f"lnbc{i}", f"h{i}", False, i))
        await store.invoice_settled("c", i, i)
        await store.put_payment(PaymentRow("c", i, 0, 10, 1000, f"lnbc{i}", f"h{i}", "", 0, "pending", "", i))
        await store.put_order(PlacedOrder(f"o{i}", "buy", 10, i, i + 5))
        await store.put("first_contract_import_wh", i)
        assert all(isinstance(p, PaymentRow) for p in await store.payments())
        assert all(isinstance(v, InvoiceRow) for v in await store.invoices("c"))
        assert all(isinstance(o, PlacedOrder) for o in await store.orders())
        assert await store.outbox_size() >= 0
        await store.prune_orders(i - 3)

    async def sender() -> None:
        sent = await store.outbox(limit=5)
        for r in sent[:-1]:  # the newest always stays until the end
            await store.outbox_delete(r.reading.seq)

    for _ in range(ROUNDS // 10):
        calls: list[Callable[[], Awaitable[Any]]] = []
        for _ in range(10):
            seq += 1
            calls += [tick(seq), lambda i=seq: others(i), sender]
        await overlap(rng, calls)
    await store.close()

    store = await MeterStore.open(path, "m")
    regs = await store.registers()
    newest = (await store.outbox(limit=10**6))[-1].reading
    assert regs is not None and regs.seq == newest.seq, "registers ran ahead of (or behind) the outbox"
    assert regs.import_wh == newest.import_wh
    await store.close()


async def test_matcher_store_overlapping_calls(tmp_path: Path) -> None:
    rng = random.Random(13)
    path = str(tmp_path / "matcher.sqlite")
    store = await MatcherStore.open(path)
    n = len(ORDER_COLUMNS.split(","))

    def order(i: int) -> tuple[Any, ...]:
        row = [f"o{i}", "m", 1, 10, 100, None, "[]", None, 10, i, "open", i, None, 0]
        assert len(row) == n
        return tuple(row)

    async def reader(i: int) -> None:
        got = await store.order(f"o{i}")
        assert got is None or got["id"] == f"o{i}"
        for seq, payload in await store.events_since(0, ["m"]):
            assert payload == f"e{seq}".encode()
        assert isinstance(await store.contracts("m", False, 0, 10), list)
        snap = await store.load()  # one consistent view: the newest order and the newest event match
        assert max((o["seq"] for o in snap.open_orders), default=0) == snap.last_event_seq

    for rnd in range(ROUNDS // 10):
        calls: list[Callable[[], Awaitable[Any]]] = []
        for k in range(10):
            i = rnd * 10 + k + 1
            ch = Changes(new_orders=[order(i)], events=[(i, "m", f"e{i}".encode())], meta={"last": str(i)})
            calls += [lambda c=ch: store.apply(c), lambda i=i: reader(i)]
        await overlap(rng, calls)
    await store.close()

    store = await MatcherStore.open(path)
    snap = await store.load()
    events = await store.events_since(0, [], limit=10**6)
    assert len(snap.open_orders) == len(events) > 0, "an order was stored without its event or vice versa"
    await store.close()


async def test_anchor_store_proofs_never_seen_half_replaced(tmp_path: Path) -> None:
    """Each round anchors a new contract, then a reorg re-mines its transaction in another block,
    so its batch's proofs are replaced while readers keep asking for them: a reader sees the old
    proof or the new one, never none."""
    chain = FakeChain()
    chain.mine(100)
    cfg = AnchorerConfig(policy=BatchPolicy(every_blocks=1, max_leaves=1000), min_confirmations=2, watch_depth=50)
    anchorer = await Anchorer(str(tmp_path / "anchor.sqlite"), FakeWallet(chain), chain, cfg).open()
    stop = asyncio.Event()
    watched: list[str] = []
    seen: list[int] = []

    async def reader() -> None:
        while not stop.is_set():
            if watched:
                seen.append(len(await anchorer.proofs_for(watched[-1])))
            await asyncio.sleep(0)

    async def rounds() -> None:
        for i in range(ROUNDS // 10):
            await anchorer.add_leaves([("contract", f"c-{i}", i.to_bytes(32, "big"))])
            while not await anchorer.proofs_for(f"c-{i}"):
                await anchorer.on_block(chain.mine())
            watched.append(f"c-{i}")
            chain.reorg(1)
            chain.mine(2)  # the competing chain includes the anchoring tx again
            before = (await anchorer.proofs_for(f"c-{i}"))[0].proof.block_hash
            await anchorer.on_block(chain.height)
            assert (await anchorer.proofs_for(f"c-{i}"))[0].proof.block_hash != before
        stop.set()

    await asyncio.gather(*(reader() for _ in range(8)), rounds())
    assert seen and set(seen) == {1}, f"proofs seen half-replaced: {sorted(set(seen))}"
    assert len(await anchorer.batches()) == ROUNDS // 10
    await anchorer.close()
