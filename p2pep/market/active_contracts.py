"""Active contracts as the market sees them (for tier 1) and their canonical terms."""

from __future__ import annotations

from typing import Any

from p2pep.canonical import contract_hash


def contract_terms(
    *,
    contract_id: str,
    consumer: str,
    supplier: str,
    energy_wh: int,
    price_msat_per_kwh: int,
    start_ms: int,
    end_ms: int,
    tier: int,
) -> dict[str, Any]:
    """The canonical terms of a contract, the document its hash commits to.

    ``Contract.match_hash = p2pep.canonical.contract_hash(contract_terms(...))`` (see
    common.proto; ``Contract.hash`` is the hash of the terms both meters sign, which extend these).
    """
    return {
        "v": 1,
        "contract_id": contract_id,
        "consumer": consumer,
        "supplier": supplier,
        "energy_wh": int(energy_wh),
        "price_msat_per_kwh": int(price_msat_per_kwh),
        "start_ms": int(start_ms),
        "end_ms": int(end_ms),
        "tier": int(tier),
    }


def terms_hash(**terms: Any) -> bytes:
    """``contract_hash(contract_terms(**terms))``."""
    return contract_hash(contract_terms(**terms))


class ActivePairs:
    """Which consumer is supplied by which supplier under which active contracts.

    Tier 1 ("continuing service") asks: does this consumer have an active contract with
    that supplier? Both directions are indexed, since either side may be the one arriving.
    """

    def __init__(self) -> None:
        self._by_id: dict[str, tuple[str, str]] = {}
        #: consumer -> supplier -> active contract ids (oldest first)
        self.by_consumer: dict[str, dict[str, list[str]]] = {}
        #: supplier -> consumer -> active contract ids (oldest first)
        self.by_supplier: dict[str, dict[str, list[str]]] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, contract_id: str) -> bool:
        return contract_id in self._by_id

    def pair(self, contract_id: str) -> tuple[str, str] | None:
        """``(consumer, supplier)`` of an active contract."""
        return self._by_id.get(contract_id)

    def open(self, contract_id: str, consumer: str, supplier: str) -> None:
        if contract_id in self._by_id:
            return
        self._by_id[contract_id] = (consumer, supplier)
        self.by_consumer.setdefault(consumer, {}).setdefault(supplier, []).append(contract_id)
        self.by_supplier.setdefault(supplier, {}).setdefault(consumer, []).append(contract_id)

    def close(self, contract_id: str) -> bool:
        pair = self._by_id.pop(contract_id, None)
        if pair is None:
            return False
        consumer, supplier = pair
        for index, a, b in ((self.by_consumer, consumer, supplier), (self.by_supplier, supplier, consumer)):
            ids = index[a][b]
            ids.remove(contract_id)
            if not ids:
                del index[a][b]
                if not index[a]:
                    del index[a]
        return True

    def suppliers_of(self, consumer: str) -> dict[str, list[str]]:
        return self.by_consumer.get(consumer, {})

    def consumers_of(self, supplier: str) -> dict[str, list[str]]:
        return self.by_supplier.get(supplier, {})

    def latest(self, consumer: str, supplier: str) -> str | None:
        ids = self.by_consumer.get(consumer, {}).get(supplier)
        return ids[-1] if ids else None
