"""The Prometheus scrape configuration of a run: static targets from its state files.

A run dir holds the regtest network's ``state.json`` (each lnd node and the port of its
``--prometheus.listen``) and the scenario's ``scenario/state.json`` (each service's
``/metrics``). :func:`run_targets` reads both; :func:`scrape_config` builds ``prometheus.yml``.

Label conventions (the same for the Kubernetes variant in ``monitoring/k8s/``, which the
rules and dashboards rely on):

* ``job``: ``p2pep-<service>`` for our services (``p2pep-matcher``, ``p2pep-settlement``,
  ``p2pep-anchor``, ``p2pep-console``, ``p2pep-meter``), ``lnd`` for lnd nodes;
* ``service``: ``matcher``, ``settlement``, ``anchor``, ``console``, ``meter`` (our services);
* ``meter``: the meter id, on each meter service's target;
* ``node``: the lnd node's name (``hub``, or the meter it belongs to), on each lnd target.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from p2pep.regtest.run_dir import load_state
from p2pep.scenario import run_state as scenario_state

SERVICES = ("matcher", "settlement", "anchor", "console", "meter")
METER_MODULE = "services.meter"
REPO = Path(__file__).resolve().parents[2]
RULES_DIR = REPO / "monitoring" / "prometheus" / "rules"


@dataclass(frozen=True)
class Target:
    job: str
    address: str  # host:port
    labels: dict[str, str] = field(default_factory=dict)
    metrics_path: str = "/metrics"


def service_target(name: str, module: str, metrics_url: str) -> Target:
    """One of our services, from its scenario state entry."""
    u = urlsplit(metrics_url)
    if not u.hostname or not u.port:
        raise ValueError(f"{name}: metrics URL {metrics_url!r} has no host:port")
    if module == METER_MODULE:
        return Target("p2pep-meter", f"{u.hostname}:{u.port}", {"service": "meter", "meter": name}, u.path or "/metrics")
    return Target(f"p2pep-{name}", f"{u.hostname}:{u.port}", {"service": name}, u.path or "/metrics")


def lnd_target(name: str, metrics_port: int, host: str = "127.0.0.1") -> Target:
    return Target("lnd", f"{host}:{metrics_port}", {"node": name})


def run_targets(run_dir: Path) -> list[Target]:
    """Every target of the run in ``run_dir``: its services (if a scenario was started there)
    and its lnd nodes (if a network was brought up there)."""
    out: list[Target] = []
    scen = scenario_state.load(run_dir) or {}
    for name, svc in sorted(scen.get("services", {}).items()):
        if svc.get("metrics"):
            out.append(service_target(name, str(svc.get("module", "")), str(svc["metrics"])))
    net = load_state(run_dir) or {}
    for node in net.get("nodes", []):
        if node.get("metrics_port"):
            out.append(lnd_target(str(node["name"]), int(node["metrics_port"])))
    return out


def scrape_config(targets: Iterable[Target], *, scrape_interval: str = "5s", evaluation_interval: str | None = None,
                  rule_files: Sequence[Path | str] = ()) -> dict[str, Any]:
    """``prometheus.yml`` as a dict: one scrape job per ``job``, a static config per target
    (each with its own labels), the rule files, global labels none."""
    jobs: dict[tuple[str, str], list[Target]] = {}
    for t in targets:
        jobs.setdefault((t.job, t.metrics_path), []).append(t)
    scrape_configs = []
    for (job, path), ts in sorted(jobs.items()):
        scrape_configs.append({
            "job_name": job,
            "metrics_path": path,
            "static_configs": [{"targets": [t.address], "labels": dict(sorted(t.labels.items()))}
                               for t in sorted(ts, key=lambda t: (sorted(t.labels.items()), t.address))],
        })
    return {
        "global": {"scrape_interval": scrape_interval, "scrape_timeout": scrape_interval,
                   "evaluation_interval": evaluation_interval or scrape_interval},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": scrape_configs,
    }


def rule_files(rules_dir: Path = RULES_DIR) -> list[Path]:
    return sorted(rules_dir.glob("*.yml"))


def write_config(run_dir: Path, out: Path | None = None, *, scrape_interval: str = "5s",
                 evaluation_interval: str | None = None, rules: Sequence[Path] | None = None) -> Path:
    """Write the run's ``prometheus.yml`` (default: ``<run dir>/prometheus/prometheus.yml``)."""
    out = out or run_dir / "prometheus" / "prometheus.yml"
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg = scrape_config(run_targets(run_dir), scrape_interval=scrape_interval,
                        evaluation_interval=evaluation_interval,
                        rule_files=rule_files() if rules is None else rules)
    # JSON is YAML: Prometheus reads it as is, and no YAML library is needed to write it
    out.write_text(json.dumps(cfg, indent=2) + "\n")
    return out
