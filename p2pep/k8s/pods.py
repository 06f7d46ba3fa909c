"""The regtest overlay as pods on podman, bootstrapped, and a scenario run against them (I/O).

What ``p2pep up`` does for processes, done for the overlay's pods (:class:`PodCluster`):

1. the run's secrets are made on the host, in a run dir laid out as ``p2pep up`` leaves it:
   the CA and each service's certificate and each meter's key and enrollment
   (:func:`p2pep.scenario.tls.prepare`), btcd's RPC certificate (SAN ``btcd``), the RPC
   user and password, and a faucet key whose address btcd mines to (ConfigMap
   ``p2pep-btcd-miner``);
2. ``btcd`` is played (:mod:`p2pep.k8s.podman` translates the rendered overlay) and mined
   past segwit; the four lnd pods are played, their ``tls.cert`` and ``admin.macaroon``
   copied out of each pod (the operator's tooling keeps admin; no service gets it), and
   over lnd's RPC each node's service macaroon is baked, every wallet funded from the
   faucet and each meter's channel to the hub opened, confirmed and announced
   (:class:`p2pep.regtest.network.RegtestNetwork`'s own steps, on the pods' addresses);
3. the Secrets are what ``p2pep k8s secrets`` prints for that run dir (plus btcd's server
   key), the hub's address becomes ConfigMap ``p2pep-hub``, and the services are played:
   matcher and anchor, then settlement, console and portal, then the meters.

The harness reaches the pods at their addresses on the podman network (it runs on the host,
which routes to the network's bridge) and names each peer as its certificate does
(``grpc.ssl_target_name_override``), so the certificates are the cluster's own.
:class:`PodScenarioRunner` is the scenario runner with pods instead of processes: the same
miner, events, collection of contracts, invoices and documents, and the same report.
Everything it created (pods, their volumes, the network) is removed at the end, also on
failure.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from p2pep.chain.btcd_rpc import BtcdRpc, BtcdRpcConfig, BtcdRpcError
from p2pep.identity import Identity
from p2pep.k8s import BTCD_RPC_PORT, GRPC_PORT, LND_P2P_PORT, LND_RPC_PORT, METRICS_PORT, households
from p2pep.k8s.cli import MACAROON_SUBDIR
from p2pep.k8s.cli import secrets as secrets_yaml
from p2pep.k8s.podman import Doc, Played, translate
from p2pep.lnd.client import LndClient, LndConnection, LndError
from p2pep.regtest.binaries import Binaries
from p2pep.regtest.btcd import Btcd, BtcdInfo
from p2pep.regtest.errors import RegtestError
from p2pep.regtest.faucet import Faucet
from p2pep.regtest.lnd_node import HUB, LndInfo, LndNode
from p2pep.regtest.network import MIN_START_HEIGHT, RegtestNetwork
from p2pep.regtest.waiting import wait_for
from p2pep.scenario import run_state as scenario_state
from p2pep.scenario import tls as run_tls
from p2pep.scenario.launch import NodeEndpoint, ServiceLaunch
from p2pep.scenario.model import Scenario
from p2pep.scenario.processes import ServiceProcess
from p2pep.scenario.runner import RunOptions, ScenarioRunner
from p2pep.servicekit.tls import Tls

REPO = Path(__file__).resolve().parents[2]
PREFIX = "p2pep-pods-"  # the podman network and volumes of a pod-level run
NETWORK = "p2pep-pods"
CENTRAL = ("matcher", "anchor", "settlement", "console", "portal")
BTCD_USER = "p2pep"


def podman_root() -> Path:
    """The podman configuration and storage of scripts/build-images.sh (its images)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "p2pep" / "podman"
    return Path(os.environ.get("P2PEP_PODMAN_ROOT", default))


class PodError(RegtestError):
    """podman refused, or a pod did not come up."""


class Podman:
    """The ``podman`` CLI with the project's configuration (runc, cgroupfs, no default
    ulimits, its own storage: written by scripts/build-images.sh)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or podman_root()
        conf = self.root / "containers.conf"
        if not conf.is_file():
            raise PodError(f"no podman configuration at {conf}: run `make images` (scripts/build-images.sh)")
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf),
                    "CONTAINERS_STORAGE_CONF": str(self.root / "storage.conf")}

    async def run(self, *args: str, check: bool = True, timeout: float = 300) -> str:
        proc = await asyncio.create_subprocess_exec(
            "podman", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise PodError(f"podman {' '.join(args[:3])}: no answer after {timeout:.0f}s") from None
        if check and proc.returncode != 0:
            raise PodError(f"podman {' '.join(args[:4])}: {err.decode().strip()[-2000:]}")
        return out.decode()

    async def play(self, docs: Sequence[Doc], path: Path) -> None:
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        await self.run("kube", "play", "--network", NETWORK, str(path))

    async def address(self, pod: str) -> str:
        """The pod's address on the run's network."""
        infra = (await self.run("pod", "inspect", pod, "--format", "{{.InfraContainerID}}")).strip()
        nets = json.loads(await self.run("inspect", infra, "--format", "{{json .NetworkSettings.Networks}}"))
        ip = str(nets.get(NETWORK, {}).get("IPAddress", ""))
        if not ip:
            raise PodError(f"pod {pod} has no address on network {NETWORK}")
        return ip

    async def read(self, container: str, path: str) -> bytes | None:
        proc = await asyncio.create_subprocess_exec(
            "podman", "exec", container, "cat", path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=self.env)
        out, _ = await proc.communicate()
        return out if proc.returncode == 0 and out else None

    async def states(self) -> dict[str, tuple[bool, int | None]]:
        """Container name -> (running, exit code when exited)."""
        rows = json.loads(await self.run("ps", "-a", "--format", "json") or "[]")
        out: dict[str, tuple[bool, int | None]] = {}
        for r in rows:
            running = r.get("State") == "running"
            for n in r.get("Names") or []:
                out[n] = (running, None if running else int(r.get("ExitCode", 0)))
        return out


def _self_signed(host: str) -> tuple[bytes, bytes]:
    """btcd's RPC certificate and key (PEM): self-signed, names ``host`` and localhost."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host), x509.DNSName("localhost")]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def configmap(name: str, data: dict[str, str]) -> Doc:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name,
            "labels": {"app.kubernetes.io/part-of": "p2pep"}}, "data": data}


def render_overlay(overlay: str = "regtest") -> list[Doc]:
    out = subprocess.run(["kubectl", "kustomize", str(REPO / "k8s" / "overlays" / overlay)],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    return [d for d in yaml.safe_load_all(out) if d]


# --- the regtest network on pods: RegtestNetwork's steps on the pods' addresses -----------------
@dataclass
class PodLndInfo(LndInfo):
    pod: str = ""  # lnd-hub, lnd-meter-1: its name on the network, in its certificate
    address: str = ""  # the pod's address (the harness dials it)

    @property
    def rpcserver(self) -> str:
        return f"{self.address}:{LND_RPC_PORT}"

    @property
    def p2p_host(self) -> str:  # what other nodes connect to
        return f"{self.pod}:{LND_P2P_PORT}"


class PodLndNode(LndNode):
    info: PodLndInfo

    @property
    def client(self) -> LndClient:
        if self._client is None:
            conn = self.info.connection()
            creds = grpc.composite_channel_credentials(
                grpc.ssl_channel_credentials(Path(conn.tls_cert_path).read_bytes()),
                grpc.metadata_call_credentials(_MacaroonAuth(Path(conn.macaroon_path).read_bytes().hex())))
            ch = grpc.aio.secure_channel(conn.rpcserver, creds, options=[
                ("grpc.ssl_target_name_override", self.info.pod),
                ("grpc.max_receive_message_length", 64 * 1024 * 1024)])
            self._client = LndClient(LndConnection(conn.name, conn.rpcserver, conn.tls_cert_path,
                                                   conn.macaroon_path), channel=ch)
        return self._client


class _MacaroonAuth(grpc.AuthMetadataPlugin):
    def __init__(self, macaroon_hex: str) -> None:
        self.macaroon_hex = macaroon_hex

    def __call__(self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback) -> None:
        callback((("macaroon", self.macaroon_hex),), None)


class PodBtcd(Btcd):
    """btcd's RPC at its pod's address (nothing to start: the pod runs it)."""

    def __init__(self, info: BtcdInfo, address: str, password: str, mining_addr: str) -> None:
        super().__init__(Path("btcd"), info, mining_addr)
        self.rpc = BtcdRpc(BtcdRpcConfig(f"{address}:{BTCD_RPC_PORT}", BTCD_USER, password, info.cert))

    async def call(self, method: str, *params: Any) -> Any:
        return await self.rpc.call(method, *params)


class PodNetwork(RegtestNetwork):
    """btcd and the lnd nodes of the pods (their state files in ``run_dir`` as ``p2pep up``'s)."""

    def __init__(self, run_dir: Path, faucet: Faucet) -> None:
        self.run_dir = run_dir
        self.bins = Binaries(Path("/nonexistent"))
        self.faucet = faucet
        self.btcd: Btcd | None = None
        self.nodes: dict[str, LndNode] = {}

    def save(self) -> None:
        pass  # nothing to attach to later: the pods go with the run

    async def mine(self, n: int) -> list[str]:
        assert self.btcd is not None
        hashes = await self.btcd.mine(n)
        tip = await self.btcd.height()
        for node in self.nodes.values():
            async def synced(node: LndNode = node) -> bool:
                info = await node.client.get_info()
                return info.block_height >= tip and info.synced_to_chain
            await wait_for(synced, 60, what=f"{node.name} synced to height {tip}")
        return hashes

    async def public_channel_count(self) -> int:
        seen: set[int] = set()
        for n in self.nodes.values():
            seen |= {c.chan_id for c in await n.client.list_channels() if not c.private}
        return len(seen)

    async def down(self, purge: bool = False) -> None:
        await self.close()


# --- the services as pods -------------------------------------------------------------------------
@dataclass(frozen=True)
class PodLaunch(ServiceLaunch):
    address: str = ""

    @property
    def target(self) -> str:
        return f"{self.address}:{self.grpc_port}"


class PodService(ServiceProcess):
    """A service's pod, driven as the runner drives a process: alive, stopped (SIGTERM by
    ``podman stop``, SIGKILL after the grace period), its log written to ``launch.log_path``."""

    def __init__(self, launch: PodLaunch, tls: Tls, podman: Podman, container: str) -> None:
        super().__init__(launch, tls)
        self.podman = podman
        self.container = container
        self.state: tuple[bool, int | None] = (True, None)  # refreshed by PodCluster.poll_states
        self.starts = 1

    @property
    def pid(self) -> int | None:
        return None

    @property
    def returncode(self) -> int | None:
        return self.state[1]

    def alive(self) -> bool:
        return self.state[0]

    def start(self) -> None:
        raise NotImplementedError("a pod-level run plays its pods once")

    async def stop(self, sig: signal.Signals = signal.SIGTERM, grace: float = 30.0) -> int | None:
        if self.alive():
            if sig == signal.SIGTERM:
                await self.podman.run("stop", "-t", str(int(grace)), self.container, check=False, timeout=grace + 30)
            else:
                await self.podman.run("kill", "-s", sig.name, self.container, check=False)
                await asyncio.sleep(0)
        states = await self.podman.states()
        self.state = states.get(self.container, (False, None))
        await self.save_log()
        return self.returncode

    async def save_log(self) -> None:
        self.launch.log_path.parent.mkdir(parents=True, exist_ok=True)
        text = await self.podman.run("logs", self.container, check=False)
        self.launch.log_path.write_text(text)


class PodCluster:
    """The regtest overlay's pods of one run: played, bootstrapped, removed (:meth:`down`)."""

    def __init__(self, run_dir: Path, podman: Podman | None = None, say: Any = print) -> None:
        self.run_dir = run_dir
        self.podman = podman or Podman()
        self.say = say
        self.work = run_dir / "pods"  # the played files and the Secrets' folders
        self.btcd_pass = secrets.token_urlsafe(18)
        self.faucet = Faucet(secrets.token_hex(32))
        self.net = PodNetwork(run_dir, self.faucet)
        self.played: dict[str, Played] = {}
        self.addresses: dict[str, str] = {}
        self.secrets: dict[str, dict[str, bytes]] = {}
        self.configmaps: list[Doc] = [configmap("p2pep-btcd-miner", {"mining_addr": self.faucet.address})]
        self.docs = render_overlay()
        self.timings: dict[str, float] = {}

    # --- clean slate and clean up ----------------------------------------------------------------
    def pod_names(self) -> list[str]:
        return [d["metadata"]["name"] for d in self.docs if d["kind"] == "StatefulSet"]

    async def down(self) -> None:
        """Remove every pod of the overlay, their volumes and the network (missing ones are fine)."""
        names = self.pod_names()
        await self.podman.run("pod", "rm", "--force", "--ignore", "-t", "5", *names, check=False, timeout=120)
        vols = (await self.podman.run("volume", "ls", "--format", "{{.Name}}", check=False)).split()
        mine = [v for v in vols if v.startswith(PREFIX)]
        if mine:
            await self.podman.run("volume", "rm", "--force", *mine, check=False)
        await self.podman.run("network", "rm", "--force", NETWORK, check=False)

    # --- bring up ----------------------------------------------------------------------------------
    async def up(self, scenario: Scenario) -> None:
        """btcd and lnd pods, bootstrapped; then the secrets and ConfigMaps of the services."""
        await self.down()  # a run that died before its cleanup
        await self.podman.run("network", "create", NETWORK)
        self.work.mkdir(parents=True, exist_ok=True)
        t = time.monotonic()
        self._host_material()
        await self._play(["btcd"], "btcd")
        await self._bootstrap_chain()
        self.timings["btcd"] = time.monotonic() - t
        t = time.monotonic()
        nodes = ["lnd-hub", *(f"lnd-{m}" for m in households())]
        await self._play(nodes, "lnd")
        await asyncio.gather(*(self._add_node(p) for p in nodes))
        self.timings["lnd"] = time.monotonic() - t
        t = time.monotonic()
        net = self.net
        s = scenario.network
        meters = [n for n in net.nodes.values() if n.name != HUB]
        await net.fund(list(net.nodes.values()), s.fund_sat)
        await net.open_channels([(m.name, HUB) for m in meters], s.channel_sat, s.push_sat)
        self.timings["channels"] = time.monotonic() - t
        hub = net.nodes[HUB].info
        self.configmaps.append(configmap("p2pep-hub", {"P2PEP_METER_HUB": f"{hub.pubkey}@{hub.p2p_host}"}))
        self._service_secrets()

    def _host_material(self) -> None:
        cert, key = _self_signed("btcd")
        d = self.run_dir / "btcd"
        d.mkdir(parents=True, exist_ok=True)
        (d / "rpc.cert").write_bytes(cert)
        self.secrets["p2pep-btcd-server"] = {"rpc.cert": cert, "rpc.key": key}
        self.secrets["p2pep-btcd-client"] = {"rpc.cert": cert, "user": BTCD_USER.encode(),
                                             "pass": self.btcd_pass.encode()}

    async def _play(self, names: list[str], phase: str) -> None:
        played = translate(self.docs, self.secrets, self.work / "secrets", PREFIX, self.configmaps, names)
        docs: list[Doc] = []
        for n in names:
            p = played[n]
            self.played[n] = p
            for folder, files in p.secret_dirs.items():
                _write_secret_folder(Path(folder), files)
            docs += [d for d in p.docs if d not in docs]
        await self.podman.play(docs, self.work / f"{phase}.yaml")
        for n in names:
            self.addresses[n] = await self.podman.address(n)

    async def _bootstrap_chain(self) -> None:
        info = BtcdInfo(rpc_port=BTCD_RPC_PORT, p2p_port=0, dir=str(self.run_dir / "btcd"))
        btcd = PodBtcd(info, self.addresses["btcd"], self.btcd_pass, self.faucet.address)
        self.net.btcd = btcd

        async def answers() -> bool:
            try:
                await btcd.call("getblockcount")
                return True
            except BtcdRpcError:
                return False
        await wait_for(answers, 60, what="btcd's RPC in its pod")
        height = await btcd.height()
        if height < MIN_START_HEIGHT:
            await btcd.mine(MIN_START_HEIGHT - height)
        if not await btcd.segwit_active():
            raise PodError(f"segwit not active at height {MIN_START_HEIGHT}")

    async def _add_node(self, pod: str) -> None:
        """Copy the node's tls.cert and admin macaroon out of its pod, wait until it is synced,
        bake its service's macaroon."""
        name = pod.removeprefix("lnd-")
        d = self.run_dir / name
        info = PodLndInfo(name=name, dir=str(d), rpc_port=LND_RPC_PORT, rest_port=0, p2p_port=LND_P2P_PORT,
                          metrics_port=0, pod=pod, address=self.addresses[pod])
        container = f"{pod}-lnd"
        mac_dir = d / MACAROON_SUBDIR
        mac_dir.mkdir(parents=True, exist_ok=True)

        async def files() -> bool:
            cert = await self.podman.read(container, "/data/tls.cert")
            admin = await self.podman.read(container, f"/data/{MACAROON_SUBDIR}/admin.macaroon")
            if cert is None or admin is None:
                return False
            (d / "tls.cert").write_bytes(cert)
            (mac_dir / "admin.macaroon").write_bytes(admin)
            return True
        await wait_for(files, 120, interval=1.0, what=f"{pod}'s tls.cert and admin macaroon")
        node = PodLndNode(Path("lnd"), info, BtcdInfo(BTCD_RPC_PORT, 0, str(self.run_dir / "btcd")))
        last = ""

        async def ready() -> bool:
            nonlocal last
            try:
                if await node.client.get_state() != "SERVER_ACTIVE":
                    return False
                got = await node.client.get_info()
                info.pubkey = got.identity_pubkey
                return bool(got.synced_to_chain)
            except LndError as exc:
                last = str(exc)
                return False
        try:
            await wait_for(ready, 120, interval=0.5, what=f"{pod} active and synced")
        except Exception as exc:
            raise PodError(f"{pod}: {exc} ({last})") from exc
        await node.bake_service_macaroons()
        self.net.nodes[name] = node

    def _service_secrets(self) -> None:
        """The Secrets `p2pep k8s secrets` prints for this run dir (after the TLS folder)."""
        meter_keys = {m: scenario_state.scenario_dir(self.run_dir) / m / "meter.key" for m in households()}
        run_tls.prepare(self.run_dir / "tls", CENTRAL, meter_keys)
        text = secrets_yaml(self.run_dir, "regtest", BTCD_USER, self.btcd_pass)
        for doc in yaml.safe_load_all(text):
            if doc:
                self.secrets[doc["metadata"]["name"]] = {
                    k: base64.b64decode(v) for k, v in doc.get("data", {}).items()}

    async def play_services(self, names: list[str], phase: str) -> None:
        await self._play(names, phase)


def _write_secret_folder(folder: Path, files: dict[str, bytes]) -> None:
    """A Secret volume's files, readable by the pods' user (10001) only."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        path = folder / name
        path.write_bytes(data)
        path.chmod(0o400)
        if os.geteuid() == 0:
            os.chown(path, 10001, 10001)
    folder.chmod(0o500)
    if os.geteuid() == 0:
        os.chown(folder, 10001, 10001)


class PodScenarioRunner(ScenarioRunner):
    """:class:`ScenarioRunner` on the regtest overlay's pods instead of processes."""

    def __init__(self, scenario: Scenario, options: RunOptions, podman: Podman | None = None) -> None:
        super().__init__(scenario, options)
        self.cluster = PodCluster(self.run_dir, podman, self.say)
        self._poller: asyncio.Task[None] | None = None
        # runs once the report is built, before the pods go (a test checks on them then)
        self.before_down: Callable[[PodScenarioRunner], Awaitable[None]] | None = None
        self.before_down_error: BaseException | None = None

    async def _bring_up(self) -> None:
        s = self.scenario
        expected = set(households())
        if set(s.meter_names) != expected or not s.network.hub:
            raise PodError(f"the regtest overlay has meters {sorted(expected)} and a hub; "
                           f"scenario {s.name} has {s.meter_names}")
        self._set_phase("network")
        t = time.monotonic()
        self.say("pods: btcd and four lnd nodes, bootstrapped (mined, funded, channels, macaroons)")
        self.net = self.cluster.net  # closed by the teardown, also if the bring-up fails
        await self.cluster.up(s)
        self.say(f"network up in {time.monotonic() - t:.0f}s ({self.cluster.timings})")
        self.layout.root.mkdir(parents=True, exist_ok=True)
        self._set_phase("services")
        self.tls = Tls.load(self.run_dir / "tls", Identity("operator", run_tls.OPERATOR))
        self._poller = asyncio.create_task(self._poll_states())
        await self._start_pods(["matcher", "anchor"], "services-1")
        await self._start_pods(["settlement", "console", "portal"], "services-2")
        self.watcher.set_settlement(self.procs["settlement"].launch.target, self.tls)
        self.clock.launched(time.monotonic())
        await self._start_pods(s.meter_names, "meters")
        for m in s.meter_names:
            self.watcher.add_meter(m, self.procs[m].launch.target, self.tls)
        self.watcher.start()

    async def _start_pods(self, names: list[str], phase: str) -> None:
        await self.cluster.play_services(names, phase)
        assert self.tls is not None
        for n in names:
            played = self.cluster.played[n]
            container = played.docs[-1]["spec"]["containers"][0]
            launch = PodLaunch(n, str(container.get("args", [""])[0]), GRPC_PORT, METRICS_PORT,
                               self.layout.log(n), self.layout.data_dir(n), address=self.cluster.addresses[n])
            self.procs[n] = PodService(launch, self.tls, self.cluster.podman, f"{n}-{container['name']}")
        self._save_state()
        await asyncio.gather(*(self.procs[n].wait_healthy(self.opts.startup_timeout_s) for n in names))
        self.say(f"{', '.join(names)} healthy")

    async def _poll_states(self) -> None:
        while True:
            try:
                states = await self.cluster.podman.states()
                for p in self.procs.values():
                    if isinstance(p, PodService):
                        p.state = states.get(p.container, (False, None))
            except PodError:
                pass
            await asyncio.sleep(1.0)

    def endpoints(self) -> dict[str, NodeEndpoint]:
        out = {}
        for name, n in self.cluster.net.nodes.items():
            i = n.info
            out[name] = NodeEndpoint(name, i.pubkey, i.rpcserver, i.tls_cert,
                                     {svc: i.service_macaroon(svc) for svc in i.services}, i.p2p_host)
        return out

    def web_urls(self) -> dict[str, str]:
        return {n: f"http://{self.cluster.addresses[n]}:{METRICS_PORT}/" for n in self.procs
                if n in ("console", "portal") or n in self.scenario.meter_names}

    async def _teardown(self) -> None:
        if self.before_down is not None and self.report is not None:
            try:
                await self.before_down(self)
            except Exception as exc:  # noqa: BLE001 - the caller fails on it after the cleanup
                self.before_down_error = exc
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        try:
            await super()._teardown()  # stops the services (meters first), logs saved
        finally:
            for p in self.procs.values():
                if isinstance(p, PodService) and not p.launch.log_path.exists():
                    await p.save_log()
            self.say("removing the pods, their volumes and the network")
            await self.cluster.down()


async def wait_pods_gone(podman: Podman, names: Iterable[str]) -> bool:
    """True when none of ``names`` is a pod any more (the tests check the cleanup)."""
    out = await podman.run("pod", "ps", "--format", "{{.Name}}", check=False)
    return not set(out.split()) & set(names)

