"""The operator's Grafana dashboards, as code: plain dicts in Grafana's dashboard JSON model.

``python -m p2pep.monitoring.dashboards`` writes them to ``monitoring/grafana/dashboards/``
(committed; ``tests/test_monitoring.py`` checks the files equal this module's output and that
every panel has a query). Every query is PromQL over the metrics and labels the scrape
configuration gives (:mod:`p2pep.monitoring.scrape`), and each is evaluated against a real
Prometheus that scraped a ``hackathon`` run (``tests/test_monitoring_regtest.py``).

The dashboards read from a datasource variable (``datasource``, type prometheus), so they
import into any Grafana and pick its Prometheus; provisioned from files they use the
datasource named ``Prometheus`` (``monitoring/grafana/provisioning/``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT_DIR = Path(__file__).resolve().parents[2] / "monitoring" / "grafana" / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    queries: Sequence[Query]
    unit: str = "short"
    kind: str = "timeseries"  # or "stat"
    description: str = ""
    width: int = 12


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: Sequence[Panel] = field(default_factory=tuple)

    @property
    def filename(self) -> str:
        return f"{self.uid}.json"


def q(expr: str, legend: str = "") -> Query:
    return Query(" ".join(expr.split()), legend)


DASHBOARDS: tuple[Dashboard, ...] = (
    Dashboard("p2pep-microgrid", "P2PEP / Microgrid",
              "Power and energy per meter, relay states, demand left uncovered, and the services' health.", (
        Panel("Demand and supply power per meter", (
            q("p2pep_meter_demand_w", "{{meter}} demand"),
            q("p2pep_meter_supply_w", "{{meter}} supply"),
        ), unit="watt", description="Simulated household power now: import wanted, export available."),
        Panel("Energy registers per meter", (
            q("p2pep_meter_import_wh", "{{meter}} import"),
            q("p2pep_meter_export_wh", "{{meter}} export"),
        ), unit="watth", description="The registers of each meter's last signed reading."),
        Panel("Relay energized", (q("p2pep_meter_relay_energized", "{{meter}}"),),
              description="1 while the meter lets household power flow."),
        Panel("Relay transitions by reason (5m)", (
            q("sum by (meter, state, reason) (increase(p2pep_meter_relay_transitions_total[5m]))",
              "{{meter}} {{state}} {{reason}}"),
        ), description="Why relays switch: COVERED, NO_CONTRACT, NOT_PAID_UP, PAYMENT_FAILED, ..."),
        Panel("Demand uncovered", (
            q("p2pep_meter_demand_uncovered", "{{meter}} blocked with demand waiting"),
        ), description="1 while the relay is blocked and the household has demand (alert after 5 minutes)."),
        Panel("Demand not served", (q("p2pep_meter_unmet_wh", "{{meter}}"),), unit="watth",
              description="Energy the household wanted while its relay was blocked (cumulative)."),
        Panel("Targets up", (q("up", "{{job}} {{meter}}{{node}}"),),
              description="1: Prometheus scrapes the service or lnd node."),
        Panel("gRPC calls handled by service and code", (
            q("sum by (job, grpc_code) (rate(grpc_server_handled_total[5m]))", "{{job}} {{grpc_code}}"),
        ), unit="reqps", description="From the servicekit interceptor (our services) and lnd's own."),
    )),
    Dashboard("p2pep-market", "P2PEP / Market",
              "The matcher's order book, clearing price and trades.", (
        Panel("Book depth per side (Wh)", (q("p2pep_matcher_book_wh", "{{side}}"),), unit="watth"),
        Panel("Resting orders per side", (q("p2pep_matcher_book_orders", "{{side}}"),)),
        Panel("Clearing price", (q("p2pep_matcher_clearing_price_msat_per_kwh", "msat/kWh"),),
              description="The last uniform clearing price (periodic clearing mode)."),
        Panel("Trades per priority tier (5m)", (
            q("sum by (tier) (increase(p2pep_matcher_trades_total[5m]))", "tier {{tier}}"),
        )),
        Panel("Orders accepted per side", (
            q("sum by (side) (rate(p2pep_matcher_orders_total[5m]))", "{{side}}"),
        ), unit="reqps"),
        Panel("Energy matched", (q("p2pep_matcher_matched_wh_total", "Wh matched"),), unit="watth"),
        Panel("Active contracts (matcher)", (q("p2pep_matcher_active_contracts", "active"),), kind="stat"),
        Panel("Matcher call latency p99", (
            q("histogram_quantile(0.99, sum by (le) (rate(p2pep_matcher_request_seconds_bucket[5m])))", "p99"),
        ), unit="s"),
    )),
    Dashboard("p2pep-settlement", "P2PEP / Settlement",
              "Increments paid, payment latency, msat paid, suppliers' exposure, defaults.", (
        Panel("Increments per second by outcome", (
            q("sum by (outcome) (rate(p2pep_settlement_payments_total[1m]))", "{{outcome}}"),
        ), unit="ops"),
        Panel("Payment latency p50 / p99", (
            q("p2pep:settlement_payment_seconds:p50_5m", "p50"),
            q("p2pep:settlement_payment_seconds:p99_5m", "p99"),
        ), unit="s", description="Invoice + payment round trip per increment."),
        Panel("msat paid per second", (q("rate(p2pep_settlement_paid_msat_total[1m])", "msat/s"),)),
        Panel("msat paid (total)", (q("p2pep_settlement_paid_msat_total", "msat"),), kind="stat"),
        Panel("Unpaid exposure (Wh)", (
            q("p2pep_settlement_unpaid_wh_max", "largest contract"),
            q("p2pep_settlement_unpaid_wh_sum", "all active contracts"),
        ), unit="watth", description="Delivered but not yet paid, over active contracts."),
        Panel("Contracts owing more than one increment", (
            q("p2pep_settlement_contracts_unpaid_over_increment", "contracts"),
        )),
        Panel("Owing more than one increment without a payment", (
            q("p2pep_settlement_unpaid_stalled_seconds", "longest"),
        ), unit="s", description="Above a minute: P2PEPUnpaidExposureAboveIncrement."),
        Panel("Defaults per consumer", (q("p2pep_settlement_consumer_defaults", "{{consumer}}"),)),
        Panel("Contract ends by reason", (
            q("sum by (reason) (p2pep_settlement_contract_ends_total)", "{{reason}}"),
        )),
        Panel("Contracts by state", (q("p2pep_settlement_contracts", "{{state}}"),)),
        Panel("Meter silence", (q("p2pep_settlement_meter_silence_seconds", "{{meter}}"),), unit="s",
              description="Since settlement accepted the meter's last reading."),
        Panel("Readings by outcome", (
            q("sum by (status) (rate(p2pep_settlement_readings_total[1m]))", "{{status}}"),
        ), unit="ops"),
        Panel("Outbox backlog per meter", (q("p2pep_meter_outbox_readings", "{{meter}}"),),
              description="Signed readings a meter holds that settlement has not acknowledged."),
    )),
    Dashboard("p2pep-lightning", "P2PEP / Lightning",
              "Channel balances per node, the hub's forwarding, payment failures, lnd health.", (
        Panel("Channel balance per node", (
            q("p2pep_lnd_channel_balance_sat", "{{node}} {{side}}"),
        ), unit="short", description="sat over the node's open channels (meters: their own; hub: anchor's view)."),
        Panel("Local share of channel balance", (q("p2pep:lnd_channel_local_ratio", "{{node}}"),),
              unit="percentunit", description="Below 10% for 5 minutes: P2PEPChannelLiquidityLow."),
        Panel("Hub forwarding fees earned (msat/s)", (
            q("sum by (node) (rate(p2pep_lnd_forwarding_fees_msat_total[5m]))", "{{node}}"),
        )),
        Panel("Hub forwards", (q("p2pep_lnd_forwards_total", "{{node}}"),)),
        Panel("Payments by meters, by outcome", (
            q("sum by (meter, outcome) (rate(p2pep_meter_payments_made_total[5m]))", "{{meter}} {{outcome}}"),
        ), unit="ops"),
        Panel("Routing fees paid by meters (msat)", (q("p2pep_meter_fees_msat_total", "{{meter}}"),)),
        Panel("On-chain wallet per node", (q("p2pep_lnd_wallet_balance_sat", "{{node}}"),)),
        Panel("lnd up", (q('up{job="lnd"}', "{{node}}"),)),
        Panel("lnd gRPC calls", (
            q('sum by (node) (rate(grpc_server_handled_total{job="lnd"}[5m]))', "{{node}}"),
        ), unit="reqps"),
    )),
    Dashboard("p2pep-anchoring", "P2PEP / Anchoring",
              "Anchor batches, leaves waiting, confirmations, vbytes per contract.", (
        Panel("Batches by state", (q("p2pep_anchor_batches", "{{state}}"),)),
        Panel("Leaves waiting", (q("p2pep_anchor_leaves_pending", "leaves"),)),
        Panel("Confirmations", (
            q("p2pep_anchor_newest_batch_confirmations", "newest mined batch"),
            q("p2pep_anchor_oldest_unconfirmed_blocks", "oldest unconfirmed batch, blocks since closed"),
            q("p2pep_anchor_min_confirmations", "K"),
        )),
        Panel("vbytes per contract (15m)", (
            q("""sum(increase(p2pep_anchor_vbytes_total[15m]))
                 / sum(increase(p2pep_anchor_leaves_added_total{kind="contract"}[15m]))""", "vbytes/contract"),
        ), description="Anchoring cost per contract (its terms and its settlement share batches)."),
        Panel("Anchor transactions (15m)", (
            q("sum by (reason) (increase(p2pep_anchor_transactions_total[15m]))", "{{reason}}"),
        )),
        Panel("Leaves added by kind", (q("p2pep_anchor_leaves_added_total", "{{kind}}"),)),
        Panel("Tip height", (q("p2pep_anchor_tip_height", "height"),), kind="stat"),
        Panel("Chain reorgs seen", (q("p2pep_anchor_chain_reorgs_total", "reorgs"),), kind="stat"),
    )),
)


def panel_json(p: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    return {
        "id": pid,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": p.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}}
        if p.kind == "timeseries" else {"reduceOptions": {"calcs": ["lastNotNull"]}},
        "targets": [{"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": qq.expr,
                     "legendFormat": qq.legend, "range": True}
                    for i, qq in enumerate(p.queries)],
    }


def dashboard_json(d: Dashboard) -> dict[str, Any]:
    panels, x, y = [], 0, 0
    for i, p in enumerate(d.panels, start=1):
        if x + p.width > 24:
            x, y = 0, y + 8
        panels.append(panel_json(p, i, x, y))
        x += p.width
    return {
        "uid": d.uid,
        "title": d.title,
        "description": d.description,
        "tags": ["p2pep"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [{
            "name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
            "current": {"text": "Prometheus", "value": "Prometheus"}, "hide": 0,
        }]},
        "annotations": {"list": []},
        "links": [{"title": "P2PEP", "type": "dashboards", "tags": ["p2pep"], "asDropdown": True}],
        "panels": panels,
    }


def rendered() -> dict[str, str]:
    """File name -> file text, for every dashboard."""
    return {d.filename: json.dumps(dashboard_json(d), indent=2, ensure_ascii=False) + "\n" for d in DASHBOARDS}


def all_queries() -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, expr) of every panel query."""
    return [(d.uid, p.title, qq.expr) for d in DASHBOARDS for p in d.panels for qq in p.queries]


def write(out_dir: Path = OUT_DIR) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in rendered().items():
        path = out_dir / name
        path.write_text(text)
        paths.append(path)
    return paths


def main(argv: Sequence[str] = ()) -> int:
    out = Path(argv[0]) if argv else OUT_DIR
    for path in write(out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
