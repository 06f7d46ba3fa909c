"""The kube store (p2pep/k8s/kubeapi.py, store.py) and its two users, the lnd exporter sidecar and
the bootstrap Job, against a REAL kube-apiserver and etcd (no kubelet, no controller-manager),
with the regtest overlay's Namespace, ServiceAccounts, Roles and RoleBindings applied and each
user holding its own ServiceAccount's token (TokenRequest), laid out as the pods' projected
volume lays it out (token, ca.crt, namespace): what the local fake API server in
tests/test_k8s_bootstrap.py cannot prove (RBAC as written, the API's real answers).

Opt-in: ``make k8s-api-check`` builds the binaries (scripts/build-kube-apiserver.sh, cached by
version: about 14 minutes the first time) and runs this file; without them every test here is
skipped, saying so. ``P2PEP_KUBE_APISERVER_DIR`` names another folder holding kube-apiserver and
etcd.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from p2pep.k8s import FAUCET_SECRET, MACAROON_SUBDIR, MINER_CONFIGMAP, admin_secret
from p2pep.k8s.bootstrap import KubeAdminFiles, KubePublisher, faucet_of
from p2pep.k8s.exporter import Exporter
from p2pep.k8s.kubeapi import LABELS, KubeApi, KubeApiError
from p2pep.k8s.pods import render_overlay
from p2pep.k8s.settings import KubeApiSettings
from p2pep.k8s.store import open_store
from p2pep.regtest import wait_for
from p2pep.regtest.ports import free_port

REPO = Path(__file__).resolve().parents[1]
NS = "p2pep-regtest"


def _bin_dir() -> Path:
    if os.environ.get("P2PEP_KUBE_APISERVER_DIR"):
        return Path(os.environ["P2PEP_KUBE_APISERVER_DIR"])
    gomod = (REPO / "regtest" / "kube-apiserver" / "go.mod").read_text()
    version = re.search(r"^require k8s.io/kubernetes (v[0-9.]+)$", gomod, re.M)
    assert version, "regtest/kube-apiserver/go.mod pins no k8s.io/kubernetes"
    cache = Path(os.environ.get("P2PEP_BIN_CACHE") or
                 Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "p2pep" / "bin")
    return cache / f"kube-apiserver-{version.group(1)}"


BIN = _bin_dir()
_MISSING = [str(BIN / b) for b in ("kube-apiserver", "etcd") if not os.access(BIN / b, os.X_OK)]
_MISSING += [t for t in ("openssl", "kubectl") if shutil.which(t) is None]
pytestmark = [
    pytest.mark.kubeapi,
    pytest.mark.skipif(bool(_MISSING), reason=f"no {', '.join(_MISSING)}: `make k8s-api-check` builds "
                                             "kube-apiserver and etcd (once, ~14 min) and runs these"),
]


# --- etcd + kube-apiserver on loopback ------------------------------------------------------------
@dataclass
class Cluster:
    url: str
    token: str  # the static admin token (group system:masters)
    ca: Path
    root: Path

    def admin(self) -> client.ApiClient:
        conf = client.Configuration(host=self.url, api_key={"BearerToken": self.token},
                                    api_key_prefix={"BearerToken": "Bearer"})
        conf.ssl_ca_cert = str(self.ca)
        return client.ApiClient(conf)

    def sa_dir(self, name: str, token: str, namespace: str = NS, ca: Path | None = None) -> Path:
        """A folder laid out as the pod's ServiceAccount volume: token, ca.crt, namespace."""
        d = self.root / "sa" / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "token").write_text(token)
        (d / "ca.crt").write_bytes((ca or self.ca).read_bytes())
        (d / "namespace").write_text(namespace)
        return d

    def settings(self, sa_dir: Path, **kw: Any) -> KubeApiSettings:
        return KubeApiSettings(api_host=self.url, sa_dir=str(sa_dir), **kw)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _pki(d: Path) -> str:
    """One CA, the server's certificate (IP SAN 127.0.0.1), the ServiceAccount keys; the admin token."""
    d.mkdir(parents=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=p2pep-test-ca",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=kube-apiserver", "-keyout", "apiserver.key",
             "-out", "apiserver.csr", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "san.ext", "-out", "apiserver.crt", cwd=d)
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=d)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)
    token = os.urandom(24).hex()
    (d / "tokens.csv").write_text(f'{token},p2pep-admin,p2pep-admin-uid,"system:masters"\n')
    return token


def _wait_ready(what: str, url: str, proc: subprocess.Popen[bytes], log: Path, deadline_s: float,
                ctx: ssl.SSLContext | None = None, token: str = "") -> None:
    """Poll ``url`` until it answers 200 ``ok`` (etcd: any 200), the process exits, or the deadline."""
    deadline = time.monotonic() + deadline_s
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
        try:
            with urllib.request.urlopen(req, timeout=2, context=ctx) as resp:
                if resp.status == 200:
                    return
        except OSError as exc:  # refused while it starts, 500 while post-start hooks run
            last = str(exc)
        time.sleep(0.2)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
    state = f"exited {proc.returncode}" if proc.poll() is not None else f"not ready in {deadline_s:.0f}s ({last})"
    raise RuntimeError(f"{what} {state}; the end of {log}:\n{tail}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("kubeapi")
    pki = root / "pki"
    token = _pki(pki)
    etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        etcd_log = root / "etcd.log"
        with etcd_log.open("wb") as out:
            procs.append(subprocess.Popen(
                [str(BIN / "etcd"), "--name", "p2pep", "--data-dir", str(root / "etcd"),
                 "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
                 "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
                 "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
                 "--initial-cluster", f"p2pep=http://127.0.0.1:{peer_port}", "--listen-metrics-urls", "",
                 "--quota-backend-bytes", str(256 << 20)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        _wait_ready("etcd", f"http://127.0.0.1:{etcd_port}/health", procs[0], etcd_log, 30)
        api_log = root / "kube-apiserver.log"
        with api_log.open("wb") as out:
            procs.append(subprocess.Popen(
                [str(BIN / "kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                 "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={api_port}",
                 f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
                 f"--client-ca-file={pki / 'ca.crt'}", f"--token-auth-file={pki / 'tokens.csv'}",
                 "--authorization-mode=RBAC",
                 "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                 f"--service-account-key-file={pki / 'sa.pub'}",
                 f"--service-account-signing-key-file={pki / 'sa.key'}",
                 "--api-audiences=https://kubernetes.default.svc.cluster.local",
                 "--service-cluster-ip-range=10.96.0.0/24", "--endpoint-reconciler-type=none",
                 f"--cert-dir={pki}", "--profiling=false"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        url = f"https://127.0.0.1:{api_port}"
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        _wait_ready("kube-apiserver", f"{url}/readyz", procs[1], api_log, 180, ctx, token)
        c = Cluster(url, token, pki / "ca.crt", root)
        asyncio.run(_apply_rbac(c))
        yield c
    finally:
        for p in reversed(procs):
            _stop(p)


async def _apply_rbac(c: Cluster) -> None:
    """The regtest overlay's Namespace, ServiceAccounts, Roles and RoleBindings, as they are written."""
    async with c.admin() as api:
        core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
        for obj in render_overlay("regtest"):
            kind, ns = obj["kind"], obj["metadata"].get("namespace", NS)
            if kind == "Namespace":
                await core.create_namespace(obj)
            elif kind == "ServiceAccount":
                await core.create_namespaced_service_account(ns, obj)
            elif kind == "Role":
                await rbac.create_namespaced_role(ns, obj)
            elif kind == "RoleBinding":
                await rbac.create_namespaced_role_binding(ns, obj)
        roles = await rbac.list_namespaced_role(NS)
        assert {r.metadata.name for r in roles.items} >= {"p2pep-lnd-exporter", "p2pep-bootstrap"}


async def _sa_token(admin: client.ApiClient, account: str) -> str:
    """A TokenRequest token of ``account`` (what the kubelet projects into the pod)."""
    req = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600))
    got = await client.CoreV1Api(admin).create_namespaced_service_account_token(account, NS, req)
    return str(got.status.token)


@pytest.fixture
async def admin(cluster: Cluster) -> AsyncIterator[client.CoreV1Api]:
    """The admin's CoreV1Api, on a namespace emptied of Secrets and ConfigMaps (each test starts clean)."""
    async with cluster.admin() as api:
        core = client.CoreV1Api(api)
        await core.delete_collection_namespaced_secret(NS)
        await core.delete_collection_namespaced_config_map(NS)
        yield core


async def _refused(call: Awaitable[Any], status: int | None, text: str) -> KubeApiError:
    with pytest.raises(KubeApiError) as err:
        await call
    assert err.value.status == status, str(err.value)
    assert text in str(err.value)
    return err.value


async def _seed(core: client.CoreV1Api, kind: str, name: str) -> None:
    meta = client.V1ObjectMeta(name=name)
    try:
        if kind == "secret":
            await core.create_namespaced_secret(NS, client.V1Secret(metadata=meta))
        else:
            await core.create_namespaced_config_map(NS, client.V1ConfigMap(metadata=meta))
    except ApiException as exc:
        if exc.status != 409:
            raise


# --- the store as the admin, configured as the pods are ----------------------------------------------
async def test_the_store_creates_replaces_and_reads_secrets_and_configmaps(
        cluster: Cluster, admin: client.CoreV1Api) -> None:
    sa = cluster.sa_dir("admin", cluster.token)
    async with open_store(cluster.settings(sa)) as store:
        assert isinstance(store, KubeApi) and store.namespace == NS  # from sa_dir/namespace
        assert await store.get_secret("p2pep-check-a") is None
        files = {"bin": bytes(range(256)), "t.txt": b"hello\n"}
        assert await store.put_secret("p2pep-check-a", files) == "created"
        assert await store.get_secret("p2pep-check-a") == files
        raw = await admin.read_namespaced_secret("p2pep-check-a", NS)
        assert raw.type == "Opaque" and raw.metadata.labels == LABELS
        rv = raw.metadata.resource_version
        raw.metadata.annotations = {"touched": "by-admin"}  # changed meanwhile: the store's PUT is unconditional
        await admin.replace_namespaced_secret("p2pep-check-a", NS, raw)
        assert await store.put_secret("p2pep-check-a", {"bin": b"\x00new"}) == "replaced"
        assert await store.get_secret("p2pep-check-a") == {"bin": b"\x00new"}  # whole: the dropped key is gone
        raw = await admin.read_namespaced_secret("p2pep-check-a", NS)
        assert not raw.metadata.annotations and raw.metadata.resource_version != rv

        assert await store.get_configmap("p2pep-check-cm") is None
        data = {"a": "1", "u": "h\u00e9llo \u26a1", "multi": "l1\nl2\n"}
        assert await store.put_configmap("p2pep-check-cm", data) == "created"
        assert await store.get_configmap("p2pep-check-cm") == data
        assert await store.put_configmap("p2pep-check-cm", {"a": "2"}) == "replaced"
        assert await store.get_configmap("p2pep-check-cm") == {"a": "2"}
        assert await store.put_configmap("p2pep-check-empty", {}) == "created"
        assert await store.get_configmap("p2pep-check-empty") == {}
        assert await store.put_secret("p2pep-check-empty", {}) == "created"
        assert await store.get_secret("p2pep-check-empty") == {}
        # two writers of one new name at once (the exporter and a restarted twin): one creates, one replaces
        outs = await asyncio.gather(store.put_secret("p2pep-check-race", {"k": b"1"}),
                                    store.put_secret("p2pep-check-race", {"k": b"2"}))
        assert sorted(outs) == ["created", "replaced"]


async def test_the_apis_refusals_are_kube_api_errors_naming_the_call(
        cluster: Cluster, admin: client.CoreV1Api) -> None:
    sa = cluster.sa_dir("admin", cluster.token)
    async with open_store(cluster.settings(sa)) as store:
        await _refused(store.put_secret("Bad_Name", {"k": b"v"}), 422, "create secret Bad_Name")
        await _refused(store.put_configmap("p2pep-check-key", {"a/b": "v"}), 422, "Invalid")
        await admin.create_namespaced_secret(NS, client.V1Secret(
            metadata=client.V1ObjectMeta(name="p2pep-check-tls"), type="kubernetes.io/tls",
            data={"tls.crt": "", "tls.key": ""}))
        await _refused(store.put_secret("p2pep-check-tls", {"k": b"v"}), 422, "replace secret")  # type is immutable
        await admin.create_namespaced_config_map(NS, client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="p2pep-check-immutable"), data={"a": "1"}, immutable=True))
        await _refused(store.put_configmap("p2pep-check-immutable", {"a": "2"}), 422, "replace configmap")
        # the token file is read before every request: a rotated token is used at once
        (sa / "token").write_text("not-a-valid-token")
        await _refused(store.get_secret("p2pep-check-a"), 401, "Unauthorized")
        (sa / "token").write_text(cluster.token + "\n")
        assert await store.get_secret("p2pep-check-a") is None


async def test_no_answer_and_a_missing_namespace_are_kube_api_errors(
        cluster: Cluster, admin: client.CoreV1Api) -> None:
    sa = cluster.sa_dir("admin", cluster.token)
    async with open_store(cluster.settings(sa, namespace="p2pep-nope")) as nope:
        assert isinstance(nope, KubeApi) and nope.namespace == "p2pep-nope"  # P2PEP_KUBE_NAMESPACE wins
        await _refused(nope.put_secret("x", {"k": b"v"}), 404, 'namespaces "p2pep-nope" not found')
        await _refused(nope.put_configmap("x", {"k": "v"}), 404, 'namespaces "p2pep-nope" not found')
        # a GET there is answered as for a missing object (secrets "x" not found, details about x):
        # the API does not tell the namespace apart, so neither can the store
        assert await nope.get_secret("x") is None

    other = cluster.root / "other-ca"
    other.mkdir(exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=other",
             "-keyout", "k", "-out", "c", cwd=other)
    async with open_store(cluster.settings(cluster.sa_dir("bad-ca", cluster.token, ca=other / "c"))) as s:
        await _refused(s.get_secret("x"), None, "Certificate")  # TLS verification fails
    async with open_store(KubeApiSettings(api_host=f"https://127.0.0.1:{free_port()}", sa_dir=str(sa))) as s:
        await _refused(s.put_secret("x", {}), None, "Cannot connect")  # nothing listens

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.close()  # the connection goes away with no answer

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with open_store(KubeApiSettings(api_host=f"http://127.0.0.1:{port}", sa_dir=str(sa))) as s:
            await _refused(s.get_secret("x"), None, "get secret x in namespace p2pep-regtest: ")
            await _refused(s.put_secret("x", {}), None, "create secret x in namespace p2pep-regtest: ")
    finally:
        server.close()
        await server.wait_closed()


# --- the exporter sidecar with its ServiceAccount ----------------------------------------------------
async def test_the_exporter_writes_its_secret_and_nothing_else(
        cluster: Cluster, admin: client.CoreV1Api, tmp_path: Path) -> None:
    sa = cluster.sa_dir("exporter", await _sa_token(admin.api_client, "p2pep-lnd-exporter"))
    lnd = tmp_path / "lnd-hub"
    (lnd / MACAROON_SUBDIR).mkdir(parents=True)
    (lnd / "tls.cert").write_bytes(b"-----BEGIN CERTIFICATE-----\nhub\n-----END CERTIFICATE-----\n")
    (lnd / MACAROON_SUBDIR / "admin.macaroon").write_bytes(b"\x02\x01mac-v1\xff")
    async with open_store(cluster.settings(sa)) as store:
        ex = Exporter("hub", lnd, store, interval_s=0.1)
        assert await ex.step() and ex.exported
        sec = await admin.read_namespaced_secret(admin_secret("hub"), NS)
        assert sorted(sec.data) == ["admin.macaroon", "tls.cert"]
        (lnd / MACAROON_SUBDIR / "admin.macaroon").write_bytes(b"\x02\x01mac-v2")
        before = ex.exported
        assert await ex.step() and ex.exported != before  # replaced: update on its own name
        for m in ("meter-1", "meter-2", "meter-3"):
            assert await store.put_secret(admin_secret(m), {"a": b"1"}) == "created"
            assert await store.put_secret(admin_secret(m), {"a": b"2"}) == "replaced"
        # RBAC cannot limit create by name: a new Secret of any name is created ...
        assert await store.put_secret("p2pep-check-exporter-other", {"k": b"v"}) == "created"
        # ... but only the names in its Role are replaced
        await _refused(store.put_secret("p2pep-check-exporter-other", {"k": b"w"}), 403, "replace secret")
        await _seed(admin, "secret", FAUCET_SECRET)
        await _refused(store.put_secret(FAUCET_SECRET, {"k": b"x"}), 403, "forbidden")
        await _refused(store.get_secret(admin_secret("hub")), 403, "forbidden")  # no get
        await _refused(store.put_configmap("p2pep-hub", {"a": "b"}), 403, "forbidden")
        # the loop: a 403 is reported (waiting_for, what /healthz says) and the loop goes on
        await _seed(admin, "secret", admin_secret("meter-4"))
        ex4 = Exporter("meter-4", lnd, store, interval_s=0.05)
        stop = asyncio.Event()
        task = asyncio.create_task(ex4.run(stop))
        try:
            await wait_for(lambda: "403" in (ex4.waiting_for or ""), 10, interval=0.05,
                           what="the exporter reporting the 403")
            assert not task.done()  # a 403 does not end its loop
        finally:
            stop.set()
            await task
        assert ex4.exported is None and "403" in ex4.waiting_for


# --- the bootstrap Job with its ServiceAccount ------------------------------------------------------
async def test_the_bootstrap_makes_its_faucet_once_and_publishes_only_its_objects(
        cluster: Cluster, admin: client.CoreV1Api) -> None:
    sa = cluster.sa_dir("bootstrap", await _sa_token(admin.api_client, "p2pep-bootstrap"))
    await admin.create_namespaced_secret(NS, client.V1Secret(
        metadata=client.V1ObjectMeta(name=admin_secret("hub")), string_data={"admin.macaroon": "mac", "tls.cert": "c"}))
    async with open_store(cluster.settings(sa)) as store:
        f1 = await faucet_of(store)
        assert (await admin.read_namespaced_config_map(MINER_CONFIGMAP, NS)).data == {"mining_addr": f1.address}
        f2 = await faucet_of(store)  # again: the same faucet read back, the ConfigMap replaced
        assert f2.secret_hex == f1.secret_hex and f2.address == f1.address
        got = await KubeAdminFiles(store).read("hub")  # the exporter's Secret, get on its name
        assert got == {"admin.macaroon": b"mac", "tls.cert": b"c"}
        assert await KubeAdminFiles(store).read("meter-2") is None
        pub = KubePublisher(store)
        for _ in range(2):  # created, then replaced
            await pub.configmap("p2pep-hub", {"P2PEP_METER_HUB": "02ab@lnd-hub:9735"})
            await pub.secret("p2pep-lnd-anchor", {"tls.cert": b"c", "p2pep-anchor.macaroon": b"m"})
            for m in ("meter-1", "meter-2", "meter-3"):
                await pub.secret(f"p2pep-lnd-{m}", {"tls.cert": b"c", "p2pep-meter.macaroon": b"m"})
        assert (await admin.read_namespaced_config_map("p2pep-hub", NS)).data == {
            "P2PEP_METER_HUB": "02ab@lnd-hub:9735"}
        # a meter not written into the Role (k8s/overlays/regtest/bootstrap.yaml): created, never replaced
        assert await store.put_secret("p2pep-lnd-meter-4", {"k": b"v"}) == "created"
        await _refused(store.put_secret("p2pep-lnd-meter-4", {"k": b"v"}), 403, "replace secret")
        await _refused(store.get_secret("p2pep-lnd-anchor"), 403, "forbidden")  # writes it, never reads it
        await _seed(admin, "configmap", "p2pep-bootstrap-config")
        await _refused(store.put_configmap("p2pep-bootstrap-config", {}), 403, "forbidden")
        await _refused(store.put_secret(admin_secret("hub"), {"k": b"v"}), 403, "forbidden")
