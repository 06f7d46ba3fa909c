"""Contracts from the meter's side: signing what it agrees to, taking settlement's
reports, polling them, and ending its contracts when it leaves.

Money stays bound to what was signed: the terms name both LND nodes and this meter signs
only terms that name its own node; as consumer, only terms whose supplier key and node are
the ones the supplier registered with settlement (asked by this meter itself). A report
(``UpdateContract``, a poll) moves state and progress only: one that restates the terms,
parties or nodes differently is refused whole, and a contract starts running here only
when the report carries the counterparty's valid signature over the same terms."""

from __future__ import annotations

import asyncio
import time

import grpc
import structlog

from p2pep.metering.contract_book import ContractView, Party
from p2pep.metering.ordering import ordered_wh
from p2pep.metering.request_checks import (
    Code,
    Refusal,
    SigningPolicy,
    check_counterparty_registered,
    check_counterparty_signature,
    check_report_matches_terms,
    check_terms,
    fee_limit_msat,
    parse_terms,
)
from p2pep.paging import follow
from p2pep.pbconv import now_ms, ts_ms
from p2pep.settings.meter import parse_node_address
from p2pep.settling.contracts import ContractState, ContractTerms, sign_contract
from p2pep.settling.increments import amount_msat
from p2pep.settling.records import STATE_FROM_PB, contract_record
from p2pep.v1 import settlement_pb2
from services.meter.lightning import ensure_channel
from services.meter.parts import MeterParts, MeterState

log = structlog.get_logger("meter.contracts")

S = settlement_pb2


def record_of(v: ContractView) -> S.ContractRecord:
    """The meter's view of a contract as a ContractRecord (its own accounting for paid Wh)."""
    return contract_record(
        v.terms, v.state, matcher_tier=v.matcher_tier,
        delivered_wh=max(v.delivered_wh, v.used_wh if v.party is Party.CONSUMER else 0),
        paid_wh=v.paid_wh, paid_msat=v.paid_msat, increments_paid=v.increments, end_reason=v.end_reason,
    )


class ContractDesk:
    def __init__(self, parts: MeterParts, meter: MeterState) -> None:
        self.p = parts
        self.m = meter
        self._sign_lock = asyncio.Lock()
        self._peer_locks: dict[str, asyncio.Lock] = {}

    # -- SignContract ---------------------------------------------------------------------------

    def policy(self) -> SigningPolicy:
        s = self.p.s
        h = self.p.household  # the household's own open orders may widen the standing price
        return SigningPolicy(s.meter_id, self.p.key.pubkey_hex, self.m.node_pubkey, s.role,
                             h.price_limit(Party.CONSUMER), s.max_increment_wh, s.max_contract_s * 1000,
                             ask_msat_per_kwh=h.price_limit(Party.SUPPLIER))

    async def sign(self, terms_json: str) -> tuple[bytes, str]:
        m, p = self.m, self.p
        if not m.ready.is_set():
            raise Refusal(Code.UNAVAILABLE, "meter", "the meter is starting")
        if m.leaving:
            raise Refusal(Code.FAILED_PRECONDITION, "meter", "the meter is leaving: it signs no new contract")
        terms = parse_terms(terms_json)
        async with self._sign_lock:
            existing = p.book.get(terms.contract_id)
            if existing is not None:
                if existing.terms != terms:
                    raise Refusal(Code.FAILED_PRECONDITION, "terms_json.contract_id",
                                  f"{terms.contract_id} was already signed with other terms")
                return existing.signature, m.node_pubkey
            now = now_ms()
            ordered, committed = await self._order_bounds(terms, now)
            party = check_terms(terms, self.policy(), now_ms=now, ordered_wh=ordered, committed_wh=committed)
        if party is Party.CONSUMER:
            check_counterparty_registered(terms, party, await self._registered(terms.supplier))
            await self._ensure_capacity(terms)
        async with self._sign_lock:
            if terms.contract_id in p.book:  # signed meanwhile by a concurrent call
                return p.book.get(terms.contract_id).signature, m.node_pubkey  # type: ignore[union-attr]
            view = ContractView(terms, party, sign_contract(terms, p.key), now_ms())
            p.book.add(view)
            await p.store.save_contract(view)
            if party is Party.CONSUMER:
                await m.note_consumer_contract()
        log.info("contract signed", contract_id=terms.contract_id, party=party.value, energy_wh=terms.energy_wh,
                 price=terms.price_msat_per_kwh, counterparty=terms.supplier if party is Party.CONSUMER else terms.consumer)
        return view.signature, m.node_pubkey

    async def _registered(self, meter_id: str) -> tuple[str, str] | None:
        """``(pubkey, node_pubkey)`` settlement holds for ``meter_id`` (None: not registered),
        asked over this meter's own channel to settlement."""
        try:
            info = await self.m.meter_info(meter_id)
        except grpc.aio.AioRpcError as e:
            raise Refusal(Code.UNAVAILABLE, "terms_json.supplier",
                          f"cannot check meter {meter_id}'s registration with settlement: {e.code().name}") from e
        return None if info is None else (info.pubkey, info.node_pubkey)

    async def _order_bounds(self, terms: ContractTerms, now: int) -> tuple[int | None, int]:
        """Energy this meter's recent orders on the contract's side asked for, and what
        open contracts signed in the same period already took of it."""
        s = self.p.s
        party = Party(terms.party_of(s.meter_id) or "consumer")
        if not s.check_orders_on_sign or self.p.trader is None:
            return None, 0
        # orders of the last few windows: a contract may come from an order the matcher
        # released again after another contract ended early
        since = now - 4 * s.window_s * 1000 // s.accel - 120_000
        side = "demand" if party is Party.CONSUMER else "supply"
        ordered = ordered_wh(await self.p.store.orders(since), side, since)
        committed = sum(v.terms.energy_wh for v in self.p.book.of(party) if v.signed_ms >= since)
        return ordered, committed

    async def _ensure_capacity(self, terms: ContractTerms) -> None:
        """Never agree to a contract it cannot pay: its channels must be able to send what
        is left to pay of its open contracts plus this one (with fee margins). In an ad
        hoc microgrid it pays the supplier straight, over a channel of its own to the
        supplier's node; through a hub, over its hub channels. If they cannot, it opens
        another channel (and waits until it is active, someone mines blocks); if that
        fails (e.g. the wallet is empty), it refuses."""
        p = self.p
        adhoc = p.s.network_mode == "adhoc"
        if adhoc:
            node = terms.supplier_node
            peer, host = await self.peer_node(terms.supplier)
            if peer != node:
                host = ""  # p2p address of another node: dial nothing, use a channel that exists
        elif p.s.hub:
            parsed = parse_node_address(p.s.hub)
            assert parsed is not None
            node, host = parsed
        else:
            return
        field = "terms_json.supplier" if adhoc else "terms_json.energy_wh"
        lock = self._peer_locks.setdefault(node, asyncio.Lock())
        async with lock:
            open_ = [v for v in p.book.of(Party.CONSUMER) if not adhoc or v.terms.supplier == terms.supplier]
            left = [amount_msat(0, terms.energy_wh, terms.price_msat_per_kwh)]
            left += [amount_msat(min(v.paid_wh, v.terms.energy_wh), v.terms.energy_wh, v.terms.price_msat_per_kwh)
                     for v in open_]
            need_msat = sum(a + fee_limit_msat(a) for a in left if a)
            need_sat = -(-need_msat // 1000)
            try:
                await ensure_channel(p.lnd, node, host, need_sat=need_sat, route_msat=need_msat,
                                     open_sat=max(p.s.channel_sat, 2 * need_sat), wait_s=p.s.channel_wait_s)
            except Exception as e:
                raise Refusal(Code.FAILED_PRECONDITION, field,
                              f"its channels to {node[:16]}... cannot send the {need_sat} sat its contracts "
                              f"need: {e}") from e

    async def peer_node(self, meter_id: str) -> tuple[str, str]:
        """``(node pubkey, p2p host:port)`` of another meter, as it registered with
        settlement (ListMeters), else from ``P2PEP_METER_PEERS``."""
        node = host = ""
        try:
            info = await self.m.meter_info(meter_id)
        except grpc.aio.AioRpcError as e:
            log.info("settlement did not list meters", code=e.code().name)
            info = None
        if info is not None:
            node, host = info.node_pubkey, info.node_address
        fallback = parse_node_address(self.p.s.peer_addresses().get(meter_id, ""))
        if fallback is not None:
            node = node or fallback[0]
            if fallback[0] == node:
                host = host or fallback[1]
        return node, host

    # -- settlement's reports -----------------------------------------------------------------------

    async def update(self, rec: S.ContractRecord, *, strict: bool = True) -> ContractView | None:
        """Take settlement's report on a contract this meter signed."""
        m, p = self.m, self.p
        cid = rec.contract.contract_id
        view = p.book.get(cid)
        if view is None:
            if strict:
                raise Refusal(Code.FAILED_PRECONDITION, "contract.contract_id",
                              f"{cid!r} was not signed by this meter")
            return None
        if rec.terms_json:
            terms = parse_terms(rec.terms_json)
            if terms != view.terms:
                raise Refusal(Code.INVALID_ARGUMENT, "terms_json", "differs from the terms this meter signed")
        c = rec.contract
        check_report_matches_terms(view.terms, {
            "contract_id": c.contract_id, "consumer": c.consumer, "supplier": c.supplier, "energy_wh": c.energy_wh,
            "price_msat_per_kwh": c.price_msat_per_kwh, "start_ms": ts_ms(c.start) if c.HasField("start") else None,
            "end_ms": ts_ms(c.end) if c.HasField("end") else None, "increment_wh": rec.increment_wh,
            "consumer_node": rec.consumer_node, "supplier_node": rec.supplier_node,
        }, bytes(c.hash))
        state = STATE_FROM_PB.get(rec.state)
        if state is None:
            raise Refusal(Code.INVALID_ARGUMENT, "state", "must be a contract state")
        if view.state is ContractState.PROPOSED and state not in (ContractState.PROPOSED, ContractState.REJECTED):
            check_counterparty_signature(view.terms, view.party, bytes(
                rec.supplier_signature if view.party is Party.CONSUMER else rec.consumer_signature))
        upd = p.book.apply_report(
            cid, state=state, delivered_wh=rec.delivered_wh, paid_wh=rec.paid_wh, paid_msat=rec.paid_msat,
            increments_paid=rec.increments_paid, end_reason=rec.end_reason, matcher_tier=int(rec.contract.tier),
        )
        if upd.changed:
            await p.store.save_contract(view)
            m.changed()
        if upd.activated:
            log.info("contract active", contract_id=cid, party=view.party.value, energy_wh=view.terms.energy_wh)
            if view.party is Party.CONSUMER:
                m.contract_activated(view.signed_ms)
        if upd.ended:
            log.info("contract ended", contract_id=cid, state=view.state.value, reason=view.end_reason,
                     delivered_wh=view.delivered_wh, paid_wh=view.paid_wh, paid_msat=view.paid_msat)
        m.evaluate_relay()
        return view

    async def refresh(self, contract_id: str, *, must_reach: bool = False) -> ContractView | None:
        """Ask settlement for a contract's state now (when the meter's view looks stale).
        If settlement cannot be reached the meter's own view is returned, or, with
        ``must_reach``, a Refusal UNAVAILABLE: the caller's answer depends on settlement's
        word, so the request is one to ask again, not one to refuse for good."""
        try:
            rec = await self.p.settlement.GetContract(S.GetContractRequest(contract_id=contract_id), timeout=5)
        except grpc.aio.AioRpcError as e:
            log.info("contract not refreshed", contract_id=contract_id, code=e.code().name)
            if must_reach and e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise Refusal(Code.UNAVAILABLE, "to_wh", "a partial increment, and settlement cannot be asked now "
                              f"whether {contract_id} has ended ({e.code().name}); ask again") from None
            return self.p.book.get(contract_id)
        try:
            return await self.update(rec, strict=False)
        except Refusal as r:
            log.error("settlement reports a contract unlike the one signed", contract_id=contract_id, error=str(r))
            return self.p.book.get(contract_id)

    async def poll_forever(self) -> None:
        """Settlement's UpdateContract calls are best effort: reconcile with its list."""
        p = self.p
        while True:
            await asyncio.sleep(p.s.contract_poll_s)
            if not any(not v.final for v in p.book.all()):
                continue
            try:
                contracts = await follow(p.settlement.ListContracts,
                                         S.ListSettlementContractsRequest(meter_id=p.s.meter_id), "contracts", 5)
            except grpc.aio.AioRpcError as e:
                log.debug("contract poll failed", code=e.code().name)
                continue
            except Exception:
                log.exception("contract poll failed")
                continue
            for rec in contracts:
                view = p.book.get(rec.contract.contract_id)
                if view is None or view.final:
                    continue
                try:
                    await self.update(rec, strict=False)
                except Refusal as r:
                    log.error("settlement lists a contract unlike the one signed",
                              contract_id=rec.contract.contract_id, error=str(r))
            await self._forget_unknown({rec.contract.contract_id for rec in contracts})

    async def _forget_unknown(self, known: set[str], grace_ms: int = 120_000) -> None:
        """A contract it signed that settlement no longer lists (e.g. it restarted before
        activating it) will never be activated: stop counting on its energy."""
        for v in self.p.book.of(Party.CONSUMER) + self.p.book.of(Party.SUPPLIER):
            if v.state is ContractState.PROPOSED and v.contract_id not in known \
                    and now_ms() - v.signed_ms > grace_ms:
                self.p.book.apply_report(v.contract_id, state=ContractState.REJECTED, delivered_wh=0, paid_wh=0,
                                         paid_msat=0, increments_paid=0, end_reason="UNKNOWN_TO_SETTLEMENT")
                await self.p.store.save_contract(v)
                log.warning("signed contract unknown to settlement: dropped", contract_id=v.contract_id)

    # -- leaving ---------------------------------------------------------------------------------------

    async def leave(self, timeout_s: float) -> None:
        """End every active contract early ("meter leaving") and wait (bounded) until
        settlement has settled them: it pays only what was delivered, asking this meter
        for the last invoice or payment."""
        p = self.p
        ending = [v for v in p.book.all() if v.active]
        for v in ending:
            try:
                rec = await p.settlement.EndContract(
                    S.EndContractRequest(contract_id=v.contract_id, meter_id=p.s.meter_id, reason="meter leaving"),
                    timeout=5)
                await self.update(rec, strict=False)
                log.info("contract ended by this meter", contract_id=v.contract_id)
            except (grpc.aio.AioRpcError, Refusal) as e:
                log.warning("contract not ended", contract_id=v.contract_id, error=str(e))
        deadline = time.monotonic() + timeout_s
        while ending and time.monotonic() < deadline:
            pending = [v for v in ending if not await self._settled(v.contract_id)]
            if not pending:
                return
            await asyncio.sleep(0.2)
        if ending:
            log.info("leaving before settlement finished", contracts=[v.contract_id for v in ending if not v.final])

    async def _settled(self, contract_id: str) -> bool:
        """Settlement has finished with the contract (final state and its last increment settled)."""
        try:
            rec = await self.p.settlement.GetContract(S.GetContractRequest(contract_id=contract_id), timeout=2)
        except grpc.aio.AioRpcError:
            return False
        await self.update(rec, strict=False)
        if rec.state in (S.CONTRACT_STATE_DEFAULTED, S.CONTRACT_STATE_REJECTED):
            return True
        final = rec.state in (S.CONTRACT_STATE_COMPLETED, S.CONTRACT_STATE_ENDED_EARLY)
        return final and rec.paid_wh >= rec.delivered_wh
