"""Prometheus metrics of the matcher (default registry, served on /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ORDERS = Counter("p2pep_matcher_orders_total", "Orders accepted", ["side"])
REJECTED = Counter("p2pep_matcher_rejected_total", "Calls refused for bad input", ["method", "code"])
TRADES = Counter("p2pep_matcher_trades_total", "Trades (contracts) formed", ["tier"])
MATCHED_WH = Counter("p2pep_matcher_matched_wh_total", "Energy matched, Wh")
CANCELLED = Counter("p2pep_matcher_cancelled_total", "Orders cancelled")
EXPIRED = Counter("p2pep_matcher_expired_total", "Orders expired")
UNCOVERED = Counter("p2pep_matcher_uncovered_total", "Demands reported uncovered")
CONTRACT_ENDS = Counter("p2pep_matcher_contract_ends_total", "Contract ends reported", ["outcome"])
BOOK_ORDERS = Gauge("p2pep_matcher_book_orders", "Resting orders", ["side"])
BOOK_WH = Gauge("p2pep_matcher_book_wh", "Resting energy, Wh", ["side"])
ACTIVE_CONTRACTS = Gauge("p2pep_matcher_active_contracts", "Contracts the matcher treats as continuing")
CLEARINGS = Counter("p2pep_matcher_clearings_total", "Periodic clearings run")
CLEARING_PRICE = Gauge("p2pep_matcher_clearing_price_msat_per_kwh", "Last uniform clearing price")
STREAMS = Gauge("p2pep_matcher_event_streams", "Open StreamEvents calls")
LATENCY = Histogram(
    "p2pep_matcher_request_seconds",
    "Time to answer a call, persistence included",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
MATCH_LATENCY = Histogram(
    "p2pep_matcher_match_seconds",
    "Time in the matching core per call (or per clearing)",
    buckets=(0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5),
)
