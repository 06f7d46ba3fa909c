"""The pod-level run: the regtest overlay's workloads as pods on podman (images built by
`make images`, manifests translated by :mod:`p2pep.k8s.podman`), bootstrapped by the overlay's
own Job and the lnd pods' exporter sidecars played as pods with the folder store for the
Kubernetes API (:mod:`p2pep.k8s.pods`; the Job run twice, the second run doing nothing), and
the ``hackathon`` scenario run against them. It checks what the process-level run checks: the consumer's demand split over both
producers, each producer's own lnd invoices summing to exactly its delivered Wh x price,
no relay energized without cover, every contract anchored and its document verified
against btcd; then that nothing of the run is left on podman (pods, volumes, network)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import logcheck
import pytest

from p2pep.k8s import admin_secret, households
from p2pep.k8s.pods import BTCD_USER, NETWORK, PREFIX, Podman, PodScenarioRunner
from p2pep.scenario.catalog import load_scenario
from p2pep.scenario.runner import RunOptions

pytestmark = pytest.mark.regtest
REPO = Path(__file__).resolve().parents[1]


def build_images() -> float:
    """`make images` (cached: a second build reuses every layer); returns its seconds."""
    t = time.monotonic()
    subprocess.run(["bash", str(REPO / "scripts" / "build-images.sh")], check=True, cwd=REPO, timeout=3600)
    return time.monotonic() - t


async def test_hackathon_on_the_regtest_overlays_pods(tmp_path: Path) -> None:
    build_s = build_images()
    said: list[str] = []
    found: dict[str, Any] = {}

    async def before_down(r: PodScenarioRunner) -> None:
        """While btcd still runs: each signed contract's document verifies against it."""
        assert r.report is not None and r.net is not None
        await r.net.mine(2)
        signed = {c["contract_id"] for c in r.report["contracts"] if c["state"] != "CONTRACT_STATE_REJECTED"}
        found["signed"] = signed
        found["verified"] = {}
        for cid, doc in r.report["documents"].items():
            if cid not in signed:
                continue
            path = tmp_path / f"{cid}.json"
            path.write_text(json.dumps(doc))
            res = await asyncio.to_thread(subprocess.run, [
                sys.executable, "-m", "p2pep.cli", "verify", str(path),
                "--btcd-rpc", f"{r.cluster.addresses['btcd']}:18334", "--btcd-user", BTCD_USER,
                "--btcd-pass", r.cluster.btcd_pass, "--btcd-cert", str(r.run_dir / "btcd" / "rpc.cert")],
                capture_output=True, text=True, timeout=120)
            found["verified"][cid] = (res.returncode, res.stdout[-500:], res.stderr[-500:])

    runner = PodScenarioRunner(load_scenario("hackathon"), RunOptions(
        run_dir=tmp_path / "run", report_path=tmp_path / "report.json",
        say=lambda m: said.append(f"{time.monotonic() - runner.t0:7.1f}s {m}")))
    runner.before_down = before_down
    t = time.monotonic()
    report = await runner.run(asyncio.Event())
    run_s = time.monotonic() - t
    print(f"pod-level run: images {build_s:.0f}s, run {run_s:.0f}s; {runner.cluster.timings}")
    assert report is not None, "\n".join(said)
    assert runner.before_down_error is None, repr(runner.before_down_error)
    failed = {n: report["checks"][n] for n in report["failed_checks"]}
    assert report["ok"], json.dumps({"failed": failed, "errors": report["errors"], "said": said[-30:]},
                                     indent=1, default=str)[:6000]

    # the consumer's 2 kW split over both producers; each producer's own lnd invoices sum to
    # exactly its delivered Wh x price (every increment paid, the last partial one too)
    consumer = [c for c in report["contracts"] if c["consumer"] == "meter-3"]
    assert {c["supplier"] for c in consumer if c["delivered_wh"] > 0} == {"meter-1", "meter-2"}
    for name, rec in report["suppliers"].items():
        assert rec["received_msat"] > 0 and rec["difference_msat"] == 0, (name, rec)
    assert not [c for c in report["contracts"] if c["state"] == "CONTRACT_STATE_DEFAULTED"]
    # no relay energized without cover
    assert report["relay"]["meter-3"]["samples"] > 50
    assert report["relay"]["meter-3"]["uncovered_samples"] == 0
    # every signed contract anchored (terms and settlement summary) and verified against btcd
    assert found["signed"] and set(found["verified"]) == found["signed"], found
    for cid, (code, out, err) in found["verified"].items():
        assert code == 0, (cid, out, err)
    for cid in found["signed"]:
        doc = report["documents"][cid]
        assert sorted(p["leaf"] for p in doc["proofs"]) == ["contract", "settlement"], (cid, doc["proofs"])
    logcheck.assert_service_logs_clean(runner)
    # the bootstrap was the overlay's own: each exporter wrote its node's admin Secret into the
    # store, the Job's pod completed twice (the second run found nothing to do; up() checks it)
    store = runner.cluster.store_dir / "secrets"
    for node in ["hub", *households()]:
        assert (store / admin_secret(node) / "admin.macaroon").is_file(), node
    assert {"bootstrap", "bootstrap-again"} <= set(runner.cluster.timings), runner.cluster.timings
    assert '"bootstrap done"' in (runner.cluster.work / f"{runner.cluster.job}.log").read_text()

    # nothing of the run is left on podman
    podman = Podman()
    pods = (await podman.run("pod", "ps", "--format", "{{.Name}}")).split()
    assert not set(pods) & set(runner.cluster.pod_names()), pods
    vols = (await podman.run("volume", "ls", "--format", "{{.Name}}")).split()
    assert not [v for v in vols if v.startswith(PREFIX)], vols
    nets = (await podman.run("network", "ls", "--format", "{{.Name}}")).split()
    assert NETWORK not in nets, nets
