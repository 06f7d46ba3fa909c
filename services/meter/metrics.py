"""The meter's Prometheus metrics (one meter per process: Prometheus adds the ``meter`` label
from the scrape target, see monitoring/README.md). Its lnd node's liquidity: :mod:`p2pep.lnd.metrics`."""

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
DEMAND_UNCOVERED = Gauge(
    "p2pep_meter_demand_uncovered", "1 while the relay is blocked and the household's next step has demand waiting"
)
DEMAND_W = Gauge("p2pep_meter_demand_w", "The household's demand power now (W), served or not")
SUPPLY_W = Gauge("p2pep_meter_supply_w", "Export power available now (W)")
IMPORT_WH = Gauge("p2pep_meter_import_wh", "Import register (Wh, as in the last signed reading)")
EXPORT_WH = Gauge("p2pep_meter_export_wh", "Export register (Wh, as in the last signed reading)")

for _outcome in ("succeeded", "failed"):
    PAYMENTS_MADE.labels(_outcome)
