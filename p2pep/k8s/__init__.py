"""Kubernetes deployment: the services' ConfigMaps, generated from their settings classes.

Invariants:

* Every variable in a generated ConfigMap is written by
  :func:`p2pep.servicekit.settings.settings_env` from field values, so its name is one the
  service's settings class reads and its value one the class accepts (read back on generation).
* Secret fields (:data:`SECRET_FIELDS`) never go into a ConfigMap: they are validated with a
  placeholder, then dropped; the workload reads them from a Secret (``p2pep k8s secrets``).
* The names of what the bootstrap makes (Secrets ``p2pep-lnd-admin-<node>`` exported from each
  lnd pod, ``p2pep-lnd-<component>`` with the component's baked macaroon, ConfigMap
  ``p2pep-hub``...) and which component gets which node's macaroon (:func:`lnd_secrets`) are
  spelled here once: ``p2pep k8s secrets``, the podman bootstrap and the in-cluster Job use them.
* The paths below are the mount points the manifests in ``k8s/base`` use; they are the one
  place those paths are spelled on the Python side.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from p2pep.servicekit.settings import BaseServiceSettings, settings_env
from p2pep.settings import SERVICE_SETTINGS

if TYPE_CHECKING:
    from p2pep.scenario.model import Scenario

GRPC_PORT = 50051
METRICS_PORT = 9100
HEALTH_PORT = 9101  # plaintext, grpc.health.v1 only: the kubelet's gRPC probes (the manifests' `grpc:` probes)
LND_RPC_PORT = 10009
LND_P2P_PORT = 9735
BTCD_RPC_PORT = 18334

DATA = "/data"  # the PersistentVolumeClaim of a StatefulSet
TLS = "/etc/p2pep/tls"  # Secret p2pep-tls-<component>: ca.crt, <component>.crt/.key
LND = "/etc/p2pep/lnd"  # Secret p2pep-lnd-<component>: tls.cert, p2pep-<service>.macaroon
BTCD = "/etc/p2pep/btcd"  # Secret p2pep-btcd-client: rpc.cert, user, pass
METER_KEY = "/etc/p2pep/meter-key"  # Secret p2pep-meterkey-<meter>: meter.key

MACAROON_SUBDIR = "data/chain/bitcoin/regtest"  # lnd's macaroons under its --lnddir (regtest)
HUB_NODE = "hub"  # the operator's lnd node (workload lnd-hub); every other node is a household's
HUB_CONFIGMAP = "p2pep-hub"  # P2PEP_METER_HUB: the hub's pubkey@lnd-hub:9735 (made by the bootstrap)
HUB_VARIABLE = "P2PEP_METER_HUB"
MINER_CONFIGMAP = "p2pep-btcd-miner"  # mining_addr: btcd mines to the bootstrap's faucet (regtest)
FAUCET_SECRET = "p2pep-faucet"  # secret_hex: the faucet's key (in-cluster: made by the Job once)
BOOTSTRAP_CONFIGMAP = "p2pep-bootstrap-config"


def admin_secret(node: str) -> str:
    """Secret of a node's ``tls.cert`` and ``admin.macaroon`` (written by its exporter sidecar;
    the operator's tooling only: no service mounts it)."""
    return f"p2pep-lnd-admin-{node}"


def lnd_workload(node: str) -> str:
    """The StatefulSet and Service of lnd node ``node`` (``hub`` -> ``lnd-hub``)."""
    return f"lnd-{node}"


def lnd_secrets(names: list[str], meters: Iterable[str] | None = None) -> dict[str, tuple[str, str]]:
    """Secret ``p2pep-lnd-<component>`` -> (node, service whose macaroon it holds), for the
    components among ``names``: the anchor holds the hub's ``anchor`` macaroon, each meter its
    own node's ``meter`` macaroon (docs/lnd-macaroons.md). ``meters``: the households' nodes
    (default :func:`households`, which reads the scenario: the images ship no scenarios, so
    the in-cluster Job passes its own)."""
    out = {"p2pep-lnd-anchor": (HUB_NODE, "anchor")} if "anchor" in names else {}
    out |= {f"p2pep-lnd-{m}": (m, "meter") for m in (households() if meters is None else meters) if m in names}
    return out


#: fields read from a Secret (env valueFrom), never a ConfigMap: service -> field -> placeholder
SECRET_FIELDS: dict[str, dict[str, str]] = {
    "anchor": {"btcd_user": "x", "btcd_pass": "x"},
}

OVERLAYS = ("regtest", "production")


@dataclass(frozen=True)
class Component:
    """One deployed P2PEP service: ``name`` is its workload, Service and certificate name."""

    name: str
    service: str  # key of SERVICE_SETTINGS; the image runs `python -m services.<service>`
    values: Mapping[str, object] = field(default_factory=dict)


def _common() -> dict[str, object]:
    return {"grpc_host": "0.0.0.0", "grpc_port": GRPC_PORT, "http_host": "0.0.0.0",
            "metrics_port": METRICS_PORT, "health_port": HEALTH_PORT, "log_json": True, "tls_dir": TLS}


def _target(name: str, port: int = GRPC_PORT) -> str:
    return f"{name}:{port}"


#: the scenario the regtest overlay is: its households, prices, clock and settlement increment
#: (the pod-level run, tests/test_k8s_pods.py, runs it against the overlay's pods)
REGTEST_SCENARIO = "hackathon"


def _scenario() -> Scenario:
    from p2pep.scenario.catalog import load_scenario

    return load_scenario(REGTEST_SCENARIO)


def _households(s: Scenario) -> dict[str, dict[str, object]]:
    """Each meter's own settings in the regtest overlay: the scenario's, as the scenario
    launcher gives them (:func:`p2pep.scenario.launch.meter_source_values`)."""
    from p2pep.scenario.launch import meter_source_values

    t = s.timing
    return {m.name: {"role": m.role, "price_msat_per_kwh": m.price_msat_per_kwh, "sim_start": t.sim_start,
                     "accel": t.accel, "tick_s": t.tick_s, "window_s": t.window_s, "network_mode": "hub",
                     **meter_source_values(m)}
            for m in s.meters}


@functools.cache
def households() -> dict[str, dict[str, object]]:
    """The regtest overlay's households (meter name -> its settings), from :data:`REGTEST_SCENARIO`.

    A function, not a constant: reading the scenario imports the scenario launcher, which
    imports the lnd client and its generated stubs, and ``p2pep --help`` must work without them."""
    return _households(_scenario())


def components(overlay: str) -> list[Component]:
    """The P2PEP services of ``overlay`` with the settings each gets from its ConfigMap."""
    if overlay not in OVERLAYS:
        raise ValueError(f"unknown overlay {overlay!r} (known: {', '.join(OVERLAYS)})")
    # production: the operator's own lnd and bitcoind (btcd-compatible JSON-RPC with --txindex)
    hub_lnd = "lnd-hub" if overlay == "regtest" else "hub-lnd.operator.svc"
    chain = "btcd" if overlay == "regtest" else "bitcoin-rpc.operator.svc"
    # regtest: settlement's increment and the matcher's mode of the scenario (production: defaults)
    s = _scenario() if overlay == "regtest" else None
    market: dict[str, object] = {"increment_wh": s.increment_wh, "payment_timeout_s": s.payment_timeout_s} if s else {}
    matching: dict[str, object] = {"mode": s.matcher_mode} if s else {}
    out = [
        Component("settlement", "settlement", {
            "db_path": f"{DATA}/settlement.sqlite", "key_path": f"{DATA}/settlement.key",
            "matcher_target": _target("matcher"), "anchor_target": _target("anchor"), **market}),
        Component("matcher", "matcher", {"db_path": f"{DATA}/matcher.sqlite", **matching}),
        Component("anchor", "anchor", {
            "db_path": f"{DATA}/anchor.sqlite", "lnd_rpcserver": _target(hub_lnd, LND_RPC_PORT),
            "lnd_tls_cert": f"{LND}/tls.cert", "lnd_macaroon": f"{LND}/p2pep-anchor.macaroon",
            "btcd_rpchost": _target(chain, BTCD_RPC_PORT), "btcd_cert": f"{BTCD}/rpc.cert",
            "min_confirmations": 1 if overlay == "regtest" else 6}),
        Component("console", "console", {
            "auth_db_path": f"{DATA}/auth.db", "settlement_target": _target("settlement"),
            "matcher_target": _target("matcher"), "anchor_target": _target("anchor"),
            "allowed_hosts": "console,localhost",
            "cookie_secure": overlay == "production"}),
        Component("portal", "portal", {
            "auth_db_path": f"{DATA}/auth.db", "settlement_target": _target("settlement"),
            "matcher_target": _target("matcher"), "anchor_target": _target("anchor"),
            "allowed_hosts": "portal,localhost", "cookie_secure": overlay == "production"}),
    ]
    if overlay == "regtest":
        for meter, own in households().items():
            out.append(Component(meter, "meter", {
                "meter_id": meter, **own, "state_dir": DATA, "db_path": f"{DATA}/meter.sqlite",
                "key_path": f"{METER_KEY}/meter.key", "advertise_address": _target(meter),
                "lnd_rpcserver": _target(f"lnd-{meter}", LND_RPC_PORT), "lnd_tls_cert": f"{LND}/tls.cert",
                "lnd_macaroon": f"{LND}/p2pep-meter.macaroon", "lnd_p2p": _target(f"lnd-{meter}", LND_P2P_PORT),
                "matcher_target": _target("matcher"), "settlement_target": _target("settlement"),
                "display_allowed_hosts": f"{meter},localhost"}))
    return out


def bootstrap_values() -> dict[str, object]:
    """The bootstrap Job's settings (:class:`p2pep.k8s.settings.BootstrapSettings`): the regtest
    scenario's nodes and amounts, so the Job funds and opens what ``p2pep up`` would."""
    n = _scenario().network
    return {"hub": HUB_NODE, "meters": ",".join(households()), "fund_sat": n.fund_sat,
            "channel_sat": n.channel_sat, "push_sat": n.push_sat, "btcd_rpchost": _target("btcd", BTCD_RPC_PORT),
            "btcd_dir": BTCD, "log_json": True}


def bootstrap_configmap_yaml() -> str:
    """ConfigMap ``p2pep-bootstrap-config`` (regtest) as YAML text, like :func:`configmap_yaml`."""
    import json

    from p2pep.k8s.settings import BootstrapSettings

    env = dict(sorted(settings_env(BootstrapSettings, **bootstrap_values()).items()))
    lines = ["# generated by `p2pep k8s config`: do not edit (tests/test_k8s.py compares)",
             "apiVersion: v1", "kind: ConfigMap", "metadata:", f"  name: {BOOTSTRAP_CONFIGMAP}",
             "  labels:", "    app.kubernetes.io/name: bootstrap", "    app.kubernetes.io/part-of: p2pep",
             "data:"]
    lines += [f"  {k}: {json.dumps(v)}" for k, v in env.items()]
    return "\n".join(lines) + "\n"


def component_env(c: Component) -> dict[str, str]:
    """The ConfigMap data of ``c``: its settings as variables, secret fields left out."""
    cls: type[BaseServiceSettings] = SERVICE_SETTINGS[c.service]
    secret = SECRET_FIELDS.get(c.service, {})
    env = settings_env(cls, **_common(), **c.values, **secret)
    for name in secret:
        env.pop(f"{cls.model_config.get('env_prefix', '')}{name.upper()}")
    return dict(sorted(env.items()))


def configmap_yaml(c: Component) -> str:
    """One ConfigMap ``p2pep-<name>-config`` as YAML text (stable: keys sorted, values quoted)."""
    import json

    lines = ["# generated by `p2pep k8s config`: do not edit (tests/test_k8s.py compares)",
             "apiVersion: v1", "kind: ConfigMap", "metadata:", f"  name: {c.name}-config",
             "  labels:", f"    app.kubernetes.io/name: {c.name}", "    app.kubernetes.io/part-of: p2pep",
             "data:"]
    lines += [f"  {k}: {json.dumps(v)}" for k, v in component_env(c).items()]
    return "\n".join(lines) + "\n"


def configmaps(overlay: str) -> dict[str, str]:
    """File name -> YAML text of every ConfigMap of ``overlay``."""
    out = {f"{c.name}.yaml": configmap_yaml(c) for c in components(overlay)}
    if overlay == "regtest":
        out["bootstrap.yaml"] = bootstrap_configmap_yaml()
    return out
