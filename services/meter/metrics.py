"""The meter's Prometheus metrics (one meter per process)."""

from prometheus_client import Counter, Gauge

READINGS = Counter("p2pep_meter_readings_total", "Signed readings produced")
OUTBOX = Gauge("p2pep_meter_outbox_readings", "Readings buffered, not yet acknowledged by settlement")
ACKS = Counter("p2pep_meter_reading_acks_total", "Acknowledgements from settlement, by status", ["status"])
REJECTED = Counter("p2pep_meter_readings_rejected_total", "Readings settlement refused, by reason", ["reason"])
STREAM_RECONNECTS = Counter("p2pep_meter_stream_reconnects_total", "Reading stream (re)connections")
RELAY_ENERGIZED = Gauge("p2pep_meter_relay_energized", "1 while the relay is energized")
RELAY_TRANSITIONS = Counter(
    "p2pep_meter_relay_transitions_total", "Relay state changes, by new state and reason", ["state", "reason"]
)
PAYMENTS_MADE = Counter("p2pep_meter_payments_made_total", "Increment payments as consumer, by outcome", ["outcome"])
PAYMENTS_RECEIVED = Counter("p2pep_meter_payments_received_total", "Increment invoices settled as supplier")
PAID_MSAT = Counter("p2pep_meter_paid_msat_total", "msat paid for energy (without fees)")
FEES_MSAT = Counter("p2pep_meter_fees_msat_total", "msat paid in routing fees")
EARNED_MSAT = Counter("p2pep_meter_earned_msat_total", "msat received for energy")
INVOICES = Counter("p2pep_meter_invoices_total", "Invoices created as supplier")
REFUSED = Counter("p2pep_meter_requests_refused_total", "Settlement requests refused, by rpc and field", ["rpc", "field"])
ORDERS = Counter("p2pep_meter_orders_total", "Orders placed with the matcher, by side and outcome", ["side", "outcome"])
UNCOVERED = Counter("p2pep_meter_uncovered_total", "Matcher said a demand of this meter cannot be covered")
UNMET_WH = Gauge("p2pep_meter_unmet_wh", "Demand not served because the relay was blocked (Wh)")
