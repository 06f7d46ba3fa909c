"""Monitoring as code (issue 12), without a network: the scrape configuration, the rules and
their unit tests (promtool), the Kubernetes variant's labels, and the dashboards.

promtool comes with Debian's ``prometheus`` package, which ``make setup`` installs
(scripts/install-system-deps.sh); the promtool tests skip, saying so, only where it is missing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from p2pep.monitoring import dashboards
from p2pep.monitoring.scrape import rule_files, run_targets, scrape_config, write_config
from p2pep.regtest.run_dir import save_state
from p2pep.scenario import run_state as scenario_state

ROOT = Path(__file__).resolve().parent.parent
MON = ROOT / "monitoring"
PROM = MON / "prometheus"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool missing: `make setup` installs Debian's prometheus package")


def promtool(*args: str, cwd: Path = ROOT) -> str:
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def fake_run(run_dir: Path) -> None:
    """State files as `scenario run` leaves them: a network with a hub and two meters' nodes,
    and the scenario's services."""
    save_state(run_dir, {"nodes": [
        {"name": "hub", "metrics_port": 9101}, {"name": "meter-1", "metrics_port": 9102},
        {"name": "meter-2", "metrics_port": 9103}]})
    scenario_state.save(run_dir, {"services": {
        "matcher": {"module": "services.matcher", "metrics": "http://127.0.0.1:8001/metrics"},
        "settlement": {"module": "services.settlement", "metrics": "http://127.0.0.1:8002/metrics"},
        "anchor": {"module": "services.anchor", "metrics": "http://127.0.0.1:8003/metrics"},
        "console": {"module": "services.console", "metrics": "http://127.0.0.1:8004/metrics"},
        "meter-1": {"module": "services.meter", "metrics": "http://127.0.0.1:8005/metrics"},
        "meter-2": {"module": "services.meter", "metrics": "http://127.0.0.1:8006/metrics"}}})


def alerts() -> dict[str, dict[str, Any]]:
    out = {}
    for path in rule_files():
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    out[rule["alert"]] = rule
    return out


# --- the scrape configuration of a run ---------------------------------------------------------------

def test_scrape_targets_and_labels_from_a_runs_state(tmp_path: Path) -> None:
    fake_run(tmp_path)
    got = {(t.job, t.address, tuple(sorted(t.labels.items()))) for t in run_targets(tmp_path)}
    assert got == {
        ("p2pep-matcher", "127.0.0.1:8001", (("service", "matcher"),)),
        ("p2pep-settlement", "127.0.0.1:8002", (("service", "settlement"),)),
        ("p2pep-anchor", "127.0.0.1:8003", (("service", "anchor"),)),
        ("p2pep-console", "127.0.0.1:8004", (("service", "console"),)),
        ("p2pep-meter", "127.0.0.1:8005", (("meter", "meter-1"), ("service", "meter"))),
        ("p2pep-meter", "127.0.0.1:8006", (("meter", "meter-2"), ("service", "meter"))),
        ("lnd", "127.0.0.1:9101", (("node", "hub"),)),
        ("lnd", "127.0.0.1:9102", (("node", "meter-1"),)),
        ("lnd", "127.0.0.1:9103", (("node", "meter-2"),)),
    }
    cfg = scrape_config(run_targets(tmp_path), scrape_interval="2s", rule_files=["r.yml"])
    assert [j["job_name"] for j in cfg["scrape_configs"]] == sorted(j["job_name"] for j in cfg["scrape_configs"])
    assert cfg["global"] == {"scrape_interval": "2s", "scrape_timeout": "2s", "evaluation_interval": "2s"}
    assert run_targets(tmp_path / "nothing-here") == []


@needs_promtool
def test_promtool_checks_the_generated_config_with_the_rules(tmp_path: Path) -> None:
    fake_run(tmp_path)
    path = write_config(tmp_path, scrape_interval="1s")
    assert json.loads(path.read_text())["rule_files"] == [str(p) for p in rule_files()]
    out = promtool("check", "config", str(path))
    assert "SUCCESS" in out


@needs_promtool
def test_promtool_checks_the_rules_and_runs_their_unit_tests() -> None:
    promtool("check", "rules", *map(str, rule_files()))
    tests = sorted((PROM / "tests").glob("*.yml"))
    assert tests
    out = promtool("test", "rules", *(str(t.relative_to(PROM)) for t in tests), cwd=PROM)
    assert "SUCCESS" in out


def test_every_alert_has_runbook_text_and_a_test_that_fires_it_and_one_that_stays_silent() -> None:
    rules = alerts()
    issue = {"P2PEPConsumerDefaulted", "P2PEPPaymentsFailing", "P2PEPUnpaidExposureAboveIncrement",
             "P2PEPMeterSilent", "P2PEPDemandUncovered", "P2PEPOutboxGrowing", "P2PEPAnchorBatchUnconfirmed",
             "P2PEPLndDown", "P2PEPChannelLiquidityLow", "P2PEPServiceDown"}
    assert issue <= set(rules)
    fired: set[str] = set()
    silent: set[str] = set()
    for path in sorted((PROM / "tests").glob("*.yml")):
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                (fired if case.get("exp_alerts") else silent).add(case["alertname"])
    for name, rule in rules.items():
        ann = rule.get("annotations", {})
        assert {"summary", "description", "runbook"} <= set(ann), name
        assert len(ann["runbook"].splitlines()) >= 2, f"{name}: the runbook says what to do, step by step"
        assert "$value" not in json.dumps(ann), f"{name}: templates use labels only (scripts/fill_alert_annotations.py)"
        assert name in fired, f"{name}: no unit test fires it"
        assert name in silent, f"{name}: no unit test shows it silent"



def test_the_alerts_of_a_meter_that_leaves_and_comes_back_have_unit_tests_that_fire_and_then_clear() -> None:
    """P2PEPMeterSilent and P2PEPServiceDown (what producer-leaves fires on the real network,
    tests/test_monitoring_regtest.py): in one unit test each fires and is then silent again."""
    def seconds(d: str) -> float:
        return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in re.findall(r"([0-9.]+)([hms])", d))

    cleared: set[str] = set()
    for path in sorted((PROM / "tests").glob("*.yml")):
        for test in yaml.safe_load(path.read_text())["tests"]:
            cases = test.get("alert_rule_test", [])
            for fire in (c for c in cases if c.get("exp_alerts")):
                if any(c["alertname"] == fire["alertname"] and not c.get("exp_alerts")
                       and seconds(c["eval_time"]) > seconds(fire["eval_time"]) for c in cases):
                    cleared.add(fire["alertname"])
    assert {"P2PEPMeterSilent", "P2PEPServiceDown"} <= cleared, cleared

# --- Kubernetes: the same target labels from pod labels ----------------------------------------------

def relabel(rules: list[dict[str, Any]], labels: dict[str, str], operator: bool = False) -> dict[str, str] | None:
    """Prometheus's relabelling (replace, keep, drop; regexes anchored), enough for our configs.
    ``operator``: the PodMonitor spelling (camelCase keys)."""
    key = (lambda k: {"source_labels": "sourceLabels", "target_label": "targetLabel"}.get(k, k)) if operator \
        else (lambda k: k)
    out = dict(labels)
    for r in rules:
        value = ";".join(out.get(s, "") for s in r.get(key("source_labels"), []))
        m = re.fullmatch(r.get("regex", "(.*)"), value)
        action = r.get("action", "replace")
        if action == "keep" and not m:
            return None
        if action == "drop" and m:
            return None
        if action == "replace" and m:
            out[r[key("target_label")]] = m.expand(r.get("replacement", "$1").replace("$1", r"\1"))
    return {k: v for k, v in out.items() if not k.startswith("__")}


PODS = {  # pod labels -> the target labels the rules and dashboards expect
    "settlement": ({"app.kubernetes.io/part-of": "p2pep", "app.kubernetes.io/name": "settlement"},
                   {"job": "p2pep-settlement", "service": "settlement"}),
    "meter": ({"app.kubernetes.io/part-of": "p2pep", "app.kubernetes.io/name": "meter", "p2pep.io/meter": "meter-1"},
              {"job": "p2pep-meter", "service": "meter", "meter": "meter-1"}),
    "lnd": ({"app.kubernetes.io/part-of": "p2pep", "app.kubernetes.io/name": "lnd", "p2pep.io/node": "hub"},
            {"job": "lnd", "node": "hub"}),
}


def pod_meta(labels: dict[str, str]) -> dict[str, str]:
    """The discovery labels of a pod (its labels' names sanitized, as Prometheus does)."""
    meta = {"__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", k): v for k, v in labels.items()}
    return {**meta, "__meta_kubernetes_pod_container_port_name": "metrics", "__meta_kubernetes_namespace": "p2pep",
            "__meta_kubernetes_pod_name": "x-0"}


def test_kubernetes_discovery_gives_the_same_target_labels_as_the_static_config() -> None:
    cfg = yaml.safe_load((MON / "k8s" / "prometheus-kubernetes.yml").read_text())
    jobs = {j["job_name"]: j["relabel_configs"] for j in cfg["scrape_configs"]}
    for pod, (labels, want) in PODS.items():
        got = [r for r in (relabel(rules, pod_meta(labels)) for rules in jobs.values()) if r is not None]
        assert len(got) == 1, pod  # exactly one job scrapes it
        assert {k: v for k, v in got[0].items() if k not in ("namespace", "pod")} == want, pod
    other = pod_meta({"app.kubernetes.io/name": "settlement"})  # not part of p2pep: not scraped
    assert all(relabel(rules, other) is None for rules in jobs.values())


def test_podmonitors_give_the_same_target_labels() -> None:
    docs = list(yaml.safe_load_all((MON / "k8s" / "podmonitors.yml").read_text()))
    assert {d["kind"] for d in docs} == {"PodMonitor"}
    for pod, (labels, want) in PODS.items():
        matched = []
        for d in docs:
            sel = d["spec"]["selector"]
            if any(labels.get(k) != v for k, v in sel.get("matchLabels", {}).items()):
                continue
            if any(labels.get(e["key"]) not in e["values"] for e in sel.get("matchExpressions", [])):
                continue
            for ep in d["spec"]["podMetricsEndpoints"]:
                assert ep["port"] == "metrics"
                got = relabel(ep["relabelings"], pod_meta(labels), operator=True)
                assert got is not None
                matched.append({k: v for k, v in got.items() if k in want or k == "job"})
        assert matched == [want], pod


# --- dashboards ----------------------------------------------------------------------------------------

def test_committed_dashboards_are_the_generators_output() -> None:
    committed = {p.name: p.read_text() for p in (MON / "grafana" / "dashboards").glob("*.json")}
    assert committed == dashboards.rendered(), "run `python -m p2pep.monitoring.dashboards` and commit"


def test_the_five_dashboards_every_panel_has_a_query() -> None:
    titles = {d.title for d in dashboards.DASHBOARDS}
    assert titles == {f"P2PEP / {n}" for n in ("Microgrid", "Market", "Settlement", "Lightning", "Anchoring")}
    for d in dashboards.DASHBOARDS:
        doc = dashboards.dashboard_json(d)
        assert doc["uid"] == d.uid and doc["panels"]
        ids = [p["id"] for p in doc["panels"]]
        assert len(set(ids)) == len(ids)
        for p in doc["panels"]:
            assert p["targets"], f"{d.uid}: {p['title']} has no query"
            for t in p["targets"]:
                assert t["expr"].strip() and t["datasource"]["uid"] == "${datasource}", (d.uid, p["title"])
    provisioning = yaml.safe_load((MON / "grafana" / "provisioning" / "dashboards" / "p2pep.yml").read_text())
    assert provisioning["providers"][0]["type"] == "file"
    ds = yaml.safe_load((MON / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert ds["datasources"][0]["name"] == "Prometheus" and ds["datasources"][0]["type"] == "prometheus"


@pytest.mark.skipif(shutil.which("prometheus") is None,
                    reason="prometheus missing: `make setup` installs Debian's prometheus package")
async def test_p2pep_up_starts_prometheus_beside_the_run_and_stops_it(tmp_path: Path) -> None:
    """`p2pep up`'s Prometheus (p2pep.monitoring.prometheus.serve_beside): started once the run's
    services run, with the run's configuration and the rules, its URL said and shown beside the
    console's (the live view's line of URLs: ``extra_urls``); stopped at the end."""
    import asyncio
    from types import SimpleNamespace

    from p2pep.monitoring.prometheus import PrometheusApi, serve_beside
    from p2pep.regtest import wait_for

    fake_run(tmp_path)
    said: list[str] = []
    run = SimpleNamespace(phase="network", run_dir=tmp_path, say=said.append, extra_urls={})
    finished = asyncio.Event()
    task = asyncio.create_task(serve_beside(run, finished, scrape_interval="1s"))  # type: ignore[arg-type]
    await asyncio.sleep(0.3)
    assert not said and not (tmp_path / "prometheus").exists()  # waits for the services
    run.phase = "running"
    await wait_for(lambda: said, timeout=60, what="prometheus started")
    url = said[0].split()[1]
    assert said[0].startswith("prometheus: http://127.0.0.1:")
    await wait_for(lambda: run.extra_urls, timeout=10, what="its URL beside the console's")
    assert run.extra_urls == {"prometheus": url}
    api = PrometheusApi(url)
    async def targets() -> bool:  # every service and lnd node of the run (down here: nothing runs)
        return len(await api.targets()) == 9

    await wait_for(targets, timeout=30, what="the run's 9 targets")
    assert {g["name"] for g in await api.rules()} >= {"p2pep-settlement", "p2pep-recording"}
    finished.set()
    assert await task == url
    assert not run.extra_urls  # stopped: no longer shown
    with pytest.raises(Exception):  # noqa: B017 - stopped: nothing answers
        await PrometheusApi(url, timeout_s=2).targets()
