"""Settlement's Prometheus metrics."""

from prometheus_client import Counter, Gauge, Histogram

READINGS = Counter("p2pep_settlement_readings_total", "Readings received, by outcome", ["status"])
REJECTED = Counter("p2pep_settlement_readings_rejected_total", "Readings refused, by reason", ["reason"])
PAYMENTS = Counter("p2pep_settlement_payments_total", "Increment payments, by outcome", ["outcome"])
PAID_MSAT = Counter("p2pep_settlement_paid_msat_total", "msat paid through settled increments")
DELIVERED_WH = Counter("p2pep_settlement_delivered_wh_total", "Wh attributed to contracts (consumer side)")
PAYMENT_SECONDS = Histogram(
    "p2pep_settlement_payment_seconds", "Invoice + payment round trip per increment",
    buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20),
)
CONTRACTS = Gauge("p2pep_settlement_contracts", "Contracts by state", ["state"])
TASK_FAILURES = Counter(
    "p2pep_settlement_task_failures_total",
    "Unexpected errors in supervised background tasks (each retried with backoff)", ["task"],
)
CONTRACTS_FAULTED = Gauge(
    "p2pep_settlement_contracts_faulted", "Unfinished contracts whose payment worker is failing and retrying"
)
CONTRACTS_ABANDONED = Counter(
    "p2pep_settlement_contracts_abandoned_total",
    "Contracts ended SETTLEMENT_FAULT because their worker failed worker_attempts times in a row",
)
