"""k8s/: both overlays render with `kubectl kustomize`, validate strictly offline against a current
Kubernetes schema (kubernetes-validate), and keep the deployment's invariants: every P2PEP
service present, stateful ones StatefulSets with PVCs, gRPC probes on the plaintext health port
(its number the one the service's ConfigMap sets), the security context,
no Secret in the repo, every P2PEP variable one the settings classes read, and the committed
ConfigMaps exactly `p2pep k8s config`'s output. The regtest overlay's in-cluster bootstrap (the
lnd pods' exporter sidecars, the Job, their ServiceAccounts, Roles and RoleBindings) is held to
the same container policy, and RBAC grants nothing beyond named Secrets and ConfigMaps of the
namespace."""

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
from p2pep.k8s.podman import EXPORTER
from p2pep.servicekit.host import LIVENESS
from p2pep.servicekit.settings import env_name, setting_of, settings_from_env
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


def jobs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "Job"}


def is_service(c: dict[str, Any]) -> bool:
    """A P2PEP service's container (python -m services.X), not the in-cluster tooling's
    (p2pep.k8s.exporter, p2pep.k8s.bootstrap)."""
    return c["image"].startswith(PY_IMAGES) and c.get("args", [""])[0].startswith("services.")


SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
SECRETISH = ("PASS", "SECRET", "TOKEN", "KEY", "MACAROON", "CERT")


def token_mounts(pod: dict[str, Any]) -> list[str]:
    """The containers of ``pod`` that mount a ServiceAccount token."""
    return [c["name"] for c in pod["containers"] for m in c.get("volumeMounts", []) if m["mountPath"] == SA_MOUNT]


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
    docs = render(overlay)
    pods = {name: (w, False) for name, w in workloads(docs).items()} | {name: (j, True) for name, j in jobs(docs).items()}
    for name, (w, is_job) in pods.items():
        pod = w["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        # no container gets a token by default; the one that needs it mounts it explicitly
        assert pod["automountServiceAccountToken"] is False, name
        for c in pod["containers"]:
            image = c["image"]
            assert ":" in image and not image.endswith(":latest"), (name, image)
            if not is_job:  # a run-to-completion container has no readiness (activeDeadlineSeconds bounds it)
                assert c["readinessProbe"] and c["livenessProbe"], name
            assert c["resources"]["requests"] and c["resources"]["limits"], name
            sc = c["securityContext"]
            assert sc == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                          "capabilities": {"drop": ["ALL"]}}, name
            for e in c.get("env", []):  # no secret literal: secret-looking variables come from a Secret
                if any(s in e["name"].upper() for s in SECRETISH) and "value" in e:
                    assert not e["name"].upper().endswith(("PASS", "SECRET", "TOKEN")), (name, e)
            if is_service(c):
                # the kubelet's gRPC probe is plaintext: the health-only port; "" = ready, LIVENESS = alive
                assert c["startupProbe"]["grpc"] == {"port": HEALTH_PORT, "service": LIVENESS}, name
                assert c["livenessProbe"]["grpc"] == {"port": HEALTH_PORT, "service": LIVENESS}, name
                assert c["readinessProbe"]["grpc"] == {"port": HEALTH_PORT}, name
                assert {"name": "health", "containerPort": HEALTH_PORT} in c["ports"], name
                assert w["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
            elif c.get("args") == [EXPORTER]:
                assert c["readinessProbe"]["httpGet"]["path"] == "/healthz", name
                assert c["livenessProbe"]["httpGet"]["path"] == "/livez", name
                # lnd's data read-only: the sidecar never writes lnd's files
                (data,) = [m for m in c["volumeMounts"] if m["name"] == "data"]
                assert data["readOnly"] is True, name
        tokens = token_mounts(pod)
        if is_job:
            assert tokens == ["bootstrap"], name
        elif any(c.get("args") == [EXPORTER] for c in pod["containers"]):
            assert tokens == ["export-admin"], name  # lnd itself never sees the token
        else:
            assert tokens == [] and "serviceAccountName" not in pod, name


def test_every_lnd_pod_exports_its_admin_files_to_its_own_secret() -> None:
    """The regtest overlay's lnd StatefulSets each run the exporter sidecar for their own node,
    writing the Secret the bootstrap reads (p2pep.k8s.admin_secret), allowed by the exporter's Role."""
    from p2pep.k8s import admin_secret
    from p2pep.k8s.settings import ExportSettings

    docs = render("regtest")
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Role"}
    nodes = []
    for name, w in workloads(docs).items():
        if w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] != "lnd":
            continue
        pod = w["spec"]["template"]["spec"]
        (exp,) = [c for c in pod["containers"] if c.get("args") == [EXPORTER]]
        env = {e["name"]: e["value"] for e in exp["env"]}
        for variable in env:
            setting_of(ExportSettings, variable)  # ValueError if the class does not read it
        node = env[env_name(ExportSettings, "node")]
        assert name == f"lnd-{node}"
        assert pod["serviceAccountName"] == "p2pep-lnd-exporter"
        nodes.append(node)
    assert sorted(nodes) == sorted(["hub", *households()])
    updatable = {n for r in roles["p2pep-lnd-exporter"]["rules"] if "update" in r["verbs"] for n in r["resourceNames"]}
    assert updatable == {admin_secret(n) for n in nodes}


def test_the_bootstrap_job_reads_the_admin_secrets_and_writes_what_the_services_mount() -> None:
    """The Job's Role names exactly the objects p2pep/k8s/bootstrap.py reads and writes, its
    ConfigMap's variables are BootstrapSettings', and what it writes is what the services mount."""
    from p2pep.k8s import (
        BOOTSTRAP_CONFIGMAP,
        FAUCET_SECRET,
        HUB_CONFIGMAP,
        MINER_CONFIGMAP,
        admin_secret,
        components,
        lnd_secrets,
    )
    from p2pep.k8s.settings import BootstrapSettings

    docs = render("regtest")
    (job,) = jobs(docs).values()
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "OnFailure" and pod["serviceAccountName"] == "p2pep-bootstrap"
    (c,) = pod["containers"]
    assert c["args"] == ["p2pep.k8s.bootstrap"]
    maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    (ref,) = c["envFrom"]
    assert ref["configMapRef"]["name"] == BOOTSTRAP_CONFIGMAP
    settings = settings_from_env(BootstrapSettings, maps[BOOTSTRAP_CONFIGMAP])
    assert settings.meter_nodes == list(households())
    (role,) = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "p2pep-bootstrap"]

    def named(verb: str, resource: str) -> set[str]:
        return {n for r in role["rules"] if verb in r["verbs"] and resource in r["resources"]
                for n in r.get("resourceNames", [])}

    nodes = ["hub", *households()]
    assert named("get", "secrets") == {admin_secret(n) for n in nodes} | {FAUCET_SECRET}
    written = set(lnd_secrets([x.name for x in components("regtest")]))
    assert named("update", "secrets") == written | {FAUCET_SECRET}
    assert named("update", "configmaps") == {HUB_CONFIGMAP, MINER_CONFIGMAP}
    mounted = {v["secret"]["secretName"] for w in workloads(docs).values()
               for v in w["spec"]["template"]["spec"].get("volumes", []) if "secret" in v}
    assert written <= mounted
    # a meter reads the hub's address from the ConfigMap the Job writes (optional: made after the Secrets' mount)
    for m in households():
        refs = workloads(docs)[m]["spec"]["template"]["spec"]["containers"][0]["envFrom"]
        assert {"configMapRef": {"name": HUB_CONFIGMAP, "optional": True}} in refs, m


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_grants_nothing_beyond_secrets_and_configmaps_in_the_namespace(overlay: str) -> None:
    docs = render(overlay)
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}, overlay
    namespace = {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"}
    accounts = {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"}
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Role"}
    for name, role in roles.items():
        assert role["metadata"]["namespace"] in namespace, name
        for rule in role["rules"]:
            assert rule["apiGroups"] == [""], (name, rule)
            assert set(rule["resources"]) <= {"secrets", "configmaps"}, (name, rule)
            assert set(rule["verbs"]) <= {"get", "create", "update"}, (name, rule)  # no list, watch, patch, delete
            assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"], (name, rule)
            # every read or replace names its objects; only create cannot (the object does not exist yet)
            assert "resourceNames" in rule or rule["verbs"] == ["create"], (name, rule)
    bound = set()
    for b in (d for d in docs if d["kind"] == "RoleBinding"):
        assert b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": b["roleRef"]["name"]}
        assert b["roleRef"]["name"] in roles
        for s in b["subjects"]:
            assert s["kind"] == "ServiceAccount" and s["name"] in accounts, b["metadata"]["name"]
            assert s["namespace"] == b["metadata"]["namespace"], b["metadata"]["name"]
            bound.add(s["name"])
    used = {w["spec"]["template"]["spec"]["serviceAccountName"] for w in [*workloads(docs).values(), *jobs(docs).values()]
            if "serviceAccountName" in w["spec"]["template"]["spec"]}
    assert used == bound == accounts, overlay


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_probed_port_is_the_one_each_service_serves_health_on_and_no_policy_opens_it(overlay: str) -> None:
    docs = render(overlay)
    maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    for name, w in workloads(docs).items():
        for c in w["spec"]["template"]["spec"]["containers"]:
            if not is_service(c):
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
            if not is_service(c):
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
        # ... and the bootstrap Job (the operator's tooling: bakes with admin, funds, opens the channel)
        assert callers(f"lnd-{m}", 10009) == [{"podSelector": {"matchLabels": {"app.kubernetes.io/instance": m}}},
                                              {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "bootstrap"}}}]
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
        elif is_service(c) and c["args"] != ["services.meter"]:
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
    store = tmp_path / "store"
    played = translate(docs, given, tmp_path, "p2pep-pods-", [miner], store=store)
    assert set(played) == EXPECTED["regtest"] | set(jobs(docs))
    for name, p in played.items():
        kinds = [d["kind"] for d in p.docs]
        assert kinds[-1] == "Pod" and set(kinds) <= {"Pod", "PersistentVolumeClaim", "ConfigMap"}, (name, kinds)
        pod = p.docs[-1]
        assert pod["metadata"]["name"] == name
        assert p.volumes == ([] if name in jobs(docs) else [f"p2pep-pods-{name}-data"])
        text = yaml.safe_dump(pod)
        assert "secretKeyRef" not in text and "configMapKeyRef" not in text and "$(" not in text, name
        assert "Probe" not in text and "containerPort" not in text, name
        # each /tmp emptyDir kept (kube play mounts no tmpfs on /tmp of a read-only root)
        for c in pod["spec"]["containers"]:
            tmp = [m["name"] for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert all(v.get("emptyDir") is not None for v in pod["spec"]["volumes"] if v["name"] in tmp), name
        # no Kubernetes API in a played pod: no token, no account; the folder store instead
        assert "projected" not in text and "serviceAccountName" not in text and SA_MOUNT not in text, name
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
    meter = translate(docs, given, tmp_path, "p2pep-pods-", [miner, hub], only=["meter-1"], store=store)
    assert list(meter) == ["meter-1"] and hub in meter["meter-1"].docs


def test_the_in_cluster_bootstrap_plays_as_pods_with_the_folder_store_for_the_api(tmp_path: Path) -> None:
    """The Job becomes a run-to-completion Pod of its own container, image and settings; each lnd
    pod keeps its exporter sidecar; exactly the containers that mounted the ServiceAccount token
    mount the folder store there instead, with the store's settings (KubeApiSettings' names)."""
    from p2pep.k8s import BOOTSTRAP_CONFIGMAP, BTCD
    from p2pep.k8s.podman import STORE_MOUNT, JobRun, translate
    from p2pep.k8s.settings import BootstrapSettings, KubeApiSettings

    docs = render("regtest")
    data = {"rpc.cert": b"cert", "rpc.key": b"key", "user": b"u", "pass": b"p"}
    names = {v["secret"]["secretName"] for w in [*workloads(docs).values(), *jobs(docs).values()]
             for v in w["spec"]["template"]["spec"].get("volumes", []) if "secret" in v}
    miner = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "p2pep-btcd-miner"},
             "data": {"mining_addr": "bcrt1qfaucet"}}
    store = tmp_path / "store"
    played = translate(docs, dict.fromkeys(names, data), tmp_path / "secrets", "p2pep-pods-", [miner], store=store)
    manifests = {**workloads(docs), **jobs(docs)}
    kube_env = {f"P2PEP_KUBE_{f.upper()}" for f in KubeApiSettings.model_fields}
    for name, p in played.items():
        pod = p.docs[-1]["spec"]
        original = manifests[name]["spec"]["template"]["spec"]
        assert [c["name"] for c in pod["containers"]] == [c["name"] for c in original["containers"]], name
        for c in pod["containers"]:
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            if c["name"] in token_mounts(original):
                vol = mounts[STORE_MOUNT]
                assert "readOnly" not in vol  # the exporter and the Job write there
                (hp,) = [v["hostPath"] for v in pod["volumes"] if v["name"] == vol["name"]]
                assert hp == {"path": str(store), "type": "Directory"}
                got = settings_from_env(KubeApiSettings, {k: v for k, v in env.items() if k in kube_env})
                assert (got.store, got.store_dir) == ("folder", STORE_MOUNT), (name, c["name"])
            else:
                assert STORE_MOUNT not in mounts and not set(env) & kube_env, (name, c["name"])
    # each lnd pod: lnd and its exporter, which reads lnd's volume read-only for its own node
    for node in ["hub", *households()]:
        pod = played[f"lnd-{node}"].docs[-1]["spec"]
        lnd, exp = pod["containers"]
        assert exp["args"] == [EXPORTER] and exp["image"].startswith("p2pep-services:")
        assert {"name": "P2PEP_EXPORT_NODE", "value": node} in exp["env"]
        assert {"name": "data", "mountPath": "/lnd", "readOnly": True} in exp["volumeMounts"]
        assert {"name": "data", "mountPath": "/data"} in lnd["volumeMounts"]
    # the Job: its pod, run to completion by the harness with the Job's limits
    (job_name,) = jobs(docs)
    job = played[job_name]
    assert job.job == JobRun("bootstrap", 6, 3600.0)
    pod = job.docs[-1]
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["metadata"]["labels"]["app.kubernetes.io/name"] == "bootstrap"  # what the policies select
    (c,) = pod["spec"]["containers"]
    assert c["image"].startswith("p2pep-services:") and c["args"] == ["p2pep.k8s.bootstrap"]
    assert c["envFrom"] == [{"configMapRef": {"name": BOOTSTRAP_CONFIGMAP}}]
    (cm,) = [d for d in job.docs if d["kind"] == "ConfigMap"]
    assert cm["metadata"]["name"] == BOOTSTRAP_CONFIGMAP
    settings = settings_from_env(BootstrapSettings, cm["data"])
    assert settings.btcd_rpchost == "btcd:18334" and settings.btcd_dir == BTCD  # names inside the pod network
    assert settings.meter_nodes == list(households()) and settings.hub == "hub"
    assert {"name": "btcd", "mountPath": BTCD, "readOnly": True} in c["volumeMounts"]
    assert job.secret_dirs == {str(tmp_path / "secrets" / f"{job_name}-btcd"): data}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert [m["mountPath"] for m in c["volumeMounts"]] == [STORE_MOUNT, BTCD, "/tmp"]  # /tmp: its emptyDir


def test_a_job_the_harness_cannot_run_as_one_pod_is_refused(tmp_path: Path) -> None:
    from p2pep.k8s.podman import TranslationError, translate

    job = jobs(render("regtest"))["p2pep-bootstrap"]
    job["spec"]["parallelism"] = 2
    with pytest.raises(TranslationError, match="one completion"):
        translate([job], {"p2pep-btcd-client": {}}, tmp_path, "p", store=tmp_path)
