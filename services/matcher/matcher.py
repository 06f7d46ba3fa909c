"""The matcher service's core (:class:`Matcher`): the market plus persistence and events.

Every operation that changes the book runs under one lock: it changes the in-memory
market, writes all effects in one SQLite transaction, and only then publishes its
events and answers. If the write fails, the in-memory state is rebuilt from the
database, so memory never runs ahead of what was stored.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import structlog

from p2pep.market import (
    DuplicateOrder,
    InvalidOrder,
    Market,
    MarketError,
    Side,
    Trade,
    UnknownContract,
    clear,
    terms_hash,
)
from p2pep.market.validation import check_id, make_order
from p2pep.pbconv import enum_value, ms_ts, now_ms
from p2pep.refusals import PermissionDenied
from p2pep.settings.matcher import MatcherSettings
from p2pep.v1 import common_pb2, matcher_pb2
from services.matcher import metrics as M
from services.matcher.convert import ServiceOrder, order_msg, time_ms
from services.matcher.events import EventHub
from services.matcher.store import Changes, Store, partners_json

log = structlog.get_logger("matcher")

Kind = matcher_pb2.MatchEvent
STATUS = matcher_pb2


class StorageFailed(Exception):
    """The database refused a write; the call was not applied."""


@dataclass(slots=True)
class ContractRec:
    contract_id: str
    consumer: str
    supplier: str
    energy_wh: int
    price: int
    start_ms: int
    end_ms: int
    tier: int
    match_hash: bytes  # Contract.match_hash (the store's column is `hash`)
    buy_order: str
    sell_order: str
    renews: str | None
    ended: bool = False
    outcome: int = 0
    delivered_wh: int | None = None

    def row(self) -> tuple[object, ...]:
        return (
            self.contract_id, self.consumer, self.supplier, self.energy_wh, self.price, self.start_ms,
            self.end_ms, self.tier, self.match_hash, self.buy_order, self.sell_order, self.renews,
            int(self.ended), self.outcome, self.delivered_wh,
        )

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> ContractRec:
        r = tuple(row)
        return cls(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], bytes(r[8]), r[9], r[10], r[11],
                   bool(r[12]), r[13] or 0, r[14])

    def msg(self) -> common_pb2.Contract:
        return common_pb2.Contract(
            contract_id=self.contract_id, consumer=self.consumer, supplier=self.supplier,
            energy_wh=self.energy_wh, price_msat_per_kwh=self.price, start=ms_ts(self.start_ms),
            end=ms_ts(self.end_ms), tier=enum_value(common_pb2.Tier, self.tier), match_hash=self.match_hash,
            buy_order_id=self.buy_order,
            sell_order_id=self.sell_order, renews_contract_id=self.renews or "",
        )


@dataclass
class SubmitResult:
    order: ServiceOrder
    remaining: int
    contracts: list[ContractRec]
    status: matcher_pb2.OrderStatus.ValueType

    def msg(self) -> matcher_pb2.SubmitOrderResponse:
        return matcher_pb2.SubmitOrderResponse(
            order=order_msg(self.order, self.remaining),
            contracts=[c.msg() for c in self.contracts],
            status=self.status,
        )


@dataclass
class Tx:
    """What one call changed, to persist then publish."""

    now_ms: int
    changes: Changes = field(default_factory=Changes)
    touched: dict[str, ServiceOrder] = field(default_factory=dict)
    new_ids: set[str] = field(default_factory=set)
    closed_status: dict[str, str] = field(default_factory=dict)
    events: list[matcher_pb2.MatchEvent] = field(default_factory=list)
    trades: list[tuple[Trade, ContractRec]] = field(default_factory=list)


class Matcher:
    def __init__(self, settings: MatcherSettings, store: Store, clock: Callable[[], int] = now_ms) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.periodic = settings.mode == "periodic"
        self.hub = EventHub(settings.event_queue_size)
        self.lock = asyncio.Lock()
        self.market = Market()
        self._contracts: dict[str, ContractRec] = {}  # formed and not reported ended
        self._contract_ends: list[tuple[int, str]] = []  # (end_ms, id): when tier 1 stops
        self._windows: dict[str, int] = {}  # live order id -> power window (ms)
        self._event_seq = 0
        self._trade_seq = 0
        self._db_id = ""
        self.last_price = 0
        self.next_clearing_ms = 0

    # ------------------------------------------------------------------ loading
    async def load(self) -> None:
        snap = await self.store.load()
        now = self.clock()
        market = Market()
        windows: dict[str, int] = {}
        for r in snap.open_orders:
            o = ServiceOrder(
                r["id"], r["meter"], Side(r["side"]), r["energy_wh"], r["price"], r["expiry_ms"],
                frozenset(json.loads(r["partners"])), r["renews"], r["remaining"], r["seq"],
            )
            o.accepted_ms = r["accepted_ms"]
            o.window_ms = r["window_ms"]
            o.uncovered = bool(r["uncovered"])
            market.restore(o)
            if o.window_ms is not None:
                windows[o.id] = o.window_ms
        market.remember_ids(snap.closed_ids, snap.next_seq)
        contracts = {}
        ends: list[tuple[int, str]] = []
        for r in snap.contracts:
            rec = ContractRec.from_row(r)
            contracts[rec.contract_id] = rec
            if rec.end_ms > now:
                market.open_contract(rec.contract_id, rec.consumer, rec.supplier)
                ends.append((rec.end_ms, rec.contract_id))
        heapq.heapify(ends)
        self.market, self._windows, self._contracts, self._contract_ends = market, windows, contracts, ends
        self._event_seq = snap.last_event_seq
        self._trade_seq = int(snap.meta.get("trade_seq", "0"))
        self.last_price = int(snap.meta.get("last_price", "0"))
        if "db_id" in snap.meta:
            self._db_id = snap.meta["db_id"]
        else:
            self._db_id = secrets.token_hex(3)
            await self.store.apply(Changes(meta={"db_id": self._db_id}))
        self._gauges()
        log.info("book loaded", orders=len(market.book), contracts=len(contracts), mode=self.settings.mode,
                 last_event_seq=self._event_seq)

    # ------------------------------------------------------------- transactions
    def _event(self, tx: Tx, kind: matcher_pb2.MatchEvent.Kind.ValueType, meter: str, order_id: str = "",
               side: int = 0, remaining: int = 0, contract: ContractRec | None = None) -> None:
        self._event_seq += 1
        ev = matcher_pb2.MatchEvent(
            seq=self._event_seq, kind=kind, meter_id=meter, order_id=order_id, side=enum_value(common_pb2.Side, side),
            remaining_wh=remaining, time=ms_ts(tx.now_ms),
        )
        if contract is not None:
            ev.contract.CopyFrom(contract.msg())
        tx.events.append(ev)
        tx.changes.events.append((ev.seq, meter, ev.SerializeToString()))

    def _touch(self, tx: Tx, o: ServiceOrder, status: str | None = None) -> None:
        tx.touched[o.id] = o
        if status is not None:
            tx.closed_status[o.id] = status

    def _record_trades(self, tx: Tx, trades: list[Trade], orders: dict[str, ServiceOrder]) -> list[ContractRec]:
        """Contracts and MATCHED/PARTIALLY_MATCHED events for trades of one core call.

        ``orders`` holds every order the trades name (their state is right after the call).
        """
        filled: dict[str, int] = {}
        for t in trades:
            filled[t.buy_order] = filled.get(t.buy_order, 0) + t.energy_wh
            filled[t.sell_order] = filled.get(t.sell_order, 0) + t.energy_wh
        running = {oid: (orders[oid].remaining if orders[oid].live else 0) + q for oid, q in filled.items()}
        out = []
        for t in trades:
            rec = self._contract(tx, t)
            out.append(rec)
            for oid, meter, side in ((t.buy_order, t.buyer, common_pb2.SIDE_DEMAND),
                                     (t.sell_order, t.seller, common_pb2.SIDE_SUPPLY)):
                running[oid] -= t.energy_wh
                kind = Kind.KIND_MATCHED if running[oid] == 0 else Kind.KIND_PARTIALLY_MATCHED
                self._event(tx, kind, meter, oid, side, running[oid], rec)
                self._touch(tx, orders[oid])
        return out

    def _contract(self, tx: Tx, t: Trade) -> ContractRec:
        self._trade_seq += 1
        cid = f"c-{self._db_id}-{self._trade_seq:010d}"
        window = self._windows.get(t.buy_order) or self._windows.get(t.sell_order)
        start = tx.now_ms
        end = start + (window or self.settings.contract_duration_s * 1000)
        h = terms_hash(contract_id=cid, consumer=t.buyer, supplier=t.seller, energy_wh=t.energy_wh,
                       price_msat_per_kwh=t.price_msat_per_kwh, start_ms=start, end_ms=end, tier=int(t.tier))
        rec = ContractRec(cid, t.buyer, t.seller, t.energy_wh, t.price_msat_per_kwh, start, end, int(t.tier), h,
                          t.buy_order, t.sell_order, t.renews)
        tx.trades.append((t, rec))
        tx.changes.new_contracts.append(rec.row())
        tx.changes.meta["trade_seq"] = str(self._trade_seq)
        return rec

    async def _commit(self, tx: Tx) -> None:
        ch = tx.changes
        for oid, o in tx.touched.items():
            if o.live:
                status = "open"
            else:
                status = tx.closed_status.get(oid, "filled" if o.remaining == 0 else "cancelled")
            remaining = o.remaining if status != "filled" else 0
            if oid in tx.new_ids:
                ch.new_orders.append((
                    o.id, o.meter, int(o.side), o.energy, o.price, o.expiry_ms, partners_json(o.partners),
                    o.renews, remaining, o.seq, status, o.accepted_ms, o.window_ms, int(o.uncovered),
                ))
            else:
                ch.order_updates.append((remaining, status, int(o.uncovered), oid))
            if not o.live:
                self._windows.pop(oid, None)
            elif o.window_ms is not None:
                self._windows[oid] = o.window_ms
        for _, rec in tx.trades:
            self._contracts[rec.contract_id] = rec
            self.market.open_contract(rec.contract_id, rec.consumer, rec.supplier)
            heapq.heappush(self._contract_ends, (rec.end_ms, rec.contract_id))
            M.TRADES.labels(tier=str(rec.tier)).inc()
            M.MATCHED_WH.inc(rec.energy_wh)
        if ch:
            try:
                await self.store.apply(ch)
            except Exception as exc:
                log.exception("write failed; reloading the book from the database")
                await self.load()
                raise StorageFailed(str(exc)) from exc
        self.hub.publish(tx.events)
        self._gauges()

    def _gauges(self) -> None:
        book = self.market.book
        for name, side in (("supply", book.supply), ("demand", book.demand)):
            M.BOOK_ORDERS.labels(side=name).set(len(side.orders))
            M.BOOK_WH.labels(side=name).set(side.volume_wh)
        M.ACTIVE_CONTRACTS.set(len(self.market.active))

    # --------------------------------------------------------------- operations
    def validate_batch(self, orders: list[ServiceOrder], paths: list[str]) -> None:
        """Duplicates (in the book's history or within the batch) and renewals, before any change."""
        seen: set[str] = set()
        for o, path in zip(orders, paths):
            try:
                if o.id in seen:
                    raise DuplicateOrder("order_id", f"order {o.id!r} appears twice in the batch")
                seen.add(o.id)
                self.market.check(o)
            except MarketError as e:
                raise e.prefixed(path) from None

    async def submit(self, orders: list[ServiceOrder], paths: list[str]) -> list[SubmitResult]:
        """Accept validated orders (all or none) and, in continuous mode, match them."""
        async with self.lock:
            self.validate_batch(orders, paths)
            tx = Tx(self.clock())
            results = [self._submit_one(tx, o) for o in orders]
            await self._commit(tx)
        for o in orders:
            M.ORDERS.labels(side=o.side.name.lower()).inc()
        return results

    def _submit_one(self, tx: Tx, o: ServiceOrder) -> SubmitResult:
        tx.new_ids.add(o.id)
        self._touch(tx, o)
        if o.window_ms is not None:
            self._windows[o.id] = o.window_ms
        if self.periodic:
            self.market.add(o)
            return SubmitResult(o, o.remaining, [], STATUS.ORDER_STATUS_RESTING)
        t0 = time.perf_counter()
        res = self.market.submit(o, tx.now_ms)
        M.MATCH_LATENCY.observe(time.perf_counter() - t0)
        for x in res.expired:
            self._expired(tx, x)  # type: ignore[arg-type]
        involved: dict[str, ServiceOrder] = {o.id: o}
        for maker in res.makers:
            involved[maker.id] = maker  # type: ignore[assignment]
        contracts = self._record_trades(tx, res.trades, involved)
        remaining = o.remaining
        if o.live and o.side is Side.DEMAND and not o.uncovered:
            o.uncovered = True
            self._event(tx, Kind.KIND_UNCOVERED, o.meter, o.id, common_pb2.SIDE_DEMAND, o.remaining)
            M.UNCOVERED.inc()
        if remaining == 0:
            status = STATUS.ORDER_STATUS_FILLED
        elif contracts:
            status = STATUS.ORDER_STATUS_PARTIALLY_FILLED
        elif o.side is Side.DEMAND:
            status = STATUS.ORDER_STATUS_UNCOVERED
        else:
            status = STATUS.ORDER_STATUS_RESTING
        return SubmitResult(o, remaining, contracts, status)

    def _expired(self, tx: Tx, o: ServiceOrder) -> None:
        self._touch(tx, o, "expired")
        self._event(tx, Kind.KIND_EXPIRED, o.meter, o.id, int(o.side), o.remaining)
        M.EXPIRED.inc()

    async def cancel(self, order_id: str, meter_id: str) -> ServiceOrder:
        check_id("order_id", order_id)
        async with self.lock:
            o: ServiceOrder = self.market.cancel(order_id, meter_id or None)  # type: ignore[assignment]
            tx = Tx(self.clock())
            self._touch(tx, o, "cancelled")
            self._event(tx, Kind.KIND_CANCELLED, o.meter, o.id, int(o.side), o.remaining)
            await self._commit(tx)
        M.CANCELLED.inc()
        return o

    def active_contract(self, contract_id: str, now_ms: int) -> ContractRec:
        rec = self._contracts.get(contract_id)
        if rec is None or contract_id not in self.market.active or rec.end_ms <= now_ms:
            raise UnknownContract("contract_id", f"no active contract {contract_id!r}")
        return rec

    async def report_end(
        self, contract_id: str, outcome: matcher_pb2.ContractOutcome.ValueType, delivered_wh: int
    ) -> tuple[bool, SubmitResult | None]:
        check_id("contract_id", contract_id)
        if outcome not in (matcher_pb2.CONTRACT_OUTCOME_COMPLETED, matcher_pb2.CONTRACT_OUTCOME_CONSUMER_DEFAULTED,
                           matcher_pb2.CONTRACT_OUTCOME_SUPPLIER_DEFAULTED):
            raise InvalidOrder("outcome", f"unknown outcome {outcome}")
        async with self.lock:
            rec = self._contracts.get(contract_id)
            if rec is None:
                row = await self.store.contract(contract_id)
                if row is None:
                    raise UnknownContract("contract_id", f"no contract {contract_id!r}")
                return True, None
            if not 0 <= delivered_wh <= rec.energy_wh:
                raise InvalidOrder("delivered_wh", f"must be within 0..{rec.energy_wh}, got {delivered_wh}")
            tx = Tx(self.clock())
            rec.ended, rec.outcome, rec.delivered_wh = True, outcome, delivered_wh
            tx.changes.contract_ends.append((outcome, delivered_wh, contract_id))
            del self._contracts[contract_id]
            self.market.close_contract(contract_id)
            for meter in (rec.consumer, rec.supplier):
                self._event(tx, Kind.KIND_CONTRACT_ENDED, meter, contract=rec)
            released = None
            undelivered = rec.energy_wh - delivered_wh
            if undelivered > 0 and outcome != matcher_pb2.CONTRACT_OUTCOME_COMPLETED:
                released = await self._release(tx, rec, outcome, undelivered)
            await self._commit(tx)
        M.CONTRACT_ENDS.labels(outcome=matcher_pb2.ContractOutcome.Name(outcome)).inc()
        return False, released

    async def _release(self, tx: Tx, rec: ContractRec, outcome: int, energy: int) -> SubmitResult | None:
        """Put the undelivered energy of a defaulted contract back in the book."""
        consumer_defaulted = outcome == matcher_pb2.CONTRACT_OUTCOME_CONSUMER_DEFAULTED
        row = await self.store.order(rec.sell_order if consumer_defaulted else rec.buy_order)
        if row is None or (row["expiry_ms"] is not None and row["expiry_ms"] <= tx.now_ms):
            return None
        oid = f"rel-{rec.contract_id}"
        if self.market.knows(oid):
            return None
        o = ServiceOrder(oid, row["meter"], Side(row["side"]), energy, row["price"], row["expiry_ms"],
                         frozenset(json.loads(row["partners"])), None)
        o.accepted_ms = tx.now_ms
        o.window_ms = row["window_ms"]
        log.info("released back to the market", contract_id=rec.contract_id, order_id=oid, meter=o.meter,
                 side=o.side.name, energy_wh=energy)
        return self._submit_one(tx, o)

    async def extend(self, req: matcher_pb2.ExtendContractRequest, on_behalf: str | None = None) -> SubmitResult:
        """Tier 1: a demand of the contract's consumer, linked to it (validated here). With
        ``on_behalf`` (the calling meter), only that contract's consumer may extend it."""
        now = self.clock()
        check_id("contract_id", req.contract_id)
        async with self.lock:
            rec = self.active_contract(req.contract_id, now)
            if on_behalf is not None and on_behalf != rec.consumer:
                raise PermissionDenied("contract_id", f"meter {on_behalf!r} is not the consumer of {req.contract_id}")
            base = make_order(
                order_id=req.order_id, meter_id=rec.consumer, side=Side.DEMAND, energy_wh=req.energy_wh,
                price_msat_per_kwh=req.price_msat_per_kwh, now_ms=now,
                expiry_ms=time_ms(req.expiry, "expiry") if req.HasField("expiry") else None, renews=rec.contract_id,
            )
            o = ServiceOrder(base.id, base.meter, base.side, base.energy, base.price, base.expiry_ms,
                             base.partners, base.renews)
            o.accepted_ms = now
            o.window_ms = None
            self.validate_batch([o], [""])
            tx = Tx(now)
            result = self._submit_one(tx, o)
            await self._commit(tx)
        M.ORDERS.labels(side="demand").inc()
        return result

    async def clear_now(self) -> None:
        """Periodic mode: one uniform-price clearing of the whole book."""
        async with self.lock:
            now = self.clock()
            demand_before = {o.id: o for o in self.market.book.demand.orders.values()}
            supply_before = {o.id: o for o in self.market.book.supply.orders.values()}
            t0 = time.perf_counter()
            result = await asyncio.to_thread(clear, self.market, now)
            M.MATCH_LATENCY.observe(time.perf_counter() - t0)
            tx = Tx(now)
            for x in result.expired:
                self._expired(tx, x)  # type: ignore[arg-type]
            if result.price is not None:
                self.last_price = result.price
                tx.changes.meta["last_price"] = str(result.price)
                M.CLEARING_PRICE.set(result.price)
                involved = {**demand_before, **supply_before}
                self._record_trades(tx, result.trades, involved)  # type: ignore[arg-type]
            for o in self.market.book.demand.orders.values():
                if not o.uncovered:
                    o.uncovered = True
                    self._touch(tx, o)  # type: ignore[arg-type]
                    self._event(tx, Kind.KIND_UNCOVERED, o.meter, o.id, common_pb2.SIDE_DEMAND, o.remaining)
                    M.UNCOVERED.inc()
            await self._commit(tx)
        M.CLEARINGS.inc()
        log.info("cleared", price=result.price, volume_wh=result.volume_wh, trades=result.trade_count,
                 eligible_demand=result.eligible_demand, eligible_supply=result.eligible_supply)

    async def housekeeping(self) -> None:
        """Expire orders; stop treating contracts past their end as continuing."""
        async with self.lock:
            now = self.clock()
            tx = Tx(now)
            for o in self.market.expire(now):
                self._expired(tx, o)  # type: ignore[arg-type]
            ends = self._contract_ends
            while ends and ends[0][0] <= now:
                _, cid = heapq.heappop(ends)
                self.market.close_contract(cid)
            if tx.events:
                await self._commit(tx)
            else:
                self._gauges()

    # ------------------------------------------------------------------ queries
    async def book(self, depth: int, meters: Iterable[str]) -> matcher_pb2.GetBookResponse:
        async with self.lock:
            b = self.market.book
            resp = matcher_pb2.GetBookResponse(
                supply_wh=b.supply.volume_wh, demand_wh=b.demand.volume_wh,
                supply_orders=len(b.supply.orders), demand_orders=len(b.demand.orders),
                mode=matcher_pb2.MARKET_MODE_PERIODIC if self.periodic else matcher_pb2.MARKET_MODE_CONTINUOUS,
                last_clearing_price_msat_per_kwh=self.last_price, max_batch=self.settings.max_batch,
            )
            for side, out in ((b.supply, resp.supply), (b.demand, resp.demand)):
                for i, (price, energy, count) in enumerate(side.levels_best_first()):
                    if i >= depth:
                        break
                    out.add(price_msat_per_kwh=price, energy_wh=energy, orders=count)
            for m in dict.fromkeys(meters):
                for side in (b.supply, b.demand):
                    for o in side.orders_of(m):
                        resp.orders.append(order_msg(o))  # type: ignore[arg-type]
            if self.periodic and self.next_clearing_ms:
                resp.next_clearing.CopyFrom(ms_ts(self.next_clearing_ms))
            return resp

    async def contracts(self, meter: str, active_only: bool, limit: int,
                        before: int = 0) -> tuple[list[ContractRec], int]:
        """A page of contracts, newest first, stored before row ``before`` (0: from the newest),
        and the row to continue before (0: this was the last page)."""
        rows = await self.store.contracts(meter, active_only, self.clock(), limit + 1, before)
        more = len(rows) > limit
        rows = rows[:limit]
        return [ContractRec.from_row(r) for r in rows], (rows[-1]["rowid"] if more and rows else 0)

    async def events_since(self, from_seq: int, meters: frozenset[str]) -> list[tuple[int, bytes]]:
        return await self.store.events_since(from_seq, sorted(meters))

    @property
    def last_event_seq(self) -> int:
        return self._event_seq

    # ------------------------------------------------------------------- loops
    async def clearing_loop(self) -> None:
        interval_ms = max(1, int(self.settings.clearing_interval_s * 1000))
        while True:
            now = self.clock()
            self.next_clearing_ms = (now // interval_ms + 1) * interval_ms
            await asyncio.sleep((self.next_clearing_ms - now) / 1000)
            try:
                await self.clear_now()
            except StorageFailed:
                log.error("clearing not stored; will retry next interval")

    async def housekeeping_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.housekeeping_interval_s)
            try:
                await self.housekeeping()
            except StorageFailed:
                log.error("housekeeping not stored; will retry")


__all__ = ["ContractRec", "Matcher", "StorageFailed", "SubmitResult"]
