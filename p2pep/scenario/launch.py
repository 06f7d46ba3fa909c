"""How each service of a scenario is started: module, environment, ports, files (pure).

Each service's environment is written from its settings class (:mod:`p2pep.settings`,
through :func:`p2pep.servicekit.settings.settings_env`), never by spelling variable names,
and read back into that class here: a bad value fails before any process starts.

The runner hands every service its ports explicitly (picked free beforehand), so
the targets are known before the processes start and can be written to the
scenario's state file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path

from p2pep.lnd.macaroons import ANCHOR, METER
from p2pep.scenario.model import MeterSpec, Scenario, ScenarioError
from p2pep.servicekit.settings import (
    BadSettings,
    BaseServiceSettings,
    env_name,
    setting_of,
    settings_env,
    settings_from_env,
)
from p2pep.settings import (
    SERVICE_SETTINGS,
    AnchorSettings,
    ConsoleSettings,
    MatcherSettings,
    MeterSettings,
    PortalSettings,
    SettlementSettings,
)

HOST = "127.0.0.1"
#: settings a scenario's ``services_env`` / meter ``env`` may not set, and why
NOT_FROM_SCENARIOS = {"grpc_plaintext_loopback": "mutual TLS is not optional; bench/bench_mtls.py measures without it"}


@dataclass(frozen=True)
class NodeEndpoint:
    """What a service needs to know about the lnd node it uses (from the regtest harness).

    ``macaroons``: service -> path of the macaroon baked for it on this node
    (:mod:`p2pep.lnd.macaroons`); never lnd's admin macaroon, which stays with the runner."""

    name: str
    pubkey: str
    rpcserver: str
    tls_cert: str
    macaroons: Mapping[str, str]
    p2p: str

    def macaroon_for(self, service: str) -> str:
        """The macaroon ``service`` is given for this node: its own, or a ScenarioError."""
        if service not in self.macaroons:
            raise ScenarioError(service, f"no lnd macaroon baked for it on node {self.name}")
        return self.macaroons[service]


@dataclass(frozen=True)
class ServiceLaunch:
    name: str  # "matcher", "settlement", "meter-1", ...
    module: str  # run as `python -m <module>`
    grpc_port: int
    metrics_port: int
    log_path: Path
    data_dir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    health_port: int = -1
    """Its plaintext health-only port (:func:`with_health_port`); -1: none."""

    @property
    def target(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    @property
    def health_target(self) -> str:
        return f"{HOST}:{self.health_port}"

    @property
    def kind(self) -> str:
        return "meter" if self.module == "services.meter" else self.name


@dataclass(frozen=True)
class Layout:
    """Where a scenario's services keep their data and logs (inside the run dir)."""

    root: Path
    tls: Path | None = None  # the run's TLS folder; default <root>/tls

    @property
    def tls_dir(self) -> Path:
        return self.tls if self.tls is not None else self.root / "tls"

    def data_dir(self, service: str) -> Path:
        return self.root / service

    def log(self, service: str) -> Path:
        return self.root / "logs" / f"{service}.log"

    @property
    def report(self) -> Path:
        return self.root / "report.json"


def _common(layout: Layout, grpc_port: int, metrics_port: int, log_level: str) -> dict[str, object]:
    return {"grpc_host": HOST, "grpc_port": grpc_port, "metrics_port": metrics_port, "log_json": True,
            "log_level": log_level, "tls_dir": str(layout.tls_dir)}


def service_env(cls: type[BaseServiceSettings], service: str, values: Mapping[str, object],
                overrides: Mapping[str, str], where: str) -> dict[str, str]:
    """The environment of ``service``: ``values`` (field name -> value) as the variables
    ``cls`` reads, then the scenario's raw ``overrides`` (variable -> text; ``where`` is their
    key in the scenario, e.g. ``services_env.settlement``). All of it is read back into ``cls``
    here, so a name it does not read or a value it refuses is a :class:`ScenarioError` naming
    it before any process is started."""
    try:
        env = settings_env(cls, **values)
    except ValueError as exc:
        raise ScenarioError(service, str(exc)) from None
    if not overrides:
        return env
    for variable, text in overrides.items():
        try:
            name = setting_of(cls, variable)
            if name in NOT_FROM_SCENARIOS:
                raise ValueError(f"{variable} is not a scenario's to set ({NOT_FROM_SCENARIOS[name]})")
            env[env_name(cls, name)] = text
        except ValueError as exc:
            raise ScenarioError(f"{where}.{variable}", str(exc)) from None
    try:
        settings_from_env(cls, env)
    except BadSettings as exc:
        raise ScenarioError(where, str(exc)) from None
    return env


def with_plaintext_loopback(launch: ServiceLaunch) -> ServiceLaunch:
    """``launch`` in the TLS benchmark's plaintext loopback mode (:mod:`p2pep.servicekit.tls`;
    only ``RunOptions.grpc_plaintext_loopback`` asks for it). Its settings refuse any address
    that is not loopback, checked here before a process starts."""
    cls = SERVICE_SETTINGS[launch.module.removeprefix("services.")]
    env = {**launch.env, env_name(cls, "grpc_plaintext_loopback"): "true"}
    try:
        settings_from_env(cls, env)
    except BadSettings as exc:
        raise ScenarioError(launch.name, str(exc)) from None
    return replace(launch, env=env)


def with_health_port(launch: ServiceLaunch, port: int) -> ServiceLaunch:
    """``launch`` with its plaintext health-only port (what a Kubernetes probe dials) set to ``port``."""
    cls = SERVICE_SETTINGS[launch.module.removeprefix("services.")]
    env = {**launch.env, env_name(cls, "health_port"): str(port)}
    settings_from_env(cls, env)  # read back, as the service will: a port it refuses fails here
    return replace(launch, health_port=port, env=env)


def kwp(wp: int) -> Decimal:
    """Integer watt-peak as the meter's kWp setting (a Decimal: exact)."""
    return Decimal(wp) / 1000


def matcher_launch(s: Scenario, layout: Layout, grpc_port: int, metrics_port: int,
                   log_level: str = "INFO") -> ServiceLaunch:
    values = {**_common(layout, grpc_port, metrics_port, log_level),
              "db_path": str(layout.data_dir("matcher") / "matcher.db"), "mode": s.matcher_mode}
    env = service_env(MatcherSettings, "matcher", values, s.services_env.get("matcher", {}), "services_env.matcher")
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
    values = {
        **_common(layout, grpc_port, metrics_port, log_level),
        "db_path": str(layout.data_dir("anchor") / "anchor.db"),
        "lnd_rpcserver": hub.rpcserver,
        "lnd_tls_cert": hub.tls_cert,
        "lnd_macaroon": hub.macaroon_for(ANCHOR.service),
        "btcd_rpchost": btcd.rpchost,
        "btcd_user": btcd.user,
        "btcd_pass": btcd.password,
        "btcd_cert": btcd.cert,
    }
    env = service_env(AnchorSettings, "anchor", values, s.services_env.get("anchor", {}), "services_env.anchor")
    return ServiceLaunch("anchor", "services.anchor", grpc_port, metrics_port, layout.log("anchor"),
                         layout.data_dir("anchor"), env)


def settlement_launch(s: Scenario, layout: Layout, grpc_port: int, metrics_port: int, matcher_target: str,
                      log_level: str = "INFO", anchor_target: str = "") -> ServiceLaunch:
    values: dict[str, object] = {
        **_common(layout, grpc_port, metrics_port, log_level),
        "db_path": str(layout.data_dir("settlement") / "settlement.db"),
        "matcher_target": matcher_target,
        "increment_wh": s.increment_wh,
        "payment_timeout_s": s.payment_timeout_s,
    }
    if anchor_target:
        values["anchor_target"] = anchor_target
    env = service_env(SettlementSettings, "settlement", values, s.services_env.get("settlement", {}), "services_env.settlement")
    return ServiceLaunch("settlement", "services.settlement", grpc_port, metrics_port, layout.log("settlement"),
                         layout.data_dir("settlement"), env)


def console_auth_db(scenario_root: Path) -> Path:
    """The console's store of operator accounts and sessions (``p2pep operator add`` writes it)."""
    return Layout(scenario_root).data_dir("console") / "auth.db"


def console_launch(s: Scenario, layout: Layout, grpc_port: int, metrics_port: int, settlement_target: str,
                   matcher_target: str, log_level: str = "INFO", anchor_target: str = "") -> ServiceLaunch:
    """The operator's console: its web page is on ``metrics_port`` (``/``), behind an operator sign-in."""
    values = {**_common(layout, grpc_port, metrics_port, log_level), "settlement_target": settlement_target,
              "matcher_target": matcher_target, "anchor_target": anchor_target,
              "auth_db_path": str(console_auth_db(layout.root))}
    env = service_env(ConsoleSettings, "console", values, s.services_env.get("console", {}), "services_env.console")
    return ServiceLaunch("console", "services.console", grpc_port, metrics_port, layout.log("console"),
                         layout.data_dir("console"), env)


def portal_launch(s: Scenario, layout: Layout, grpc_port: int, metrics_port: int, settlement_target: str,
                  log_level: str = "INFO", anchor_target: str = "", matcher_target: str = "") -> ServiceLaunch:
    """The household portal (accounts, pairing, the household app) on ``metrics_port`` (``/``)."""
    values = {**_common(layout, grpc_port, metrics_port, log_level), "settlement_target": settlement_target,
              "anchor_target": anchor_target, "matcher_target": matcher_target,
              "auth_db_path": str(layout.data_dir("portal") / "portal.db")}
    env = service_env(PortalSettings, "portal", values, s.services_env.get("portal", {}), "services_env.portal")
    return ServiceLaunch("portal", "services.portal", grpc_port, metrics_port, layout.log("portal"),
                         layout.data_dir("portal"), env)


def meter_source_values(m: MeterSpec) -> dict[str, object]:
    """The meter settings of what flows through it (its source, and a prosumer's load and PV)."""
    values: dict[str, object] = {"source": m.source, "lat": m.lat, "lon": m.lon, "tz": m.tz}
    if m.source == "constant":
        values["constant_w"] = m.constant_w
    elif m.source == "pv":
        values["pv_kwp"] = kwp(m.pv_wp)
    elif m.source == "h0":
        values["annual_kwh"] = m.annual_kwh
    elif m.source == "csv":
        values["csv_path"] = m.csv_path
    if m.role == "prosumer":  # a prosumer nets its household load against its PV
        if m.annual_kwh:
            values["annual_kwh"] = m.annual_kwh
        if m.pv_wp:
            values["pv_kwp"] = kwp(m.pv_wp)
    return values


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
    advertise_address: str = "",
) -> ServiceLaunch:
    """``peers``: the other meters' lnd nodes (their p2p addresses, for direct channels).
    ``advertise_address``: where settlement dials the meter, if not its own port (the
    services' end of its link, :mod:`p2pep.scenario.links`)."""
    data = layout.data_dir(m.name)
    t = s.timing
    values: dict[str, object] = {
        **_common(layout, grpc_port, metrics_port, log_level),
        "meter_id": m.name,
        "role": m.role,
        "key_path": data / "meter.key",
        "db_path": str(data / "meter.db"),
        "lnd_rpcserver": node.rpcserver,
        "lnd_tls_cert": node.tls_cert,
        "lnd_macaroon": node.macaroon_for(METER.service),
        "lnd_p2p": node.p2p,
        "matcher_target": matcher_target,
        "settlement_target": settlement_target,
        "sim_start": t.sim_start,
        "accel": t.accel,
        "tick_s": t.tick_s,
        "window_s": t.window_s,
        "price_msat_per_kwh": m.price_msat_per_kwh,
        "network_mode": "hub" if hub is not None else "adhoc",
    }
    if advertise_address:
        values["advertise_address"] = advertise_address
    if hub is not None:
        values["hub"] = f"{hub.pubkey}@{hub.p2p}"
    others = [n for n in peers if n.name != m.name]
    if others:
        values["peers"] = ",".join(f"{n.name}={n.pubkey}@{n.p2p}" for n in others)
    values.update(meter_source_values(m))
    where = f"meters[{s.meter_names.index(m.name)}].env" if m.name in s.meter_names else f"{m.name}.env"
    env = service_env(MeterSettings, m.name, values, m.env, where)
    return ServiceLaunch(m.name, "services.meter", grpc_port, metrics_port, layout.log(m.name), data, env)
