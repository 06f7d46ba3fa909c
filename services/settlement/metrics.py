"""Settlement's Prometheus metrics.

Counters and histograms are kept where things happen (payments, readings, contract ends);
the operator's view of what is owed and who is quiet is computed at scrape time from
settlement's memory (:class:`OperatorCollector`), so it is never stale and never kept in step
by hand. Labels are bounded: states, reasons and outcomes are enumerations, and meter ids are
those of enrolled (registered) meters, never contract ids or anything else a caller chooses.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from p2pep.settling.contracts import ContractState, EndReason

if TYPE_CHECKING:
    from services.settlement.live import LiveContract, MeterLink


class Links(Protocol):
    """The enrolled meters (settlement's :class:`~services.settlement.registry.MeterRegistry`)."""

    def values(self) -> list[MeterLink]: ...

READINGS = Counter("p2pep_settlement_readings_total", "Readings received, by outcome", ["status"])
REJECTED = Counter("p2pep_settlement_readings_rejected_total", "Readings refused, by reason", ["reason"])
PAYMENTS = Counter("p2pep_settlement_payments_total", "Increment payments, by outcome", ["outcome"])
PAYMENT_OUTCOMES = ("settled", "failed", "timeout", "no_invoice", "bad_preimage")
PAID_MSAT = Counter("p2pep_settlement_paid_msat_total", "msat paid through settled increments")
DELIVERED_WH = Counter("p2pep_settlement_delivered_wh_total", "Wh attributed to contracts (consumer side)")
PAYMENT_SECONDS = Histogram(
    "p2pep_settlement_payment_seconds", "Invoice + payment round trip per increment",
    buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20),
)
CONTRACTS = Gauge("p2pep_settlement_contracts", "Contracts by state", ["state"])
CONTRACT_ENDS = Counter("p2pep_settlement_contract_ends_total", "Contracts ended (settled or rejected), by reason",
                        ["reason"])
TASK_FAILURES = Counter(
    "p2pep_settlement_task_failures_total",
    "Unexpected errors in supervised background tasks (each retried with backoff)", ["task"],
)
CONTRACTS_FAULTED = Gauge(
    "p2pep_settlement_contracts_faulted", "Unfinished contracts whose payment worker is failing and retrying"
)
DEBTS = Counter(
    "p2pep_settlement_debts_total",
    "What a contract's consumer owed after a payment failure that passes: collected later, or given up "
    "after debt_collect_s", ["outcome"],
)
STUCK_PAYMENTS = Counter(
    "p2pep_settlement_stuck_payments_total",
    "Payments the consumer's lnd held in flight for in_flight_resolve_s, resolved at the supplier's node: found "
    "paid there, or the invoice cancelled and the increment invoiced anew", ["outcome"],
)
CONTRACTS_ABANDONED = Counter(
    "p2pep_settlement_contracts_abandoned_total",
    "Contracts ended SETTLEMENT_FAULT because their worker failed worker_attempts times in a row",
)

# every label value that can occur, at 0, so rate() and increase() see the first event
for _outcome in PAYMENT_OUTCOMES:
    PAYMENTS.labels(_outcome)
for _outcome in ("collected", "given_up"):
    DEBTS.labels(_outcome)
for _outcome in ("paid", "reinvoiced"):
    STUCK_PAYMENTS.labels(_outcome)
for _reason in EndReason:
    CONTRACT_ENDS.labels(_reason.value)
for _task in ("contract_worker", "proposal", "sweeper", "other"):
    TASK_FAILURES.labels(_task)


@dataclass(frozen=True)
class Exposure:
    """What suppliers are owed now, over the active contracts (pure aggregate)."""

    unpaid_wh_max: int
    unpaid_wh_sum: int
    over_one_increment: int
    """Active contracts with more than one increment delivered and unpaid."""
    stalled_s: float
    """The longest time a contract owing more than one increment has gone without a payment."""
    active: int


def exposure_of(contracts: Iterable[tuple[int, int, float]]) -> Exposure:
    """``contracts``: (unpaid Wh, increment Wh, seconds since its last payment) of each active
    contract."""
    unpaid = list(contracts)
    owing = [(u, since) for u, inc, since in unpaid if u > inc]
    return Exposure(
        unpaid_wh_max=max((u for u, _, _ in unpaid), default=0),
        unpaid_wh_sum=sum(u for u, _, _ in unpaid),
        over_one_increment=len(owing),
        stalled_s=max((max(0.0, since) for _, since in owing), default=0.0),
        active=len(unpaid),
    )


def defaults_by_consumer(contracts: Iterable[tuple[str, ContractState]], meters: Iterable[str],
                         settled: Mapping[str, int] | None = None) -> dict[str, int]:
    """Defaulted contracts per consumer meter, 0 for every enrolled meter without one
    (``settled``: the counts of those no longer in memory)."""
    out = dict.fromkeys(meters, 0)
    for consumer, n in (settled or {}).items():
        out[consumer] = out.get(consumer, 0) + n
    for consumer, state in contracts:
        if state is ContractState.DEFAULTED:
            out[consumer] = out.get(consumer, 0) + 1
    return out


class OperatorCollector(Collector):
    """Settlement's state as the operator watches it, read from memory at every scrape:

    * ``p2pep_settlement_unpaid_wh_max`` / ``_sum``: Wh delivered but not yet paid, over the
      active contracts (the largest, and all together): the suppliers' exposure;
    * ``p2pep_settlement_contracts_unpaid_over_increment``: active contracts with more than one
      increment unpaid (normal while one is paid: the meter lets the next flow meanwhile);
    * ``p2pep_settlement_unpaid_stalled_seconds``: the longest any of those has gone without a
      settled increment (seconds while healthy; a minute: its payments are stuck);
    * ``p2pep_settlement_meter_silence_seconds{meter}``: since settlement accepted the meter's
      last reading (or since it registered, or settlement started);
    * ``p2pep_settlement_consumer_defaults{consumer}``: contracts the meter defaulted on, as
      settlement's records hold them (survives restarts; it only grows).
    """

    def __init__(self, contracts: Mapping[str, LiveContract], meters: Links,
                 clock: Callable[[], float] = time.monotonic, settled_defaults: Mapping[str, int] | None = None) -> None:
        self.contracts = contracts
        # not `settled_defaults or {}`: an empty Counter is falsy, and the engine fills that very object later
        self.settled_defaults = settled_defaults if settled_defaults is not None else {}
        self.meters = meters
        self.clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = self.clock()
        active = [lc for lc in list(self.contracts.values()) if lc.contract.state is ContractState.ACTIVE]
        e = exposure_of((lc.ledger.unpaid_wh, lc.terms.increment_wh, now - lc.last_payment) for lc in active)
        yield GaugeMetricFamily("p2pep_settlement_unpaid_wh_max",
                                "Largest unpaid delivered energy of an active contract, Wh", value=e.unpaid_wh_max)
        yield GaugeMetricFamily("p2pep_settlement_unpaid_wh_sum",
                                "Unpaid delivered energy over all active contracts, Wh", value=e.unpaid_wh_sum)
        yield GaugeMetricFamily("p2pep_settlement_contracts_unpaid_over_increment",
                                "Active contracts with more than one increment delivered and unpaid",
                                value=e.over_one_increment)
        yield GaugeMetricFamily("p2pep_settlement_unpaid_stalled_seconds",
                                "Longest a contract owing more than one increment has gone without a payment, s",
                                value=e.stalled_s)
        links = self.meters.values()
        silence = GaugeMetricFamily("p2pep_settlement_meter_silence_seconds",
                                    "Seconds since settlement accepted the meter's last reading", labels=["meter"])
        for link in links:
            silence.add_metric([link.row.meter_id], max(0.0, now - link.last_seen))
        yield silence
        defaults = GaugeMetricFamily("p2pep_settlement_consumer_defaults",
                                     "Contracts the meter defaulted on as consumer", labels=["consumer"])
        counts = defaults_by_consumer(((lc.terms.consumer, lc.contract.state) for lc in list(self.contracts.values())),
                                      (link.row.meter_id for link in links), self.settled_defaults)
        for consumer, n in sorted(counts.items()):
            defaults.add_metric([consumer], n)
        yield defaults


def install_operator_collector(contracts: Mapping[str, LiveContract], meters: Links,
                               registry: CollectorRegistry = REGISTRY,
                               settled_defaults: Mapping[str, int] | None = None) -> OperatorCollector:
    """Register the collector (once per process: settlement's ``__main__``); ``contracts`` are
    the open ones, ``settled_defaults`` the defaulted contracts no longer in memory, by consumer."""
    collector = OperatorCollector(contracts, meters, settled_defaults=settled_defaults)
    registry.register(collector)
    return collector
