"""k8s/: both overlays render with `kubectl kustomize`, validate strictly offline against a current
Kubernetes schema (kubernetes-validate), and keep the deployment's invariants: every P2PEP
service present, stateful ones StatefulSets with PVCs, gRPC probes on the plaintext health port
(its number the one the service's ConfigMap sets), the security context,
no Secret in the repo, every P2PEP variable one the settings classes read, and the committed
ConfigMaps exactly `p2pep k8s config`'s output."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from p2pep.k8s import HEALTH_PORT, OVERLAYS, SECRET_FIELDS, configmaps, households
from p2pep.k8s.cli import config_dir
from p2pep.servicekit.host import LIVENESS
from p2pep.servicekit.settings import env_name, setting_of
from p2pep.settings import SERVICE_SETTINGS

REPO = Path(__file__).resolve().parents[1]
K8S_VERSION = "1.33.0"
PY_IMAGES = ("p2pep-services:", "p2pep-meter:")  # containers/services.Containerfile, without and with `sim`
CENTRAL = {"settlement", "matcher", "anchor", "console", "portal"}
EXPECTED = {"regtest": CENTRAL | set(households()) | {"btcd", "lnd-hub"} | {f"lnd-{m}" for m in households()},
            "production": CENTRAL}



def render(overlay: str) -> list[dict[str, Any]]:
    assert shutil.which("kubectl"), "kubectl is missing (scripts/install-system-deps.sh says how to get it)"
    out = subprocess.run(["kubectl", "kustomize", str(REPO / "k8s" / "overlays" / overlay)],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def workloads(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] in ("StatefulSet", "Deployment")}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_strictly(overlay: str) -> None:
    for doc in render(overlay):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_is_a_stateful_set_with_a_volume_and_a_service(overlay: str) -> None:
    docs = render(overlay)
    ws = workloads(docs)
    assert set(ws) == EXPECTED[overlay]
    services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    for name, w in ws.items():
        # every one of them has state (SQLite stores, lnd/btcd data): none is a Deployment
        assert w["kind"] == "StatefulSet", name
        claims = [c["metadata"]["name"] for c in w["spec"]["volumeClaimTemplates"]]
        assert claims == ["data"], name
        assert w["spec"]["serviceName"] in services, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_containers_have_probes_resources_pinned_images_and_a_locked_down_context(overlay: str) -> None:
    for name, w in workloads(render(overlay)).items():
        pod = w["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["automountServiceAccountToken"] is False, name
        for c in pod["containers"]:
            image = c["image"]
            assert ":" in image and not image.endswith(":latest"), (name, image)
            assert c["readinessProbe"] and c["livenessProbe"], name
            assert c["resources"]["requests"] and c["resources"]["limits"], name
            sc = c["securityContext"]
            assert sc == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                          "capabilities": {"drop": ["ALL"]}}, name
            if image.startswith(PY_IMAGES):
                # the kubelet's gRPC probe is plaintext: the health-only port; "" = ready, LIVENESS = alive
                assert c["startupProbe"]["grpc"] == {"port": HEALTH_PORT, "service": LIVENESS}, name
                assert c["livenessProbe"]["grpc"] == {"port": HEALTH_PORT, "service": LIVENESS}, name
                assert c["readinessProbe"]["grpc"] == {"port": HEALTH_PORT}, name
                assert {"name": "health", "containerPort": HEALTH_PORT} in c["ports"], name
                assert w["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_probed_port_is_the_one_each_service_serves_health_on_and_no_policy_opens_it(overlay: str) -> None:
    docs = render(overlay)
    maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    for name, w in workloads(docs).items():
        for c in w["spec"]["template"]["spec"]["containers"]:
            if not c["image"].startswith(PY_IMAGES):
                continue
            cls = SERVICE_SETTINGS[c["args"][0].removeprefix("services.")]
            (config,) = [r["configMapRef"]["name"] for r in c["envFrom"] if not r["configMapRef"].get("optional")]
            assert maps[config][env_name(cls, "health_port")] == str(c["readinessProbe"]["grpc"]["port"]), name
    # kubelet probes come from the pod's node, which NetworkPolicy always allows: no rule opens the
    # plaintext health port to other pods
    for d in docs:
        if d["kind"] == "NetworkPolicy":
            ports = [p.get("port") for rule in d["spec"].get("ingress", []) for p in rule.get("ports", [])]
            assert HEALTH_PORT not in ports, d["metadata"]["name"]
    # callers dial a not-ready peer all the same (single replicas: leaving it out of DNS helps nobody)
    for d in docs:
        if d["kind"] == "Service" and d["metadata"]["name"] in {"settlement", "matcher", "anchor", *households()}:
            assert d["spec"]["publishNotReadyAddresses"] is True, d["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_p2pep_variable_is_a_setting(overlay: str) -> None:
    docs = render(overlay)
    maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    for name, w in workloads(docs).items():
        for c in w["spec"]["template"]["spec"]["containers"]:
            if not c["image"].startswith(PY_IMAGES):
                continue
            cls = SERVICE_SETTINGS[c["args"][0].removeprefix("services.")]
            names = [e["name"] for e in c.get("env", [])]
            for ref in c.get("envFrom", []):
                cm = ref["configMapRef"]["name"]
                if ref["configMapRef"].get("optional"):
                    continue  # made with the Secrets (p2pep-hub: P2PEP_METER_HUB)
                assert cm in maps, (name, cm)
                names += list(maps[cm])
            for variable in names:
                # ValueError names it if the class does not read it; the TLS benchmark's
                # plaintext mode is never part of a deployment
                assert setting_of(cls, variable) != "grpc_plaintext_loopback", (name, variable)
            for secret_field in SECRET_FIELDS.get(c["args"][0].removeprefix("services."), {}):
                assert any(e["name"].endswith(secret_field.upper()) and "secretKeyRef" in e["valueFrom"]
                           for e in c["env"]), (name, secret_field)


def test_no_secret_data_in_the_repo() -> None:
    for path in (REPO / "k8s").rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                assert doc.get("kind") != "Secret", path
                assert "secretGenerator" not in doc, path
    for overlay in OVERLAYS:
        for doc in render(overlay):
            assert doc["kind"] != "Secret", overlay
    tracked = subprocess.run(["git", "ls-files", "k8s", "containers"], cwd=REPO, capture_output=True, text=True).stdout
    material = [f for f in tracked.split() if f.endswith((".key", ".crt", ".cert", ".macaroon", ".pem", ".whl"))]
    assert not material, f"key material or wheels committed: {material}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_committed_configmaps_are_the_generators_output(overlay: str) -> None:
    committed = {p.name: p.read_text() for p in config_dir(overlay).glob("*.yaml")}
    assert committed == configmaps(overlay), "run `p2pep k8s config` and commit k8s/overlays/*/config/"


def test_config_check_and_secrets_refuse_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from p2pep.cli import main

    assert main(["k8s", "config", "--check"]) == 0
    assert main(["k8s", "config", "--check", "--root", str(tmp_path)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert main(["k8s", "secrets", "--run-dir", str(tmp_path), "--btcd-user", "u", "--btcd-pass", "p"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("p2pep k8s secrets: missing ") and err.count("\n") == 1


def test_secrets_are_emitted_from_a_run_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from p2pep.cli import main

    tls = tmp_path / "tls"
    tls.mkdir()
    (tls / "ca.crt").write_text("CA")
    for name in CENTRAL | set(households()):
        (tls / f"{name}.crt").write_text(f"crt {name}")
        (tls / f"{name}.key").write_text(f"key {name}")
    for node, service in [("hub", "anchor")] + [(m, "meter") for m in households()]:
        mac = tmp_path / node / "data/chain/bitcoin/regtest"
        mac.mkdir(parents=True)
        (tmp_path / node / "tls.cert").write_text("lnd cert")
        (mac / f"p2pep-{service}.macaroon").write_bytes(b"\x02mac")
    (tmp_path / "btcd").mkdir()
    (tmp_path / "btcd" / "rpc.cert").write_text("btcd cert")
    for m in households():
        (tmp_path / "scenario" / m).mkdir(parents=True)
        (tmp_path / "scenario" / m / "meter.key").write_bytes(b"k" * 32)
    assert main(["k8s", "secrets", "--run-dir", str(tmp_path), "--btcd-user", "u", "--btcd-pass", "p"]) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    names = {d["metadata"]["name"] for d in docs}
    # every Secret the rendered regtest overlay mounts or reads is among them (except btcd's server key)
    wanted: set[str] = set()
    for w in workloads(render("regtest")).values():
        pod = w["spec"]["template"]["spec"]
        wanted |= {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
        for c in pod["containers"]:
            wanted |= {e["valueFrom"]["secretKeyRef"]["name"] for e in c.get("env", [])
                       if "secretKeyRef" in e.get("valueFrom", {})}
    assert wanted - names == {"p2pep-btcd-server"}
    for d in docs:
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)


def test_network_policies_keep_households_apart() -> None:
    docs = render("regtest")
    policies = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
    assert policies["default-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}

    def callers(policy: str, port: int) -> list[dict[str, Any]]:
        return [f for rule in policies[policy]["ingress"] if {"port": port} in rule.get("ports", [])
                for f in rule.get("from", [{"anywhere": True}])]

    for m in households():
        # settlement, the portal (the household's app) and the console reach a meter's gRPC port,
        # never another household's meter; only its own meter reaches its lnd's RPC
        assert callers(m, 50051) == [{"podSelector": {"matchExpressions": [
            {"key": "app.kubernetes.io/name", "operator": "In", "values": ["settlement", "portal", "console"]}]}}]
        assert callers(f"lnd-{m}", 10009) == [{"podSelector": {"matchLabels": {"app.kubernetes.io/instance": m}}}]
    # which of those callers may call which meter RPC is the access table's: payments are settlement's
    from p2pep.access import ACCESS, Rule
    for rpc in ("SignContract", "CreateInvoice", "PayInvoice", "UpdateContract"):
        assert ACCESS[f"/p2pep.v1.MeterService/{rpc}"] == Rule(services=frozenset({"settlement"})), rpc


def test_a_simulating_meter_runs_the_image_with_the_sim_extra() -> None:
    docs = render("regtest")
    maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    for name, w in workloads(docs).items():
        c = w["spec"]["template"]["spec"]["containers"][0]
        source = maps.get(f"{name}-config", {}).get("P2PEP_METER_SOURCE")
        if source in ("pv", "h0"):
            assert c["image"].startswith("p2pep-meter:"), name
        elif c["image"].startswith(PY_IMAGES) and c["args"] != ["services.meter"]:
            assert c["image"].startswith("p2pep-services:"), name  # no pandas/pvlib


def test_services_start_without_the_sim_extra() -> None:
    """The p2pep-services image leaves out pandas/pvlib/demandlib: no service imports them at start."""
    code = ("import sys\n"
            "for s in ('settlement', 'matcher', 'anchor', 'console', 'portal', 'meter'):\n"
            "    __import__(f'services.{s}.__main__')\n"
            "import services.meter.app\n"
            "print(sorted(m for m in ('pandas', 'pvlib', 'demandlib') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_services_containerfile_is_non_root_without_build_tools() -> None:
    text = (REPO / "containers" / "services.Containerfile").read_text()
    final = text[text.rindex("\nFROM "):]
    assert "USER 10001:10001" in final and 'ENTRYPOINT ["python", "-m"]' in final
    for tool in ("gcc", "build-essential", "golang", "python3-dev"):
        assert tool not in text, tool


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_carry_the_labels_monitoring_scrapes_by(overlay: str) -> None:
    """monitoring/k8s: part-of p2pep, name = the kind (job p2pep-<name> or lnd), a port named
    `metrics`, p2pep.io/meter on meters and p2pep.io/node on lnd nodes."""
    for name, w in workloads(render(overlay)).items():
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "p2pep" and labels["app.kubernetes.io/instance"] == name
        assert w["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/instance": name}
        kind = labels["app.kubernetes.io/name"]
        ports = {p["name"] for c in w["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        if kind != "btcd":
            assert "metrics" in ports, name
        if kind == "meter":
            assert labels["p2pep.io/meter"] == name
        if kind == "lnd":
            assert labels["p2pep.io/node"] == name.removeprefix("lnd-")


def test_the_regtest_overlay_translates_for_podman_kube_play(tmp_path: Path) -> None:
    """p2pep/k8s/podman.py: every StatefulSet a Pod of its name with its PVC, nothing podman
    cannot play, Secrets as folders, secret and ConfigMap key references inlined, $(VAR) expanded."""
    from p2pep.k8s.podman import translate

    docs = render("regtest")
    names = set()
    for w in workloads(docs).values():
        pod = w["spec"]["template"]["spec"]
        names |= {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
    data = {"rpc.cert": b"cert", "rpc.key": b"key", "user": b"u", "pass": b"p w"}
    given = {n: data for n in names | {"p2pep-btcd-client"}}
    miner = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "p2pep-btcd-miner"},
             "data": {"mining_addr": "bcrt1qfaucet"}}
    played = translate(docs, given, tmp_path, "p2pep-pods-", [miner])
    assert set(played) == EXPECTED["regtest"]
    for name, p in played.items():
        kinds = [d["kind"] for d in p.docs]
        assert kinds[-1] == "Pod" and set(kinds) <= {"Pod", "PersistentVolumeClaim", "ConfigMap"}, (name, kinds)
        pod = p.docs[-1]
        assert pod["metadata"]["name"] == name
        assert p.volumes == [f"p2pep-pods-{name}-data"]
        text = yaml.safe_dump(pod)
        assert "secretKeyRef" not in text and "configMapKeyRef" not in text and "$(" not in text, name
        assert "emptyDir" not in text and "Probe" not in text and "containerPort" not in text, name
        for c in pod["spec"]["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            for ref in c.get("envFrom", []):  # podman reads a ConfigMap only from the same play
                assert ref["configMapRef"]["name"] in {d["metadata"]["name"] for d in p.docs}, name
            assert "p2pep-hub" not in yaml.safe_dump(c.get("envFrom", []))  # optional and not made yet
        for folder in p.secret_dirs:
            assert Path(folder).parent == tmp_path
    btcd = played["btcd"].docs[-1]["spec"]["containers"][0]["args"]
    assert "--miningaddr=bcrt1qfaucet" in btcd and "--rpcpass=p w" in btcd
    assert played["anchor"].secret_dirs[str(tmp_path / "anchor-btcd")] == {"rpc.cert": b"cert"}  # items only
    hub = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "p2pep-hub"}, "data": {"P2PEP_METER_HUB": "x"}}
    meter = translate(docs, given, tmp_path, "p2pep-pods-", [miner, hub], only=["meter-1"])
    assert list(meter) == ["meter-1"] and hub in meter["meter-1"].docs
