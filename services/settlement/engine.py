"""Settlement's engine: the lifecycle of contracts, wired to its parts.

A match from the matcher becomes a contract both meters sign (:meth:`Engine.propose`); an
active contract gets one payment worker (:mod:`.payments`) that pays its increments as its
ledger fills from the meters' readings (:mod:`.readings`); a contract ends at its end time,
when fully delivered, when a party goes silent (:meth:`Engine.sweep_forever`), when a party
ends it, or when its consumer does not pay; once its last increment is settled it is
finished: summary stored, matcher and meters told (:mod:`.outbound`), settlement hash anchored.

Durability across a crash: what a contract owes others (its contract and settlement leaves for
the anchor, its end for the matcher) is written to the store's outbox in the same transaction as
the state change that owes it, and delivered from there, retried until it is (each delivery is
idempotent at its receiver); a restarted settlement delivers whatever is still queued
(:meth:`Engine.load`). A match is stored (as a proposed contract, or a queued rejection) before
the matcher feed's position moves past it (:meth:`Engine.admit`).

The parts share only what they must: the store, the meter registry (:mod:`.registry`) and the
contracts in memory (:mod:`.live`). Every proposal is supervised like a worker: a failed
write is retried (the meters sign idempotently), and a contract that cannot be proposed is
rejected rather than left proposed.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Coroutine, Iterable
from typing import Any

import grpc
import structlog

from p2pep.anchor.client import AnchorServiceError
from p2pep.canonical import canonical_json, settlement_hash
from p2pep.identity import service
from p2pep.metering.signing import MeterKey
from p2pep.pbconv import now_ms, ts_ms
from p2pep.servicekit import Backoff, GaveUp, supervised
from p2pep.servicekit.channels import channel
from p2pep.servicekit.errors import FailedPrecondition
from p2pep.servicekit.tls import Tls, service_tls
from p2pep.settings.settlement import SettlementSettings
from p2pep.settling.contracts import (
    Contract,
    ContractError,
    ContractState,
    ContractTerms,
    EndReason,
    settlement_summary,
)
from p2pep.v1 import common_pb2, matcher_pb2_grpc, meter_pb2, settlement_pb2
from services.settlement import metrics
from services.settlement.live import LiveContract, MeterLink, from_row, new_ledger
from services.settlement.outbound import notify_meters, outcome_of, send_end
from services.settlement.payments import ContractWorker
from services.settlement.readings import ReadingIngest
from services.settlement.registry import MeterRegistry
from services.settlement.store import OutboxItem, Store, dumps
from services.settlement.views import SettlementViews

log = structlog.get_logger("settlement")

__all__ = ["Engine", "LiveContract", "MeterLink"]


class Engine:
    def __init__(self, settings: SettlementSettings, store: Store,
                 matcher: matcher_pb2_grpc.MatcherServiceAsyncStub | None = None, anchor: Any | None = None,
                 summary_key: MeterKey | None = None) -> None:
        self.s = settings
        # signs settlement summaries in contract documents (same key type as a meter's)
        self.summary_key = summary_key or MeterKey.load_or_create(settings.summary_key_path())
        self.store = store
        self.matcher = matcher
        self.anchor = anchor  # AnchorClient-like: add_leaf(kind, contract_id, leaf_hash), proofs(contract_id)
        self._tls: Tls | None = None
        self.meters = MeterRegistry(store, self.dial_meter)
        self.contracts: dict[str, LiveContract] = {}  # the open ones only (see services.settlement.live)
        # what left memory, as counts: contracts by state, defaulted ones by consumer (gauges)
        self.settled_states: Counter[str] = Counter()
        self.settled_defaults: Counter[str] = Counter()
        # held from a reading's attribution to its ledgers, and by whatever ends a contract or
        # closes its ledger: a contract never changes state under a reading being stored
        self.ledger_lock = asyncio.Lock()
        self.readings = ReadingIngest(store, self.meters, self.contracts, self.ledger_lock)
        self.views = SettlementViews(store, self.meters, self.contracts, anchor, self.summary_key)
        self.worker = ContractWorker(settings, store, self.meters, self, self.ledger_lock)
        self._backoff = Backoff(settings.worker_backoff_initial_s, settings.worker_backoff_max_s)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._delivering: set[tuple[str, str]] = set()

    # --- start / stop ---------------------------------------------------------------
    async def load(self) -> None:
        """Meters, the open contracts (their workers restarted), what the outbox still owes.
        Settled and rejected contracts stay in the store (read on demand, page by page)."""
        await self.meters.load()
        rows = await self.store.open_contracts()
        paid = await self.store.settled_payments(r["contract_id"] for r in rows)
        for row in rows:
            lc = from_row(row, paid.get(row["contract_id"], []))
            self.contracts[lc.cid] = lc
            if lc.contract.state is ContractState.PROPOSED:
                self.spawn(self._reject(lc, "settlement restarted before both parties signed"))
            else:
                self._start_worker(lc)
        self.settled_states = Counter(await self.store.contract_states())
        self.settled_states.subtract(Counter(lc.contract.state.value for lc in self.contracts.values()))
        self.settled_defaults.update(await self.store.defaults_by_consumer())
        self._gauge()
        self._deliver_soon(await self.store.outbox())
        log.info("settlement loaded", meters=len(self.meters), open_contracts=len(self.contracts),
                 settled_contracts=sum(self.settled_states.values()), summary_pubkey=self.summary_key.pubkey_hex)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in the background, cancelled at :meth:`stop`, never failing unseen."""
        t = asyncio.create_task(coro, name=getattr(coro, "__qualname__", None))
        self._tasks.add(t)
        t.add_done_callback(self._task_done)
        return t

    def _task_done(self, t: asyncio.Task[Any]) -> None:
        self._tasks.discard(t)
        if t.cancelled() or t.exception() is None:
            return
        exc = t.exception()
        metrics.TASK_FAILURES.labels("other").inc()
        log.error("settlement task failed", task=t.get_name(),
                  exc_info=(type(exc), exc, exc.__traceback__) if exc else None)

    async def stop(self) -> None:
        self._stopping = True
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.meters.close()

    def _gauge(self) -> None:
        counts = Counter(self.settled_states)
        counts.update(lc.contract.state.value for lc in self.contracts.values())
        for st in ContractState:
            metrics.CONTRACTS.labels(st.value).set(counts.get(st.value, 0))

    def faults_changed(self) -> None:
        metrics.CONTRACTS_FAULTED.set(sum(1 for lc in self.contracts.values() if lc.fault and not lc.finished))

    # --- the parts' entry points, as the servicer calls them -------------------------
    def dial_meter(self, address: str, meter_id: str) -> grpc.aio.Channel:
        """A channel to meter ``meter_id``'s MeterService, as settlement (mutual TLS; the
        meter's certificate must name ``meter_id``, wherever ``address`` points)."""
        if self._tls is None:
            self._tls = service_tls(self.s, service("settlement"))
        return channel(address, peer=meter_id, tls=self._tls)

    async def register_meter(self, meter_id: str, pubkey: str, node_pubkey: str, address: str, role: str,
                             node_address: str = "", location: tuple[float, float] | None = None) -> int:
        return await self.meters.register(meter_id, pubkey, node_pubkey, address, role, node_address, location)

    async def ingest(self, msg: common_pb2.Reading) -> settlement_pb2.ReadingAck:
        return await self.readings.ingest(msg)

    def record(self, lc: LiveContract) -> settlement_pb2.ContractRecord:
        return self.views.record(lc)

    async def contract(self, contract_id: str) -> LiveContract:
        """The contract: the open one in memory, else as stored (NotFound if none)."""
        return await self.views.contract(contract_id)

    async def list_contracts(self, meter_id: str = "", states: Iterable[int] = (), page_size: int = 0,
                             page_token: str = "") -> tuple[list[settlement_pb2.ContractRecord], str]:
        return await self.views.list_contracts(meter_id, states, page_size, page_token)

    def _retire(self, lc: LiveContract) -> None:
        """A finished contract, safely stored, leaves memory (it is read from the store from now on)."""
        if lc.finished and self.contracts.get(lc.cid) is lc:
            del self.contracts[lc.cid]
            self.settled_states[lc.contract.state.value] += 1
            if lc.contract.state is ContractState.DEFAULTED:
                self.settled_defaults[lc.terms.consumer] += 1

    async def energy(self, meter_id: str, column: str, t0: int, t1: int) -> tuple[int, int]:
        return await self.views.energy(meter_id, column, t0, t1)

    async def document(self, contract_id: str) -> str:
        return await self.views.document(contract_id)

    # --- proposal -------------------------------------------------------------------
    async def propose(self, mc: common_pb2.Contract) -> None:
        """Turn a match into a contract both meters sign; then deliver and pay."""
        lc = await self.admit(mc)
        if lc is not None:
            await self.sign(lc)

    async def admit(self, mc: common_pb2.Contract) -> LiveContract | None:
        """Store a match durably: as a proposed contract (returned, for :meth:`sign`), or, if
        it cannot become one, as a rejection queued for the matcher (None). None also for a
        match already known. Raises (nothing stored) if the store fails.

        The terms name both meters' keys and LND nodes as they are registered now; what
        is signed is final (a later re-registration changes no contract's payee)."""
        if mc.contract_id in self.contracts or await self.store.contract(mc.contract_id) is not None:
            return None
        cons, sup = self.meters.get(mc.consumer), self.meters.get(mc.supplier)
        start = ts_ms(mc.start) if mc.HasField("start") else now_ms()
        end = ts_ms(mc.end) if mc.HasField("end") else 0
        if end <= start:
            end = start + self.s.contract_period_s * 1000
        if cons is None or sup is None:
            log.warning("match for an unregistered meter", contract_id=mc.contract_id)
            await self._owe(self._matcher_end(mc.contract_id, EndReason.REJECTED, 0, consumer_side=cons is None))
            return None
        try:
            terms = ContractTerms(
                contract_id=mc.contract_id, consumer=mc.consumer, supplier=mc.supplier,
                consumer_pubkey=cons.row.pubkey, supplier_pubkey=sup.row.pubkey,
                consumer_node=cons.row.node_pubkey, supplier_node=sup.row.node_pubkey, energy_wh=mc.energy_wh,
                price_msat_per_kwh=mc.price_msat_per_kwh, start_ms=start, end_ms=end, tier=1,
                increment_wh=self.s.increment_wh,
            )
        except ContractError as exc:
            # e.g. a meter registered without a usable LND node: nobody could be paid under it
            log.warning("match gives invalid terms: rejected", contract_id=mc.contract_id, error=str(exc))
            await self._owe(self._matcher_end(mc.contract_id, EndReason.REJECTED, 0,
                                              consumer_side=exc.field is not None and exc.field.startswith("consumer")))
            return None
        lc = LiveContract(Contract(terms), new_ledger(terms), int(mc.tier))
        await self.save(lc)
        self.contracts[terms.contract_id] = lc
        return lc

    async def sign(self, lc: LiveContract) -> None:
        """Both meters sign an admitted contract, then it is active (retried; rejected if it
        cannot be)."""
        def failed(n: int, exc: Exception) -> None:
            lc.fault = f"{type(exc).__name__}: {exc}"[:300]
            metrics.TASK_FAILURES.labels("proposal").inc()
            log.exception("contract proposal failed", contract_id=lc.cid, failures_in_a_row=n,
                          attempts=self.s.worker_attempts)

        try:
            await supervised(lambda: self._sign_and_activate(lc), on_failure=failed, backoff=self._backoff,
                             attempts=self.s.worker_attempts)
            lc.fault = ""
        except GaveUp as exc:
            lc.contract = Contract(lc.terms)
            try:
                await self._reject(lc, f"settlement fault: {exc}")
            except Exception:
                log.exception("contract rejected in memory only", contract_id=lc.cid)
                lc.finished = True

    async def _sign_and_activate(self, lc: LiveContract) -> None:
        """Both meters sign (idempotent per contract), then the contract is active and its
        worker starts. Safe to repeat from the top after a failure."""
        cons, sup = self.meters[lc.terms.consumer], self.meters[lc.terms.supplier]
        lc.contract = Contract(lc.terms)
        await self.save(lc)
        request = meter_pb2.SignContractRequest(terms_json=canonical_json(lc.terms.canonical()).decode())
        # a meter still heard from is waited for if its channel is between connection attempts
        # (a lossy link reset the last handshake): its contract is not rejected for that
        await asyncio.gather(cons.reachable(self.s.party_silence_s), sup.reachable(self.s.party_silence_s))
        results = await asyncio.gather(cons.stub.SignContract(request, timeout=90),
                                       sup.stub.SignContract(request, timeout=90), return_exceptions=True)
        for party, res in zip(("consumer", "supplier"), results):
            if isinstance(res, grpc.aio.AioRpcError):
                log.warning("contract refused", contract_id=lc.cid, party=party, detail=res.details())
                await self._reject(lc, f"{party} refused: {res.details()}", consumer_side=party == "consumer")
                return
            if isinstance(res, BaseException):
                raise res
            try:
                lc.contract = lc.contract.with_signature(party, bytes(res.signature))
            except ContractError as exc:
                await self._reject(lc, str(exc), consumer_side=party == "consumer")
                return
        lc.contract = lc.contract.activate(now_ms())
        t = lc.terms
        await self.save(lc, self._anchor_leaf("anchor_contract", lc.cid, t.hash()))
        log.info("contract active", contract_id=lc.cid, consumer=t.consumer, supplier=t.supplier,
                 energy_wh=t.energy_wh, price=t.price_msat_per_kwh, tier=lc.matcher_tier)
        self._start_worker(lc)
        await self.notify(lc)

    async def _reject(self, lc: LiveContract, why: str, consumer_side: bool = True) -> None:
        lc.contract = lc.contract.end(EndReason.REJECTED, now_ms())
        lc.finished = True
        await self.save(lc, self._matcher_end(lc.cid, EndReason.REJECTED, 0, consumer_side=consumer_side))
        self._retire(lc)
        self._gauge()
        metrics.CONTRACT_ENDS.labels(EndReason.REJECTED.value).inc()
        log.info("contract rejected", contract_id=lc.cid, why=why)

    def _start_worker(self, lc: LiveContract) -> None:
        if lc.task is None or lc.task.done():  # one worker per contract, however often this is asked
            lc.task = self.spawn(self.worker.run(lc))

    # --- ending ---------------------------------------------------------------------
    async def end_contract(self, contract_id: str, reason: EndReason) -> LiveContract:
        lc = await self.views.contract(contract_id)
        async with self.ledger_lock:
            if lc.contract.state.final:
                return lc
            if lc.contract.state is not ContractState.ACTIVE:
                raise FailedPrecondition("contract_id", f"contract {contract_id} is not active yet")
            lc.contract = lc.contract.end(reason, now_ms())
            lc.ledger.close()
            await self.save(lc)
        lc.wake.set()
        log.info("contract ending", contract_id=contract_id, reason=reason.value,
                 delivered_wh=lc.ledger.delivered_wh, paid_wh=lc.ledger.paid_wh)
        return lc

    async def finish(self, lc: LiveContract) -> None:
        """The contract is over and its last increment settled: summary, matcher, anchor, meters."""
        c, led = lc.contract, lc.ledger
        lc.summary = settlement_summary(c, wh_delivered=led.delivered_wh, msat_paid=led.paid_msat,
                                        increments_paid=led.increments_paid, wh_paid=led.paid_wh)
        lc.finished = True
        assert c.end_reason is not None
        await self.save(lc, [*self._matcher_end(lc.cid, c.end_reason, led.delivered_wh),
                             *self._anchor_leaf("anchor_settlement", lc.cid, settlement_hash(lc.summary))])
        if c.end_reason is not None:
            metrics.CONTRACT_ENDS.labels(c.end_reason.value).inc()
        log.info("contract settled", contract_id=lc.cid, state=c.state.value,
                 reason=c.end_reason.value if c.end_reason else None, **{k: lc.summary[k] for k in (
                     "wh_delivered", "wh_paid", "msat_paid", "increments_paid")})
        self._retire(lc)
        await self.notify(lc)
        self._gauge()

    async def notify(self, lc: LiveContract) -> None:
        await notify_meters(self.meters, self.record(lc))

    async def save(self, lc: LiveContract, owed: list[OutboxItem] | None = None) -> None:
        """Store the contract's state and, in the same transaction, what it now owes others
        (``owed``), then start delivering that."""
        c, led = lc.contract, lc.ledger
        await self.store.save_contract({
            "contract_id": lc.cid,
            "terms_json": canonical_json(lc.terms.canonical()).decode(),
            "state": c.state.value,
            "consumer_sig": c.consumer_signature,
            "supplier_sig": c.supplier_signature,
            "activated_ms": c.activated_at_ms,
            "ended_ms": c.ended_at_ms,
            "end_reason": c.end_reason.value if c.end_reason else None,
            "consumer_wh": led.consumer_wh,
            "supplier_wh": led.supplier_wh,
            "closed_at_wh": led.delivered_wh if led.closed else None,
            "summary_json": dumps(lc.summary) if lc.summary else None,
            "matcher_tier": lc.matcher_tier,
            "consumer": lc.terms.consumer,
            "supplier": lc.terms.supplier,
        }, owed or [])
        self._gauge()
        self._deliver_soon(owed or [])

    # --- the outbox: what contracts owe others, durable until delivered ---------------
    def _matcher_end(self, cid: str, reason: EndReason, delivered_wh: int,
                     consumer_side: bool | None = None) -> list[OutboxItem]:
        if self.matcher is None:
            return []
        return [OutboxItem("matcher_end", cid, {"outcome": int(outcome_of(reason, consumer_side)),
                                                "delivered_wh": delivered_wh})]

    def _anchor_leaf(self, kind: str, cid: str, leaf: bytes) -> list[OutboxItem]:
        return [] if self.anchor is None else [OutboxItem(kind, cid, {"leaf": leaf.hex()})]

    async def _owe(self, items: list[OutboxItem]) -> None:
        await self.store.enqueue(items)
        self._deliver_soon(items)

    def _deliver_soon(self, items: Iterable[OutboxItem]) -> None:
        for item in items:
            key = (item.kind, item.contract_id)
            if key not in self._delivering:
                self._delivering.add(key)
                self.spawn(self._deliver(item))

    async def _deliver(self, item: OutboxItem) -> None:
        """Deliver one queued item, retrying (with backoff, for as long as it takes) while its
        receiver is unreachable; then delete it from the outbox."""
        def failed(n: int, exc: Exception) -> None:
            log.info("outbox delivery failed, will retry", kind=item.kind, contract_id=item.contract_id,
                     attempt=n, error=str(exc))

        try:
            try:
                await supervised(lambda: self._send(item), on_failure=failed,
                                 backoff=Backoff(self.s.worker_backoff_initial_s, 30.0),
                                 retry_if=lambda e: not isinstance(e, AnchorServiceError))
            except AnchorServiceError as exc:  # a permanent refusal: retrying cannot help
                log.error("anchor refused a leaf", kind=item.kind, contract_id=item.contract_id, error=str(exc))
            await self.store.delivered(item)
        finally:
            self._delivering.discard((item.kind, item.contract_id))

    async def _send(self, item: OutboxItem) -> None:
        p = item.payload
        if item.kind == "matcher_end":
            if self.matcher is not None:
                await send_end(self.matcher, item.contract_id, p["outcome"], p["delivered_wh"])
        elif item.kind in ("anchor_contract", "anchor_settlement"):
            if self.anchor is not None:
                leaf_kind = "contract" if item.kind == "anchor_contract" else "settlement"
                await self.anchor.add_leaf(leaf_kind, item.contract_id, bytes.fromhex(p["leaf"]))
        else:
            log.error("unknown outbox item dropped", kind=item.kind, contract_id=item.contract_id)

    async def sweep_forever(self) -> None:
        """End contracts at their end time, when fully delivered, or when a party went silent."""
        def failed(n: int, exc: Exception) -> None:
            metrics.TASK_FAILURES.labels("sweeper").inc()
            log.exception("contract sweep failed", failures_in_a_row=n)

        while not self._stopping:
            await asyncio.sleep(self.s.sweep_interval_s)
            await supervised(self._sweep, on_failure=failed, backoff=self._backoff)

    async def _sweep(self) -> None:
        t, mono = now_ms(), time.monotonic()
        for lc in list(self.contracts.values()):
            if lc.contract.state is not ContractState.ACTIVE:
                continue
            reason: EndReason | None = None
            if lc.ledger.delivered_wh >= lc.terms.energy_wh:
                reason = EndReason.ENERGY_DELIVERED
            elif t >= lc.terms.end_ms:
                reason = EndReason.END_TIME
            elif mono - self.meters[lc.terms.supplier].last_seen > self.s.party_silence_s:
                reason = EndReason.SUPPLIER_GONE
            elif mono - self.meters[lc.terms.consumer].last_seen > self.s.party_silence_s:
                reason = EndReason.CONSUMER_GONE
            if reason is not None:
                await self.end_contract(lc.cid, reason)
