"""How each service of a scenario is started: module, environment, ports, files (pure).

The runner hands every service its ports explicitly (picked free beforehand), so
the targets are known before the processes start and can be written to the
scenario's state file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from p2pep.scenario.model import MeterSpec, Scenario

HOST = "127.0.0.1"


@dataclass(frozen=True)
class NodeEndpoint:
    """What a meter service needs to know about its own lnd node (from the regtest harness)."""

    name: str
    pubkey: str
    rpcserver: str
    tls_cert: str
    macaroon: str
    p2p: str


@dataclass(frozen=True)
class ServiceLaunch:
    name: str  # "matcher", "settlement", "meter-1", ...
    module: str  # run as `python -m <module>`
    grpc_port: int
    metrics_port: int
    log_path: Path
    data_dir: Path
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def target(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    @property
    def kind(self) -> str:
        return "meter" if self.module == "services.meter" else self.name


@dataclass(frozen=True)
class Layout:
    """Where a scenario's services keep their data and logs (inside the run dir)."""

    root: Path

    def data_dir(self, service: str) -> Path:
        return self.root / service

    def log(self, service: str) -> Path:
        return self.root / "logs" / f"{service}.log"

    @property
    def report(self) -> Path:
        return self.root / "report.json"


def _common(prefix: str, grpc_port: int, metrics_port: int, log_level: str) -> dict[str, str]:
    return {
        f"{prefix}GRPC_HOST": HOST,
        f"{prefix}GRPC_PORT": str(grpc_port),
        f"{prefix}METRICS_PORT": str(metrics_port),
        f"{prefix}LOG_JSON": "true",
        f"{prefix}LOG_LEVEL": log_level,
    }


def kwp(wp: int) -> str:
    """Integer watt-peak as the kWp decimal string the meter's settings take (exact)."""
    return str(Decimal(wp) / 1000)


def matcher_launch(s: Scenario, layout: Layout, grpc_port: int, metrics_port: int,
                   log_level: str = "INFO") -> ServiceLaunch:
    p = "P2PEP_MATCHER_"
    env = _common(p, grpc_port, metrics_port, log_level)
    env[f"{p}DB_PATH"] = str(layout.data_dir("matcher") / "matcher.db")
    env[f"{p}MODE"] = s.matcher_mode
    env.update(s.services_env.get("matcher", {}))
    return ServiceLaunch("matcher", "services.matcher", grpc_port, metrics_port, layout.log("matcher"),
                         layout.data_dir("matcher"), env)


@dataclass(frozen=True)
class BtcdEndpoint:
    rpchost: str
    user: str
    password: str
    cert: str


def anchor_launch(s: Scenario, layout: Layout, grpc_port: int, metrics_port: int, hub: NodeEndpoint,
                  btcd: BtcdEndpoint, log_level: str = "INFO") -> ServiceLaunch:
    """The anchor service pays for anchoring transactions from the operator's hub wallet."""
    p = "P2PEP_ANCHOR_"
    env = _common(p, grpc_port, metrics_port, log_level)
    env.update({
        f"{p}DB_PATH": str(layout.data_dir("anchor") / "anchor.db"),
        f"{p}LND_RPCSERVER": hub.rpcserver,
        f"{p}LND_TLS_CERT": hub.tls_cert,
        f"{p}LND_MACAROON": hub.macaroon,
        f"{p}BTCD_RPCHOST": btcd.rpchost,
        f"{p}BTCD_USER": btcd.user,
        f"{p}BTCD_PASS": btcd.password,
        f"{p}BTCD_CERT": btcd.cert,
    })
    env.update(s.services_env.get("anchor", {}))
    return ServiceLaunch("anchor", "services.anchor", grpc_port, metrics_port, layout.log("anchor"),
                         layout.data_dir("anchor"), env)


def settlement_launch(s: Scenario, layout: Layout, grpc_port: int, metrics_port: int, matcher_target: str,
                      log_level: str = "INFO", anchor_target: str = "") -> ServiceLaunch:
    p = "P2PEP_SETTLEMENT_"
    env = _common(p, grpc_port, metrics_port, log_level)
    env[f"{p}DB_PATH"] = str(layout.data_dir("settlement") / "settlement.db")
    env[f"{p}MATCHER_TARGET"] = matcher_target
    if anchor_target:
        env[f"{p}ANCHOR_TARGET"] = anchor_target
    env[f"{p}INCREMENT_WH"] = str(s.increment_wh)
    env[f"{p}PAYMENT_TIMEOUT_S"] = str(s.payment_timeout_s)
    env.update(s.services_env.get("settlement", {}))
    return ServiceLaunch("settlement", "services.settlement", grpc_port, metrics_port, layout.log("settlement"),
                         layout.data_dir("settlement"), env)


def console_launch(s: Scenario, layout: Layout, grpc_port: int, metrics_port: int, settlement_target: str,
                   matcher_target: str, log_level: str = "INFO") -> ServiceLaunch:
    """The operator's console: its web page is on ``metrics_port`` (``/``)."""
    p = "P2PEP_CONSOLE_"
    env = _common(p, grpc_port, metrics_port, log_level)
    env[f"{p}SETTLEMENT_TARGET"] = settlement_target
    env[f"{p}MATCHER_TARGET"] = matcher_target
    env.update(s.services_env.get("console", {}))
    return ServiceLaunch("console", "services.console", grpc_port, metrics_port, layout.log("console"),
                         layout.data_dir("console"), env)


def meter_source_env(m: MeterSpec) -> dict[str, str]:
    p = "P2PEP_METER_"
    env = {f"{p}SOURCE": m.source, f"{p}LAT": repr(m.lat), f"{p}LON": repr(m.lon), f"{p}TZ": m.tz}
    if m.source == "constant":
        env[f"{p}CONSTANT_W"] = str(m.constant_w)
    elif m.source == "pv":
        env[f"{p}PV_KWP"] = kwp(m.pv_wp)
    elif m.source == "h0":
        env[f"{p}ANNUAL_KWH"] = str(m.annual_kwh)
    elif m.source == "csv":
        env[f"{p}CSV_PATH"] = m.csv_path
    if m.role == "prosumer":  # a prosumer nets its household load against its PV
        if m.annual_kwh:
            env[f"{p}ANNUAL_KWH"] = str(m.annual_kwh)
        if m.pv_wp:
            env[f"{p}PV_KWP"] = kwp(m.pv_wp)
    return env


def meter_launch(
    s: Scenario,
    m: MeterSpec,
    layout: Layout,
    grpc_port: int,
    metrics_port: int,
    node: NodeEndpoint,
    matcher_target: str,
    settlement_target: str,
    hub: NodeEndpoint | None,
    peers: Sequence[NodeEndpoint] = (),
    log_level: str = "INFO",
) -> ServiceLaunch:
    """``peers``: the other meters' lnd nodes (their p2p addresses, for direct channels)."""
    p = "P2PEP_METER_"
    data = layout.data_dir(m.name)
    t = s.timing
    env = _common(p, grpc_port, metrics_port, log_level)
    env.update({
        f"{p}METER_ID": m.name,
        f"{p}ROLE": m.role,
        f"{p}KEY_PATH": str(data / "meter.key"),
        f"{p}DB_PATH": str(data / "meter.db"),
        f"{p}LND_RPCSERVER": node.rpcserver,
        f"{p}LND_TLS_CERT": node.tls_cert,
        f"{p}LND_MACAROON": node.macaroon,
        f"{p}LND_P2P": node.p2p,
        f"{p}MATCHER_TARGET": matcher_target,
        f"{p}SETTLEMENT_TARGET": settlement_target,
        f"{p}SIM_START": t.sim_start.isoformat(),
        f"{p}ACCEL": str(t.accel),
        f"{p}TICK_S": repr(t.tick_s),
        f"{p}WINDOW_S": str(t.window_s),
        f"{p}PRICE_MSAT_PER_KWH": str(m.price_msat_per_kwh),
        f"{p}NETWORK_MODE": "hub" if hub is not None else "adhoc",
    })
    if hub is not None:
        env[f"{p}HUB"] = f"{hub.pubkey}@{hub.p2p}"
    others = [n for n in peers if n.name != m.name]
    if others:
        env[f"{p}PEERS"] = ",".join(f"{n.name}={n.pubkey}@{n.p2p}" for n in others)
    env.update(meter_source_env(m))
    env.update(m.env)
    return ServiceLaunch(m.name, "services.meter", grpc_port, metrics_port, layout.log(m.name), data, env)
