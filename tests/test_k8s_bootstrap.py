"""The in-cluster bootstrap's pieces without a cluster: the Kubernetes API client against a local
aiohttp server playing the API (create, replace on 409, errors named), the exporter sidecar's
loop and health, the idempotent planning of funds and channels, the faucet kept across runs,
what the bootstrap publishes (the hub's ConfigMap first, service macaroons only, never admin),
and the folder store the exporter and the Job use under podman (atomic, laid out as volumes)."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import p2pep.k8s
from p2pep.k8s import FAUCET_SECRET, HUB_CONFIGMAP, MACAROON_SUBDIR, MINER_CONFIGMAP, households
from p2pep.k8s.bootstrap import Bootstrap, KubeAdminFiles, KubePublisher, NodeState, Plan, faucet_of, plan
from p2pep.k8s.exporter import Exporter, serve
from p2pep.k8s.kubeapi import KubeApi, KubeApiError
from p2pep.k8s.pods import PodError
from p2pep.k8s.settings import ExportSettings, KubeApiSettings
from p2pep.k8s.store import FolderStore, FolderStoreError, open_store, read_object, write_object
from p2pep.servicekit.settings import BadSettings, settings_env, settings_from_env

NS = "p2pep-regtest"


class FakeApiServer:
    """Secrets and ConfigMaps of one namespace, as the API server serves them; ``deny`` makes
    every write of that name answer 403 with a Status, as RBAC does; ``drop`` holds the
    (verb, name) calls that close the connection without an answer; any other namespace answers 404
    about the namespace (``namespaces "x" not found``, as a create there does)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, str, str]] = []
        self.tokens: list[str] = []
        self.deny: set[str] = set()
        self.drop: set[tuple[str, str]] = set()

    def app(self) -> web.Application:
        app = web.Application()
        for plural in ("secrets", "configmaps"):
            app.router.add_post(f"/api/v1/namespaces/{{ns}}/{plural}", self.create)
            app.router.add_get(f"/api/v1/namespaces/{{ns}}/{plural}/{{name}}", self.get)
            app.router.add_put(f"/api/v1/namespaces/{{ns}}/{plural}/{{name}}", self.replace)
        return app

    @staticmethod
    def status(code: int, reason: str, message: str, details: dict[str, str] | None = None) -> web.Response:
        body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
                "reason": reason, "code": code}
        if details is not None:
            body["details"] = details
        return web.json_response(body, status=code)

    def _seen(self, request: web.Request, verb: str, name: str) -> str:
        self.tokens.append(request.headers.get("Authorization", ""))
        plural = request.path.split("/")[5]
        self.calls.append((verb, plural, name))
        if (verb, name) in self.drop:  # the connection goes away before any answer
            assert request.transport is not None
            request.transport.abort()
        ns = request.match_info["ns"]
        if ns != NS:
            body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "NotFound",
                    "message": f'namespaces "{ns}" not found', "details": {"name": ns, "kind": "namespaces"},
                    "code": 404}
            raise web.HTTPNotFound(text=json.dumps(body), content_type="application/json")
        return plural

    async def create(self, request: web.Request) -> web.Response:
        body = await request.json()
        name = body["metadata"]["name"]
        plural = self._seen(request, "create", name)
        if name in self.deny:
            return self.status(403, "Forbidden", f'{plural} "{name}" is forbidden: User cannot create')
        if (plural, name) in self.objects:
            return self.status(409, "AlreadyExists", f'{plural} "{name}" already exists')
        self.objects[(plural, name)] = body
        return web.json_response(body, status=201)

    async def replace(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        plural = self._seen(request, "replace", name)
        body = await request.json()
        self.objects[(plural, name)] = body
        return web.json_response(body)

    async def get(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        plural = self._seen(request, "get", name)
        if (plural, name) not in self.objects:
            return self.status(404, "NotFound", f'{plural} "{name}" not found', {"name": name, "kind": plural})
        return web.json_response(self.objects[(plural, name)])


@pytest.fixture
async def api_server(tmp_path: Path) -> Any:
    fake = FakeApiServer()
    server = TestServer(fake.app())
    client = TestClient(server)
    await client.start_server()
    token = tmp_path / "token"
    token.write_text("token-1\n")
    api = KubeApi(str(server.make_url("")).rstrip("/"), NS, token_file=token)
    try:
        yield fake, api, token
    finally:
        await api.close()
        await client.close()


async def test_a_secret_is_created_then_replaced_and_read_back_as_bytes(api_server: Any) -> None:
    fake, api, token = api_server
    assert await api.get_secret("p2pep-lnd-admin-hub") is None  # 404 is "not there", not an error
    assert await api.put_secret("p2pep-lnd-admin-hub", {"tls.cert": b"cert", "admin.macaroon": b"\x02\xff"}) == "created"
    stored = fake.objects[("secrets", "p2pep-lnd-admin-hub")]
    assert stored["data"] == {"admin.macaroon": base64.b64encode(b"\x02\xff").decode(),
                              "tls.cert": base64.b64encode(b"cert").decode()}
    assert stored["metadata"]["labels"]["app.kubernetes.io/part-of"] == "p2pep"
    token.write_text("token-2")  # rotated by the kubelet: the next request sends the new one
    assert await api.put_secret("p2pep-lnd-admin-hub", {"tls.cert": b"new", "admin.macaroon": b"m"}) == "replaced"
    assert await api.get_secret("p2pep-lnd-admin-hub") == {"tls.cert": b"new", "admin.macaroon": b"m"}
    assert [c[0] for c in fake.calls] == ["get", "create", "create", "replace", "get"]
    assert fake.tokens[0] == "Bearer token-1" and fake.tokens[-1] == "Bearer token-2"


async def test_a_configmap_is_created_then_replaced(api_server: Any) -> None:
    fake, api, _ = api_server
    assert await api.put_configmap(HUB_CONFIGMAP, {"P2PEP_METER_HUB": "02ab@lnd-hub:9735"}) == "created"
    assert await api.put_configmap(HUB_CONFIGMAP, {"P2PEP_METER_HUB": "03cd@lnd-hub:9735"}) == "replaced"
    assert await api.get_configmap(HUB_CONFIGMAP) == {"P2PEP_METER_HUB": "03cd@lnd-hub:9735"}
    assert await api.get_configmap("nothing") is None


async def test_a_refusal_names_the_call_the_object_and_the_apis_message(api_server: Any) -> None:
    fake, api, _ = api_server
    fake.deny.add("p2pep-lnd-anchor")
    with pytest.raises(KubeApiError) as err:
        await api.put_secret("p2pep-lnd-anchor", {"x": b"y"})
    assert err.value.status == 403
    assert str(err.value) == (f"create secret p2pep-lnd-anchor in namespace {NS}: 403 Forbidden: "
                              'secrets "p2pep-lnd-anchor" is forbidden: User cannot create')
    assert ("secrets", "p2pep-lnd-anchor") not in fake.objects


async def test_an_unreachable_api_is_a_kube_api_error() -> None:
    api = KubeApi("http://127.0.0.1:9", NS, timeout=2)  # discard port: refused
    try:
        with pytest.raises(KubeApiError, match=r"^get secret x in namespace p2pep-regtest: "):
            await api.get_secret("x")
    finally:
        await api.close()


async def test_a_dropped_connection_is_a_kube_api_error_not_a_raw_aiohttp_one(api_server: Any) -> None:
    fake, api, _ = api_server
    fake.drop |= {("get", "p2pep-faucet"), ("create", "p2pep-faucet"), ("create", HUB_CONFIGMAP)}
    with pytest.raises(KubeApiError, match=r"^get secret p2pep-faucet in namespace p2pep-regtest: \w*Disconnected"):
        await api.get_secret("p2pep-faucet")
    with pytest.raises(KubeApiError, match=r"^create secret p2pep-faucet in namespace p2pep-regtest: \w*Disconnected"):
        await api.put_secret("p2pep-faucet", {"k": b"v"})
    with pytest.raises(KubeApiError, match=r"^create configmap p2pep-hub in namespace p2pep-regtest: "):
        await api.put_configmap(HUB_CONFIGMAP, {"k": "v"})
    fake.drop = {("replace", HUB_CONFIGMAP)}
    fake.objects[("configmaps", HUB_CONFIGMAP)] = {}
    with pytest.raises(KubeApiError, match=r"^replace configmap p2pep-hub in namespace p2pep-regtest: \w*Disconnected"):
        await api.put_configmap(HUB_CONFIGMAP, {"k": "v"})


async def test_only_a_404_about_the_object_itself_is_a_missing_object(api_server: Any, tmp_path: Path) -> None:
    fake, api, token = api_server
    assert await api.get_secret("p2pep-faucet") is None  # NotFound, details: this name, secrets
    assert await api.get_configmap("p2pep-hub") is None
    other = KubeApi(api._client.configuration.host, "p2pep-nope", token_file=token)
    try:  # a 404 about the namespace: an error (the Job fails), not "not there yet" (it would wait)
        with pytest.raises(KubeApiError, match='^get secret p2pep-faucet in namespace p2pep-nope: 404 Not Found: '
                                               'namespaces "p2pep-nope" not found') as err:
            await other.get_secret("p2pep-faucet")
        assert err.value.status == 404
    finally:
        await other.close()
    wrong_path = KubeApi(api._client.configuration.host + "/not-the-api", NS, token_file=token)
    try:  # a 404 that is no Status at all (a path the server does not serve): an error too
        with pytest.raises(KubeApiError, match="^get configmap p2pep-hub in namespace p2pep-regtest: 404 "):
            await wrong_path.get_configmap("p2pep-hub")
    finally:
        await wrong_path.close()


def test_in_cluster_without_a_token_says_so(tmp_path: Path) -> None:
    with pytest.raises(KubeApiError, match="no ServiceAccount token"):
        KubeApi.in_cluster(KubeApiSettings(sa_dir=str(tmp_path)))


# --- the exporter sidecar --------------------------------------------------------------------------
class FakeWriter:
    def __init__(self) -> None:
        self.puts: list[tuple[str, dict[str, bytes]]] = []
        self.fail = False

    async def put_secret(self, name: str, files: Any) -> str:
        if self.fail:
            raise KubeApiError("create secret x: 500")
        self.puts.append((name, dict(files)))
        return "created" if len(self.puts) == 1 else "replaced"


async def test_the_exporter_writes_once_both_files_exist_and_again_only_when_they_change(tmp_path: Path) -> None:
    writer = FakeWriter()
    exp = Exporter("meter-2", tmp_path, writer)
    client = TestClient(TestServer(exp.health_app()))
    await client.start_server()
    try:
        assert await exp.step() is False and writer.puts == []
        assert (await client.get("/healthz")).status == 503
        assert (await client.get("/livez")).status == 200
        (tmp_path / "tls.cert").write_bytes(b"cert")
        assert await exp.step() is False and writer.puts == []  # the macaroon is not there yet
        mac = tmp_path / MACAROON_SUBDIR / "admin.macaroon"
        mac.parent.mkdir(parents=True)
        mac.write_bytes(b"")
        assert await exp.step() is False  # empty: lnd is still writing it
        mac.write_bytes(b"\x02admin")
        assert await exp.step() is True
        assert writer.puts == [("p2pep-lnd-admin-meter-2", {"tls.cert": b"cert", "admin.macaroon": b"\x02admin"})]
        assert (await client.get("/healthz")).status == 200
        assert await exp.step() is True and len(writer.puts) == 1  # unchanged: no API call
        (tmp_path / "tls.cert").write_bytes(b"renewed")
        writer.fail = True
        with pytest.raises(KubeApiError):
            await exp.step()
        assert (await client.get("/healthz")).status == 200  # exported once: lnd's pod stays ready
        writer.fail = False
        assert await exp.step() is True and writer.puts[-1][1]["tls.cert"] == b"renewed"
    finally:
        await client.close()


# --- what is left to do ----------------------------------------------------------------------------
HUB_PK = "02" + "11" * 32


def st(name: str, wallet: int, active: set[str] | None = None, pending: set[str] | None = None) -> NodeState:
    return NodeState(name, wallet, frozenset(active or ()), frozenset(pending or ()))


def test_a_fresh_network_funds_every_wallet_and_opens_every_meters_channel() -> None:
    states = {n: st(n, 0) for n in ("hub", "meter-1", "meter-2")}
    assert plan(states, "hub", HUB_PK) == Plan(fund=["hub", "meter-1", "meter-2"], open=["meter-1", "meter-2"])


def test_run_again_nothing_is_funded_or_opened_twice() -> None:
    states = {"hub": st("hub", 0, active={"m1", "m2"}),  # spent its coins on anchors: still funded once
              "meter-1": st("meter-1", 39_990_000, active={HUB_PK}),
              "meter-2": st("meter-2", 0, active={HUB_PK})}  # every coin in the channel: funded
    assert plan(states, "hub", HUB_PK).done


def test_a_run_stopped_half_way_finishes_what_is_missing() -> None:
    states = {"hub": st("hub", 50_000_000),
              "meter-1": st("meter-1", 39_990_000, pending={HUB_PK}),  # opened, not yet mined: confirm only
              "meter-2": st("meter-2", 50_000_000),  # funded, no channel yet
              "meter-3": st("meter-3", 0),  # never funded
              "meter-4": st("meter-4", 10, active={"03" + "22" * 32})}  # a channel, but not to the hub
    p = plan(states, "hub", HUB_PK)
    assert p == Plan(fund=["meter-3"], open=["meter-2", "meter-3", "meter-4"], confirm=["meter-1"])


# --- the faucet and what is published --------------------------------------------------------------
class FakeStore:
    def __init__(self) -> None:
        self.secrets: dict[str, dict[str, bytes]] = {}
        self.configmaps: dict[str, dict[str, str]] = {}
        self.order: list[str] = []

    async def get_secret(self, name: str) -> dict[str, bytes] | None:
        return self.secrets.get(name)

    async def put_secret(self, name: str, files: Any) -> str:
        self.order.append(name)
        self.secrets[name] = dict(files)
        return "created"

    async def put_configmap(self, name: str, data: Any) -> str:
        self.order.append(name)
        self.configmaps[name] = dict(data)
        return "created"

    async def secret(self, name: str, files: Any) -> None:
        await self.put_secret(name, files)

    async def configmap(self, name: str, data: Any) -> None:
        await self.put_configmap(name, data)


async def test_the_faucet_is_made_once_and_btcd_mines_to_it() -> None:
    store = FakeStore()
    first = await faucet_of(store)
    assert store.secrets[FAUCET_SECRET] == {"secret_hex": first.secret_hex.encode()}
    assert store.configmaps[MINER_CONFIGMAP] == {"mining_addr": first.address}
    again = await faucet_of(store)
    assert again.secret_hex == first.secret_hex  # a second run keeps the coins btcd mined to it
    assert store.order == [FAUCET_SECRET, MINER_CONFIGMAP, MINER_CONFIGMAP]


async def test_publish_writes_the_hubs_address_first_then_each_services_own_macaroon(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    meters = list(households())
    for node, service in [("hub", "anchor")] + [(m, "meter") for m in meters]:
        d = tmp_path / node / MACAROON_SUBDIR
        d.mkdir(parents=True)
        (tmp_path / node / "tls.cert").write_bytes(f"cert {node}".encode())
        (d / "admin.macaroon").write_bytes(b"ADMIN")
        (d / f"p2pep-{service}.macaroon").write_bytes(f"{service} of {node}".encode())
    hub = SimpleNamespace(info=SimpleNamespace(pubkey=HUB_PK, p2p_host="lnd-hub:9735"))
    net = SimpleNamespace(nodes={"hub": hub} | dict.fromkeys(meters))

    def no_scenario() -> None:
        raise AssertionError("the images ship no scenarios: the Job must not read one")
    monkeypatch.setattr(p2pep.k8s, "households", no_scenario)
    store = FakeStore()
    boot = Bootstrap(tmp_path, net, store, store)  # type: ignore[arg-type]
    await boot.publish(["settlement", "anchor", *meters])
    assert store.order[0] == HUB_CONFIGMAP
    assert store.configmaps[HUB_CONFIGMAP] == {"P2PEP_METER_HUB": f"{HUB_PK}@lnd-hub:9735"}
    assert store.secrets["p2pep-lnd-anchor"] == {"tls.cert": b"cert hub", "p2pep-anchor.macaroon": b"anchor of hub"}
    for m in meters:
        assert store.secrets[f"p2pep-lnd-{m}"] == {"tls.cert": f"cert {m}".encode(),
                                                   "p2pep-meter.macaroon": f"meter of {m}".encode()}
    assert set(store.secrets) == {"p2pep-lnd-anchor", *(f"p2pep-lnd-{m}" for m in meters)}
    assert all(b"ADMIN" not in v for files in store.secrets.values() for v in files.values())
    json.dumps(store.configmaps)  # ConfigMap data is text


# --- the folder store: the exporter and the Job under podman (no API server) -----------------------
async def test_the_folder_store_creates_replaces_and_reads_back_objects_as_volumes_lay_them_out(
        tmp_path: Path) -> None:
    store = FolderStore(tmp_path)
    assert await store.get_secret("p2pep-lnd-admin-hub") is None
    assert await store.get_configmap(HUB_CONFIGMAP) is None
    files = {"tls.cert": b"cert", "admin.macaroon": b"\x02\xff"}
    assert await store.put_secret("p2pep-lnd-admin-hub", files) == "created"
    # laid out as a Secret volume: one folder per object, one file per key (0600)
    folder = tmp_path / "secrets" / "p2pep-lnd-admin-hub"
    assert (folder / "admin.macaroon").read_bytes() == b"\x02\xff"
    assert sorted(p.name for p in folder.iterdir()) == ["admin.macaroon", "tls.cert"]
    assert (folder / "tls.cert").stat().st_mode & 0o777 == 0o600
    assert await store.get_secret("p2pep-lnd-admin-hub") == files
    assert await store.put_secret("p2pep-lnd-admin-hub", {"tls.cert": b"new"}) == "replaced"
    assert await store.get_secret("p2pep-lnd-admin-hub") == {"tls.cert": b"new"}  # whole, not merged
    # the swap left one folder for the object (the old one removed), no temporary links
    assert len(list((tmp_path / "secrets").iterdir())) == 2  # the name and the folder it points at
    assert await store.put_configmap(HUB_CONFIGMAP, {"P2PEP_METER_HUB": "02ab@lnd-hub:9735"}) == "created"
    assert (tmp_path / "configmaps" / HUB_CONFIGMAP / "P2PEP_METER_HUB").read_text() == "02ab@lnd-hub:9735"
    assert await store.get_configmap(HUB_CONFIGMAP) == {"P2PEP_METER_HUB": "02ab@lnd-hub:9735"}
    assert await store.get_secret(HUB_CONFIGMAP) is None  # Secrets and ConfigMaps apart, as in the API


async def test_the_folder_store_refuses_names_and_keys_that_would_leave_it(tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "store")
    for name in ("../x", "a/b", "UPPER", "", ".hidden"):
        with pytest.raises(FolderStoreError, match="not an object name"):
            await store.put_secret(name, {"k": b"v"})
    for key in ("../k", "a/b", "..data", "."):
        with pytest.raises(FolderStoreError, match="not a data key"):
            await store.put_secret("p2pep-x", {key: b"v"})
    assert not list(tmp_path.rglob("v"))


def test_a_reader_sees_either_the_old_or_the_new_object_never_a_mix(tmp_path: Path) -> None:
    """A writer replacing the object (a thread, as another container) while it is read."""
    kind = tmp_path / "secrets"
    write_object(kind, "s", {"a": b"0", "b": b"0"})
    done = threading.Event()

    def writer() -> None:
        for i in range(1, 300):
            write_object(kind, "s", {"a": str(i).encode(), "b": str(i).encode()})
        done.set()
    t = threading.Thread(target=writer)
    t.start()
    reads = 0
    while not done.is_set() or reads == 0:
        got = read_object(kind, "s")
        assert got is not None and got["a"] == got["b"], got
        reads += 1
    t.join()
    assert read_object(kind, "s") == {"a": b"299", "b": b"299"}
    assert [p.name for p in kind.iterdir() if not p.name.startswith("..")] == ["s"]
    assert len(list(kind.iterdir())) == 2  # the name and the one folder it points at


def test_the_store_setting_names_its_variables_and_needs_a_folder() -> None:
    assert KubeApiSettings().store == "kube"  # what the manifests run: they never set it
    env = settings_env(KubeApiSettings, store="folder", store_dir="/var/run/p2pep/store")
    assert env == {"P2PEP_KUBE_STORE": "folder", "P2PEP_KUBE_STORE_DIR": "/var/run/p2pep/store"}
    with pytest.raises(BadSettings, match="store_dir"):
        settings_from_env(KubeApiSettings, {"P2PEP_KUBE_STORE": "folder"})


async def test_open_store_gives_the_folder_or_the_api(tmp_path: Path) -> None:
    async with open_store(KubeApiSettings(store="folder", store_dir=str(tmp_path))) as store:
        assert isinstance(store, FolderStore) and store.root == tmp_path
    with pytest.raises(KubeApiError, match="no ServiceAccount token"):  # kube: the pod's account
        async with open_store(KubeApiSettings(sa_dir=str(tmp_path))):
            pass


async def test_the_exporter_writes_the_admin_secret_where_the_job_reads_it_in_the_folder_store(
        tmp_path: Path) -> None:
    """The sidecar's own loop (``serve``) with the folder store, and the Job's reader of it."""
    lnd = tmp_path / "lnd"
    mac = lnd / MACAROON_SUBDIR / "admin.macaroon"
    mac.parent.mkdir(parents=True)
    (lnd / "tls.cert").write_bytes(b"cert of meter-1")
    mac.write_bytes(b"\x02admin")
    store = FolderStore(tmp_path / "store")
    stop = asyncio.Event()
    settings = ExportSettings(node="meter-1", lnd_dir=str(lnd), interval_s=0.05, health_host="127.0.0.1",
                              health_port=0)
    task = asyncio.create_task(serve(settings, store, stop))
    try:
        for _ in range(200):
            got = await KubeAdminFiles(store).read("meter-1")
            if got is not None:
                break
            await asyncio.sleep(0.02)
        assert got == {"tls.cert": b"cert of meter-1", "admin.macaroon": b"\x02admin"}
        assert (tmp_path / "store" / "secrets" / "p2pep-lnd-admin-meter-1" / "admin.macaroon").is_file()
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_the_jobs_faucet_and_publishing_work_on_the_folder_store(tmp_path: Path) -> None:
    store = FolderStore(tmp_path)
    first = await faucet_of(store)
    assert (await faucet_of(store)).secret_hex == first.secret_hex  # kept across runs (a retried Job)
    assert await store.get_configmap(MINER_CONFIGMAP) == {"mining_addr": first.address}
    out = KubePublisher(store)
    await out.secret("p2pep-lnd-anchor", {"tls.cert": b"c", "p2pep-anchor.macaroon": b"m"})
    await out.configmap(HUB_CONFIGMAP, {"P2PEP_METER_HUB": "x"})
    assert await store.get_secret("p2pep-lnd-anchor") == {"tls.cert": b"c", "p2pep-anchor.macaroon": b"m"}


# --- the harness runs the Job's pod as the Job controller would (podman faked: no pods here) --------
class FakePodman:
    """``kube play`` / ``wait`` / ``start`` / ``logs`` as the harness calls them; a played Job pod
    "runs" :attr:`job`, given the store the translation mounted into it."""

    def __init__(self, exits: list[int], did: list[list[str]] | None = None) -> None:
        self.exits = exits  # the Job container's exit codes, one per try
        self.did = did if did is not None else [["hub", "meter-1"], []]  # wallets funded by each run that completes
        self.log = ["line 1", "bootstrap failed: btcd's RPC"]  # all runs' lines, as `podman logs` has them
        self.calls: list[tuple[str, ...]] = []
        self.played: list[list[str]] = []
        self.docs: dict[str, dict[str, Any]] = {}
        self.store: FolderStore | None = None

    async def run(self, *args: str, check: bool = True, timeout: float = 300) -> str:
        self.calls.append(args)
        if args[0] == "wait":
            if not self.exits:
                raise PodError(f"podman wait: no answer after {timeout:.0f}s")
            code = self.exits.pop(0)
            if code == 0:
                funded = self.did.pop(0)
                self.log.append(json.dumps({"event": "bootstrap done", "funded": funded, "opened": funded[1:],
                                            "confirmed": [], "level": "info", "service": "bootstrap"}))
            return f"{code}\n"
        return ""

    async def logs(self, container: str) -> str:
        self.calls.append(("logs", container))
        return "\n".join(self.log) + "\n"

    async def states(self) -> dict[str, tuple[bool, int | None]]:
        return {}  # not listed: the Job's container neither running nor exited yet

    async def play(self, docs: list[dict[str, Any]], path: Path) -> None:
        pods = [d for d in docs if d["kind"] == "Pod"]
        self.played.append([p["metadata"]["name"] for p in pods])
        for p in pods:
            self.docs[p["metadata"]["name"]] = p
            if p["metadata"]["name"] == "p2pep-bootstrap":  # the Job's first step: the faucet
                (store,) = [v["hostPath"]["path"] for v in p["spec"]["volumes"] if v["name"] == "kube-api"]
                self.store = FolderStore(Path(store))
                await faucet_of(self.store)

    async def address(self, pod: str) -> str:
        return "10.89.0.2"


def cluster(tmp_path: Path, exits: list[int], did: list[list[str]] | None = None) -> Any:
    from p2pep.k8s.pods import PodCluster

    return PodCluster(tmp_path / "run", FakePodman(exits, did), say=lambda m: None)  # type: ignore[arg-type]


async def test_the_harness_plays_the_job_then_btcd_mining_to_its_faucet_then_the_lnd_pods(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c = cluster(tmp_path, [0, 0])
    attached: list[list[str]] = []

    async def attach(nodes: list[str]) -> None:
        attached.append(nodes)
    monkeypatch.setattr(c, "_attach", attach)
    monkeypatch.setattr(c, "_service_secrets", lambda: None)
    await c.up()
    fake = c.podman
    assert fake.played == [["p2pep-bootstrap"], ["btcd"], [f"lnd-{n}" for n in ["hub", *households()]]]
    miner = await fake.store.get_configmap(MINER_CONFIGMAP)
    assert f"--miningaddr={miner['mining_addr']}" in fake.docs["btcd"]["spec"]["containers"][0]["args"]
    assert fake.store.root == c.store_dir and (await c.store.get_secret(FAUCET_SECRET)) is not None
    # run to completion, then once more (as `kubectl delete job` and apply would): that run did nothing
    job_calls = [a for a in fake.calls if a[0] in ("wait", "start")]
    assert job_calls == [("wait", "p2pep-bootstrap-bootstrap"), ("start", "p2pep-bootstrap-bootstrap"),
                         ("wait", "p2pep-bootstrap-bootstrap")]
    assert set(c.timings) == {"pods", "bootstrap", "bootstrap-again"}
    assert attached == [["hub", *households()]]
    assert (c.work / "p2pep-bootstrap.log").read_text().startswith("line 1")


async def test_a_job_that_does_something_again_on_a_second_run_fails_the_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c = cluster(tmp_path, [0, 0], did=[["hub"], ["meter-2"]])
    monkeypatch.setattr(c, "_attach", lambda nodes: asyncio.sleep(0))
    with pytest.raises(PodError, match=r"not idempotent: it did \{'funded': \['meter-2'\]"):
        await c.up()


async def test_a_failed_job_is_started_again_up_to_its_backoff_limit(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    c = cluster(tmp_path, [1, 2, 0, 0])
    monkeypatch.setattr(c, "_attach", lambda nodes: asyncio.sleep(0))
    monkeypatch.setattr(c, "_service_secrets", lambda: None)
    await c.up()
    assert [a for a in c.podman.calls if a[0] == "start"] == [("start", "p2pep-bootstrap-bootstrap")] * 3

    c = cluster(tmp_path, [1] * 7)  # backoffLimit 6: seven tries, then the Job has failed
    with pytest.raises(PodError, match=r"(?s)failed 7 times \(backoffLimit\).*bootstrap failed: btcd's RPC"):
        await c.up()
    assert len([a for a in c.podman.calls if a[0] == "start"]) == 6

    c = cluster(tmp_path, [])  # never exits: activeDeadlineSeconds
    with pytest.raises(PodError, match=r"(?s)not complete within activeDeadlineSeconds.*btcd's RPC"):
        await c.up()
