"""Splitting a meter's energy across its concurrent contracts (multi-supplier).

A consumer may hold several contracts at once ("the meter shall create multiple
contracts to multiple suppliers, keeping a constant power usage"); a supplier may
serve several consumers. Each metering step's register delta (integer Wh) is split
among the meter's open contracts by :func:`allocate`, deterministically and
conserving energy exactly (``sum(shares) + unallocated == total``):

1. **Tiers in priority order.** Contracts of tier 1 (first-priority requests) are
   filled before tier 2 gets anything, and so on.
2. **Within a tier, proportional to weight** (use the contracted power,
   :meth:`~p2pep.settling.contracts.ContractTerms.average_power_w`), by the largest
   remainder method: each share is within 1 Wh of its exact proportional value;
   leftover Wh go to the largest fractional parts, ties to the smaller contract id.
3. **Caps.** No contract gets more than its cap (energy it can still take, e.g.
   :attr:`~p2pep.settling.increments.DeliveryLedger.consumer_room_wh`); what a
   capped contract cannot take is re-split among the others of its tier, then
   passed to the next tier.
4. **One contract per counterparty at a time.** Targets that share a ``group`` (the
   counterparty: a consumer's contracts with the same supplier) are filled one after
   the other, smallest contract id first, the first standing for the whole group
   (its weight is the group's total). So a supplier is owed at most the open increment
   of one contract by a consumer, however many contracts the matcher made between them:
   energy shared out in parallel would leave a part-filled increment unpaid on each.
5. Whatever no contract can take is ``unallocated_wh`` (energy outside any
   contract: from or to the main grid).

If all weights in a tier are zero the tier is split evenly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class AllocationError(ValueError):
    pass


@dataclass(frozen=True)
class AllocationTarget:
    contract_id: str
    cap_wh: int
    weight: int = 1
    tier: int = 1
    group: str = ""
    """Counterparty: targets of one non-empty group are filled one at a time."""


@dataclass(frozen=True)
class Allocation:
    shares: dict[str, int]
    """Wh per contract id (every target appears, possibly with 0)."""
    unallocated_wh: int


def split_proportionally(amount: int, weights: Sequence[tuple[str, int]]) -> dict[str, int]:
    """Largest-remainder split of ``amount`` Wh by integer weights (ties: smaller id)."""
    if amount < 0:
        raise AllocationError("amount must not be negative")
    if not weights:
        return {}
    items = sorted(weights)
    if any(w < 0 for _, w in items):
        raise AllocationError("weights must not be negative")
    total_w = sum(w for _, w in items)
    if total_w == 0:
        items = [(cid, 1) for cid, _ in items]
        total_w = len(items)
    shares = {cid: amount * w // total_w for cid, w in items}
    left = amount - sum(shares.values())
    by_remainder = sorted(items, key=lambda it: (-(amount * it[1] % total_w), it[0]))
    for cid, _ in by_remainder[:left]:
        shares[cid] += 1
    return shares


def allocate(total_wh: int, targets: Sequence[AllocationTarget]) -> Allocation:
    """Split ``total_wh`` among ``targets`` by tier, weight and cap (see module doc)."""
    if total_wh < 0:
        raise AllocationError("total_wh must not be negative")
    ids = [t.contract_id for t in targets]
    if len(set(ids)) != len(ids):
        raise AllocationError("contract ids must be unique")
    if any(t.cap_wh < 0 or t.weight < 0 for t in targets):
        raise AllocationError("caps and weights must not be negative")
    shares = {t.contract_id: 0 for t in targets}
    remaining = total_wh
    for tier in sorted({t.tier for t in targets}):
        pending = {t.contract_id: t for t in targets if t.tier == tier and t.cap_wh > 0}
        while remaining > 0 and pending:
            group = _group_heads(pending)
            room = {cid: pending[cid].cap_wh - shares[cid] for cid in group}
            amount = min(remaining, sum(room.values()))
            desired = split_proportionally(amount, list(group.items()))
            capped = [cid for cid in group if desired[cid] >= room[cid]]
            if not capped:
                for cid, wh in desired.items():
                    shares[cid] += wh
                remaining -= amount
                break
            for cid in capped:
                shares[cid] += room[cid]
                remaining -= room[cid]
                del pending[cid]
    return Allocation(shares, remaining)


def _group_heads(pending: dict[str, AllocationTarget]) -> dict[str, int]:
    """The targets that take energy now, with their weights: every ungrouped one, and
    per group the smallest contract id, weighted with the group's total."""
    heads: dict[str, int] = {}
    first: dict[str, str] = {}
    for cid in sorted(pending):
        t = pending[cid]
        if not t.group:
            heads[cid] = t.weight
        elif t.group not in first:
            first[t.group] = cid
            heads[cid] = t.weight
        else:
            heads[first[t.group]] += t.weight
    return heads
