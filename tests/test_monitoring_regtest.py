"""The operator's monitoring on the real regtest network (issue 12's acceptance): a real
Prometheus (Debian's) scrapes a ``hackathon`` run through the generated configuration and
rules; every target is up, every dashboard panel's query returns data, and no alert fires
(Prometheus watches the whole run, to the end of its simulated time). In
``consumer-cannot-pay`` the consumer-default alert fires; in ``producer-leaves`` the alert
that fits a producer leaving, P2PEPMeterSilent, fires while it is away and clears once it is
back. The rules are the shipped ones, unchanged (no shortened ``for:``).

No Grafana server can be installed here, so the dashboards are proved by their queries: each
one is evaluated through Prometheus's HTTP API against what it scraped from the run.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from test_e2e_scenarios import assert_suppliers_paid_as_delivered, run_scenario

from p2pep.monitoring.dashboards import all_queries
from p2pep.monitoring.prometheus import LocalPrometheus, PrometheusApi
from p2pep.monitoring.scrape import run_targets, write_config
from p2pep.regtest import wait_for
from p2pep.scenario.report import EventOutcome
from p2pep.scenario.runner import ScenarioRunner

pytestmark = [
    pytest.mark.regtest,
    pytest.mark.skipif(shutil.which("prometheus") is None,
                       reason="prometheus missing: `make setup` installs Debian's prometheus package"),
]


def has_data(result: list[dict[str, Any]]) -> bool:
    """At least one series with a number (not NaN: e.g. a quantile over no observations)."""
    return any(not math.isnan(float(s["value"][1])) for s in result)


async def test_prometheus_scrapes_hackathon_every_target_up_every_panel_has_data_no_alert(tmp_path: Path) -> None:
    found: dict[str, Any] = {}

    async def during(r: ScenarioRunner) -> None:
        prom_dir = tmp_path / "prometheus"
        config = write_config(r.run_dir, prom_dir / "prometheus.yml", scrape_interval="2s")
        prom = LocalPrometheus(config, prom_dir)
        prom.start()
        try:
            await prom.wait_ready(60)
            api = PrometheusApi(prom.url)
            expected = {(t.job, t.address) for t in run_targets(r.run_dir)}
            found["expected_targets"] = expected

            async def all_up() -> bool:
                targets = await api.targets()
                found["targets"] = {(t["labels"]["job"], t["labels"]["instance"]): t["health"] for t in targets}
                return set(found["targets"]) == expected and all(h == "up" for h in found["targets"].values())

            try:
                await wait_for(all_up, timeout=90, interval=1, what="every target up")
            except TimeoutError as exc:
                raise AssertionError(f"{exc}: {found.get('targets')} (expected {expected})") from None
            found["labels"] = [t["labels"] for t in await api.targets()]

            waiting = {expr: (uid, title) for uid, title, expr in all_queries()}

            async def every_panel_has_data() -> bool:
                for expr in list(waiting):
                    if has_data(await api.query(expr)):
                        del waiting[expr]
                return not waiting

            try:
                await wait_for(every_panel_has_data, timeout=150, interval=2, what="data for every panel")
            except TimeoutError as exc:
                raise AssertionError(f"{exc}; still none: {sorted(waiting.items())}") from None
            # then watch the rest of the run: no alert may fire at any point of it
            await wait_for(lambda: r.phase != "running", timeout=r.scenario.timing.real_duration_s * 1.5 + 120,
                           interval=1, what="the end of the simulated time")
            found["up_at_end"] = await api.query("max_over_time(up[1m])")  # a busy scrape may time out once
            found["rules"] = await api.rules()
            found["alerts"] = await api.alerts()
            found["fired"] = await api.query('max_over_time(ALERTS{alertstate="firing"}[1h])')
        finally:
            prom.stop()

    report, runner = await run_scenario("hackathon", tmp_path, during)
    assert_suppliers_paid_as_delivered(report)
    # the targets: every service and every lnd node of the run, with the documented labels
    jobs = {job for job, _ in found["expected_targets"]}
    assert jobs == {"p2pep-matcher", "p2pep-settlement", "p2pep-anchor", "p2pep-console", "p2pep-portal", "p2pep-meter",
                    "lnd"}
    meters = {lab.get("meter") for lab in found["labels"] if lab["job"] == "p2pep-meter"}
    nodes = {lab.get("node") for lab in found["labels"] if lab["job"] == "lnd"}
    assert meters == {"meter-1", "meter-2", "meter-3"} and nodes == {"hub", "meter-1", "meter-2", "meter-3"}
    assert all(float(s["value"][1]) == 1 for s in found["up_at_end"]), found["up_at_end"]
    # the rules loaded and evaluated without errors; no alert fired on a healthy run
    rules = [rule for g in found["rules"] for rule in g["rules"]]
    assert len([x for x in rules if x["type"] == "alerting"]) >= 10
    assert all(x.get("health") == "ok" for x in rules), [(x["name"], x.get("lastError")) for x in rules
                                                        if x.get("health") != "ok"]
    firing = [a for a in found["alerts"] if a["state"] == "firing"]
    assert not firing and not found["fired"], (firing, found["fired"])


async def test_consumer_cannot_pay_fires_the_consumer_default_alert(tmp_path: Path) -> None:
    """consumer-cannot-pay: meter-3 defaults, and Prometheus's alerts API shows
    P2PEPConsumerDefaulted firing for it (and for nobody else)."""
    found: dict[str, Any] = {}

    async def during(r: ScenarioRunner) -> None:
        prom_dir = tmp_path / "prometheus"
        prom = LocalPrometheus(write_config(r.run_dir, prom_dir / "prometheus.yml", scrape_interval="2s"), prom_dir)
        prom.start()
        try:
            await prom.wait_ready(60)
            api = PrometheusApi(prom.url)

            async def defaulted_alert() -> list[dict[str, Any]]:
                return [a for a in await api.alerts()
                        if a["labels"]["alertname"] == "P2PEPConsumerDefaulted" and a["state"] == "firing"]

            found["alerts"] = await wait_for(defaulted_alert, timeout=r.scenario.timing.real_duration_s * 1.5 + 60,
                                             interval=1, what="P2PEPConsumerDefaulted firing")
        finally:
            prom.stop()

    report, _ = await run_scenario("consumer-cannot-pay", tmp_path, during)
    assert [c for c in report["contracts"] if c["state"] == "CONTRACT_STATE_DEFAULTED"]
    assert {a["labels"]["consumer"] for a in found["alerts"]} == {"meter-3"}, found["alerts"]
    (alert,) = found["alerts"]
    assert alert["annotations"]["summary"] == "Consumer meter-3 defaulted on a contract"
    assert "runbook" in alert["annotations"]


def outcome(r: ScenarioRunner, action: str) -> EventOutcome | None:
    """The scenario event ``action`` once it has been applied (None before)."""
    return next((o for o in r.outcomes if o.action == action and o.applied_real_s is not None), None)


async def test_producer_leaves_meter_silent_fires_while_it_is_away_and_clears_once_it_is_back(tmp_path: Path) -> None:
    """producer-leaves: meter-2 leaves (SIGTERM) at sim+15m and comes back at sim+60m (90 s
    later). What an operator must learn is that a meter stopped reporting: settlement gets no
    readings of meter-2, so P2PEPMeterSilent{meter="meter-2"} (silence over 30 s, for 30 s)
    fires while it is away, read from Prometheus's alerts API, and is gone from it once the
    meter is back and settlement accepts its readings again. Nothing else fires but what is
    about meter-2 being away (its scrape target down: P2PEPServiceDown), and that clears too.
    The scenario's own checks hold as well: the contracts it held when it left ended, paid
    only for what was delivered, and the consumer was re-matched to meter-1 or blocked."""
    found: dict[str, Any] = {"timeline": []}

    async def during(r: ScenarioRunner) -> None:
        prom_dir = tmp_path / "prometheus"
        prom = LocalPrometheus(write_config(r.run_dir, prom_dir / "prometheus.yml", scrape_interval="2s"), prom_dir)
        prom.start()
        timeline: list[tuple[float, str, frozenset[tuple[str, str, str]]]] = found["timeline"]

        def elapsed() -> float:
            return round(time.monotonic() - r.t0, 1)

        async def about_meter_2() -> frozenset[tuple[str, str, str]]:
            """(alertname, state, severity) of the alerts about meter-2; the timeline records changes."""
            now = frozenset((a["labels"]["alertname"], a["state"], a["labels"].get("severity", ""))
                            for a in await api.alerts() if a["labels"].get("meter") == "meter-2")
            if not timeline or timeline[-1][2] != now:
                back = outcome(r, "start")
                timeline.append((elapsed(), "back" if back else "away" if outcome(r, "stop") else "before", now))
            return now

        try:
            await prom.wait_ready(60)
            api = PrometheusApi(prom.url)
            timing = r.scenario.timing
            back_ms = timing.sim_start_ms + r.scenario.events[1].at_s * 1000

            def until_back() -> float:
                return r.clock.real_until(time.monotonic(), back_ms)

            async def silent_firing() -> bool:
                return ("P2PEPMeterSilent", "firing", "warning") in await about_meter_2()

            # it fires while meter-2 is away: before the scenario starts it again
            await wait_for(silent_firing, timeout=until_back() + 10, interval=1,
                           what="P2PEPMeterSilent firing for meter-2")
            found["fired_at"], found["left"] = elapsed(), outcome(r, "stop")
            found["back_when_fired"] = outcome(r, "start")

            async def cleared() -> bool:
                return not await about_meter_2() and outcome(r, "start") is not None

            await wait_for(cleared, timeout=until_back() + 90, interval=1,
                           what="no alert about meter-2 once it is back")
            found["cleared_at"], found["back"] = elapsed(), outcome(r, "start")
            await wait_for(lambda: r.phase != "running", timeout=timing.real_duration_s * 1.5 + 120,
                           interval=1, what="the end of the simulated time")
            await about_meter_2()
            found["alerts_at_end"] = await api.alerts()
            found["fired"] = await api.query('max_over_time(ALERTS{alertstate="firing"}[1h])')
        finally:
            prom.stop()

    report, runner = await run_scenario("producer-leaves", tmp_path, during)
    story = found["timeline"]
    # the scenario's own checks (in the report's expected checks too)
    held = set(report["events"][0]["detail"]["delivered_wh_before"])  # every contract when it left
    left = [c for c in report["contracts"] if c["supplier"] == "meter-2" and c["contract_id"] in held]
    assert left and all(c["state"] != "CONTRACT_STATE_ACTIVE" for c in left), left
    for c in report["contracts"]:  # nothing paid for energy not delivered
        assert c["paid_wh"] <= c["delivered_wh"], c
    leave, back = report["events"]
    assert leave["ok"] and back["ok"] and runner.procs["meter-2"].starts == 2, report["events"]
    # fired while it was away, cleared once it was back
    assert found["left"] is not None and found["back_when_fired"] is None, story
    assert found["back"] is not None and found["cleared_at"] > found["back"].applied_real_s, story
    fired = {(s["metric"]["alertname"], s["metric"].get("meter", "")) for s in found["fired"]}
    assert ("P2PEPMeterSilent", "meter-2") in fired, (fired, story)
    assert fired <= {("P2PEPMeterSilent", "meter-2"), ("P2PEPServiceDown", "meter-2")}, (fired, story)
    assert not [a for a in found["alerts_at_end"] if a["state"] == "firing"], (found["alerts_at_end"], story)
