"""The meter's own view of its contracts (pure; the meter service's store persists it).

Settlement reports each contract's state (``UpdateContract`` or a poll of its
``ListContracts``), but the meter does not take that as the truth for what it owes:
it attributes its own import to its active contracts exactly as settlement does
(:func:`p2pep.settling.allocation.allocate`: by tier, weighted by contracted power,
capped by energy left) and counts its own payments. From that it knows

- per contract, energy imported under it that it has not paid for yet (the
  relay's own check: one full increment may be unpaid while it is being paid,
  never two);
- the cover its contracts give the relay (active, energy left, paid up);
- the energy left in its contracts (order sizing).

Energy imported when no contract had room is nobody's to bill and is not owed;
a contract that reached a final state is written off the unpaid count (settlement
pays its final increment before it reports the final state).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum

from p2pep.metering.relay import ContractCover
from p2pep.settling.allocation import AllocationTarget, allocate
from p2pep.settling.contracts import ContractState, ContractTerms


class Party(StrEnum):
    CONSUMER = "consumer"
    SUPPLIER = "supplier"


OPEN_STATES = (ContractState.PROPOSED, ContractState.ACTIVE)


@dataclass
class ContractView:
    """One contract this meter signed, with settlement's latest report and the
    meter's own accounting."""

    terms: ContractTerms
    party: Party
    signature: bytes
    signed_ms: int
    """Real unix ms when this meter signed."""
    state: ContractState = ContractState.PROPOSED
    # settlement's report
    delivered_wh: int = 0
    reported_paid_wh: int = 0
    reported_paid_msat: int = 0
    reported_increments: int = 0
    end_reason: str = ""
    matcher_tier: int = 0
    # the meter's own accounting
    attributed_wh: int = 0
    """Consumer: own import attributed to this contract."""
    paid_wh: int = 0
    """Consumer: Wh this meter paid for (its own payments). Supplier: Wh invoiced and settled."""
    paid_msat: int = 0
    increments: int = 0
    """Consumer: increments paid. Supplier: increments settled."""
    written_off: bool = False
    """Consumer: final; no longer counted as unpaid."""

    @property
    def contract_id(self) -> str:
        return self.terms.contract_id

    @property
    def supplier_node(self) -> str:
        """The payee: the supplier's LND node as the signed terms name it (nothing else)."""
        return self.terms.supplier_node

    @property
    def consumer_node(self) -> str:
        return self.terms.consumer_node

    @property
    def active(self) -> bool:
        return self.state is ContractState.ACTIVE

    @property
    def final(self) -> bool:
        return self.state.final

    @property
    def used_wh(self) -> int:
        """Energy of the contract already used, by the meter's count or settlement's."""
        return min(self.terms.energy_wh, max(self.attributed_wh, self.delivered_wh))

    @property
    def energy_left_wh(self) -> int:
        return self.terms.energy_wh - self.used_wh

    @property
    def unpaid_wh(self) -> int:
        return max(0, self.attributed_wh - self.paid_wh)

    def with_payment(self, to_wh: int, amount_msat: int) -> ContractView:
        """A copy with one more increment paid, up to ``to_wh``: what is written to the store
        with the payment, before :meth:`ContractBook.record_payment` changes the book."""
        return replace(self, paid_wh=max(self.paid_wh, to_wh), paid_msat=self.paid_msat + amount_msat,
                       increments=self.increments + 1)


@dataclass(frozen=True)
class RecordUpdate:
    """What applying a settlement report changed."""

    changed: bool
    activated: bool
    ended: bool


class ContractBook:
    def __init__(self, views: Iterable[ContractView] = ()) -> None:
        self._views: dict[str, ContractView] = {v.contract_id: v for v in views}

    def __contains__(self, contract_id: str) -> bool:
        return contract_id in self._views

    def __len__(self) -> int:
        return len(self._views)

    def get(self, contract_id: str) -> ContractView | None:
        return self._views.get(contract_id)

    def all(self) -> list[ContractView]:
        return sorted(self._views.values(), key=lambda v: (v.signed_ms, v.contract_id))

    def add(self, view: ContractView) -> None:
        self._views[view.contract_id] = view

    def of(self, party: Party, states: Iterable[ContractState] = OPEN_STATES) -> list[ContractView]:
        want = set(states)
        return [v for v in self.all() if v.party is party and v.state in want]

    # -- settlement's reports ----------------------------------------------------------

    def apply_report(
        self,
        contract_id: str,
        *,
        state: ContractState,
        delivered_wh: int,
        paid_wh: int,
        paid_msat: int,
        increments_paid: int,
        end_reason: str = "",
        matcher_tier: int = 0,
    ) -> RecordUpdate:
        """Merge a report into the view: state and progress only (the terms, parties and
        nodes are the signed ones and no report changes them). A final state is never left
        again, and counters never go backwards (reports may arrive out of order)."""
        v = self._views[contract_id]
        before = (v.state, v.delivered_wh, v.reported_paid_wh, v.reported_increments, v.end_reason, v.written_off)
        was_active, was_final = v.active, v.final
        if not v.final and state is not ContractState.PROPOSED:
            v.state = state
        v.delivered_wh = max(v.delivered_wh, delivered_wh)
        v.reported_paid_wh = max(v.reported_paid_wh, paid_wh)
        v.reported_paid_msat = max(v.reported_paid_msat, paid_msat)
        v.reported_increments = max(v.reported_increments, increments_paid)
        v.end_reason = end_reason or v.end_reason
        v.matcher_tier = matcher_tier or v.matcher_tier
        if v.final and v.party is Party.CONSUMER:
            v.written_off = True
        after = (v.state, v.delivered_wh, v.reported_paid_wh, v.reported_increments, v.end_reason, v.written_off)
        return RecordUpdate(before != after, v.active and not was_active, v.final and not was_final)

    # -- the meter's own accounting ------------------------------------------------------

    def attribute_import(self, delta_wh: int) -> dict[str, int]:
        """Split an import register delta over the active consumer contracts, as
        settlement does; returns the Wh each contract got (only non-zero shares).
        What no contract has room for stays unattributed."""
        if delta_wh <= 0:
            return {}
        targets = [
            AllocationTarget(v.contract_id, v.terms.energy_wh - v.attributed_wh, v.terms.average_power_w(), v.terms.tier,
                             group=v.terms.supplier)
            for v in self.of(Party.CONSUMER, (ContractState.ACTIVE,))
        ]
        if not targets:
            return {}
        shares = {cid: wh for cid, wh in allocate(delta_wh, targets).shares.items() if wh > 0}
        for cid, wh in shares.items():
            self._views[cid].attributed_wh += wh
        return shares

    def record_payment(self, contract_id: str, from_wh: int, to_wh: int, amount_msat: int) -> None:
        v = self._views[contract_id]
        after = v.with_payment(to_wh, amount_msat)
        v.paid_wh, v.paid_msat, v.increments = after.paid_wh, after.paid_msat, after.increments

    def unpaid_wh(self) -> int:
        """Energy imported under contracts not yet paid (contracts not written off)."""
        return sum(v.unpaid_wh for v in self._views.values() if v.party is Party.CONSUMER and not v.written_off)

    def exposure(self) -> list[tuple[str, int, int]]:
        """``(contract_id, unpaid_wh, increment_wh)`` of the active consumer contracts that
        can still take energy (the ones the next step may be attributed to)."""
        return [(v.contract_id, v.unpaid_wh, v.terms.increment_wh)
                for v in self.of(Party.CONSUMER, (ContractState.ACTIVE,)) if v.attributed_wh < v.terms.energy_wh]

    def paid_wh_total(self) -> int:
        return sum(v.paid_wh for v in self._views.values() if v.party is Party.CONSUMER)

    def paid_msat_total(self, party: Party) -> int:
        return sum(v.paid_msat for v in self._views.values() if v.party is party)

    def covers(self, max_unpaid_wh_of: int = 2) -> list[ContractCover]:
        """The relay's view of the active consumer contracts. A contract is paid up
        while less than ``max_unpaid_wh_of`` increments of it are unpaid (settlement's gate)."""
        return [
            ContractCover(
                v.contract_id,
                v.terms.average_power_w(),
                v.energy_left_wh,
                active=True,
                paid_up=v.unpaid_wh < max_unpaid_wh_of * v.terms.increment_wh,
            )
            for v in self.of(Party.CONSUMER, (ContractState.ACTIVE,))
        ]

    def energy_left_wh(self, party: Party) -> int:
        """Energy still to flow under this meter's proposed and active contracts."""
        return sum(v.energy_left_wh for v in self.of(party))

    def latest_active(self, party: Party) -> ContractView | None:
        active = self.of(party, (ContractState.ACTIVE,))
        return active[-1] if active else None
