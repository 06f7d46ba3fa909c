"""The regtest overlay as pods on podman, bootstrapped by its own Job, and a scenario run (I/O).

What ``kubectl apply -k k8s/overlays/regtest`` does in a cluster, done with podman 4.3
(:class:`PodCluster`; :mod:`p2pep.k8s.podman` translates the rendered overlay):

1. the run's secrets that an operator makes by hand in a cluster are made on the host, in a
   run dir laid out as ``p2pep up`` leaves it: the CA, each service's certificate, each
   meter's key and enrollment (:func:`p2pep.scenario.tls.prepare`), btcd's RPC certificate
   (SAN ``btcd``), its RPC user and password;
2. the bootstrap **Job's own pod** is played (the ``p2pep-services`` image, ``python -m
   p2pep.k8s.bootstrap``, settings from the generated ConfigMap ``p2pep-bootstrap-config``),
   with the folder store (:class:`p2pep.k8s.store.FolderStore`, one folder of the run) where
   the Kubernetes API would be. It makes the faucet (Secret ``p2pep-faucet``, ConfigMap
   ``p2pep-btcd-miner``); ``btcd`` is played once that ConfigMap exists (mining to it), then
   the four lnd pods, each with its **exporter sidecar** writing ``p2pep-lnd-admin-<node>``
   into the store. Each pod is played once what it reads exists, as the kubelet starts a
   cluster's pods once their mounts exist;
3. the Job runs :mod:`p2pep.k8s.bootstrap`'s steps from inside the pod network (btcd and the
   nodes by their names ``btcd``, ``lnd-hub``..., as their certificates name them) and the
   harness waits for it to complete as the Job controller would (:meth:`PodCluster._run_job`:
   ``backoffLimit`` retries within ``activeDeadlineSeconds``, its log kept in the run), then
   runs it once more, as ``kubectl delete job`` and ``apply`` would, and fails unless that run
   funded, opened and confirmed nothing (idempotence, from the nodes' own state);
4. the harness reads back what the Job published (ConfigMap ``p2pep-hub``, Secrets
   ``p2pep-lnd-anchor`` and ``p2pep-lnd-meter-N``) and attaches to btcd and the nodes itself
   (:meth:`p2pep.k8s.bootstrap.Bootstrap.attach`: admin files from the exporters' Secrets,
   nothing written to the nodes), because the scenario runner's miner and collection need
   them; the other Secrets are what ``p2pep k8s secrets`` prints for that run dir, and the
   services are played: matcher and anchor, then settlement, console and portal, then the
   meters.

Invariant: the harness bootstraps nothing itself: every wallet funded, channel opened and
macaroon baked is the Job's, whose code, image, settings and order are the cluster's; only the
store behind :class:`p2pep.k8s.store.Store` differs (no RBAC, no API server).

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
import shutil
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from p2pep.identity import Identity
from p2pep.k8s import (
    BTCD_RPC_PORT,
    FAUCET_SECRET,
    GRPC_PORT,
    HUB_CONFIGMAP,
    HUB_NODE,
    MACAROON_SUBDIR,
    METRICS_PORT,
    MINER_CONFIGMAP,
    bootstrap_values,
    components,
    households,
    lnd_secrets,
    lnd_workload,
)
from p2pep.k8s.bootstrap import Bootstrap, ClusterBtcd, ClusterNetwork, KubeAdminFiles, KubePublisher
from p2pep.k8s.cli import secrets as secrets_yaml
from p2pep.k8s.podman import Doc, Played, translate
from p2pep.k8s.store import FolderStore
from p2pep.lnd.macaroons import write_private
from p2pep.regtest.btcd import BtcdInfo
from p2pep.regtest.errors import RegtestError
from p2pep.regtest.faucet import Faucet
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
NOTHING_DONE: dict[str, list[str]] = {"funded": [], "opened": [], "confirmed": []}  # a Job run on a bootstrapped net


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

    async def run(self, *args: str, check: bool = True, timeout: float = 300, both_streams: bool = False) -> str:
        """podman's stdout (``both_streams``: stderr too, interleaved)."""
        proc = await asyncio.create_subprocess_exec(
            "podman", *args, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if both_streams else subprocess.PIPE, env=self.env)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise PodError(f"podman {' '.join(args[:3])}: no answer after {timeout:.0f}s") from None
        if check and proc.returncode != 0:
            raise PodError(f"podman {' '.join(args[:4])}: {(err or out).decode().strip()[-2000:]}")
        return out.decode(errors="replace")

    async def logs(self, container: str) -> str:
        """A container's log, both its streams (``podman logs`` writes what the container wrote
        to stderr, where every service logs, on its own stderr)."""
        try:
            return await self.run("logs", container, check=False, timeout=60, both_streams=True)
        except PodError as e:  # no answer: the log says so rather than failing the caller
            return f"({e})"

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
        text = await self.podman.logs(self.container)
        self.launch.log_path.write_text(text)


class PodCluster:
    """The regtest overlay's pods of one run: played, bootstrapped, removed (:meth:`down`)."""

    def __init__(self, run_dir: Path, podman: Podman | None = None, say: Any = print) -> None:
        self.run_dir = run_dir
        self.podman = podman or Podman()
        self.say = say
        self.work = run_dir / "pods"  # the played files and the Secrets' folders
        self.store_dir = self.work / "store"  # the folder store: the exporters' and the Job's "API"
        self.store = FolderStore(self.store_dir)
        self.btcd_pass = secrets.token_urlsafe(18)
        # the Job makes the faucet (Secret p2pep-faucet); the harness reads it back once the Job is done
        self.net = ClusterNetwork(run_dir, Faucet(secrets.token_hex(32)))
        self.played: dict[str, Played] = {}
        self.addresses: dict[str, str] = {}
        self.secrets: dict[str, dict[str, bytes]] = {}
        self.configmaps: list[Doc] = []  # made at bootstrap (the Job's), read from the store
        self.docs = render_overlay()
        (self.job,) = [d["metadata"]["name"] for d in self.docs if d["kind"] == "Job"]
        self.timings: dict[str, float] = {}

    # --- clean slate and clean up ----------------------------------------------------------------
    def pod_names(self) -> list[str]:
        return [d["metadata"]["name"] for d in self.docs if d["kind"] in ("StatefulSet", "Job")]

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
    async def up(self) -> None:
        """The Job's pod, btcd and the lnd pods (with their exporters) played in the order their
        inputs exist, as the kubelet starts a cluster's; the Job run to completion; then the
        Secrets and ConfigMaps of the services."""
        await self.down()  # a run that died before its cleanup
        await self.podman.run("network", "create", NETWORK)
        self.work.mkdir(parents=True, exist_ok=True)
        _make_store(self.store_dir)
        t = time.monotonic()
        self._host_material()
        await self._play([self.job], "bootstrap")  # it makes the faucet, then waits for btcd
        miner = await self._wait_configmap(MINER_CONFIGMAP, 120)
        self.configmaps.append(configmap(MINER_CONFIGMAP, miner))
        await self._play(["btcd"], "btcd")  # btcd mines to the Job's faucet (--miningaddr)
        nodes = [HUB_NODE, *households()]
        await self._play([lnd_workload(n) for n in nodes], "lnd")  # lnd and its exporter sidecar
        self.timings["pods"] = time.monotonic() - t
        t = time.monotonic()
        first = await self._run_job(self.job)
        self.timings["bootstrap"] = time.monotonic() - t
        t = time.monotonic()  # the README's "run it again" (delete the Job, apply): nothing left to do
        again = await self._run_job(self.job, start=True)
        self.timings["bootstrap-again"] = time.monotonic() - t
        if again != NOTHING_DONE:
            raise PodError(f"the Job run again was not idempotent: it did {again} after {first}")
        await self._attach(nodes)
        self._service_secrets()

    async def _wait_configmap(self, name: str, timeout: float) -> dict[str, str]:
        """ConfigMap ``name`` from the store, once the Job has written it."""
        deadline = time.monotonic() + timeout
        job = self.played[self.job].job
        assert job is not None
        container = f"{self.job}-{job.container}"
        while (got := await self.store.get_configmap(name)) is None:
            running, code = (await self.podman.states()).get(container, (False, None))
            if time.monotonic() > deadline or (not running and code is not None):
                why = f"exited with {code}" if not running and code is not None else f"in {timeout:.0f}s"
                raise PodError(f"the Job wrote no ConfigMap {name} ({why}):\n" + await self._job_log(self.job))
            await asyncio.sleep(0.5)
        return got

    async def _job_log(self, name: str) -> str:
        job = self.played[name].job
        assert job is not None
        text = await self.podman.logs(f"{name}-{job.container}")
        (self.work / f"{name}.log").write_text(text)
        return "\n".join(text.splitlines()[-40:])

    async def _run_job(self, name: str, start: bool = False) -> dict[str, list[str]]:
        """The Job's pod run to completion, as the Job controller runs it: its container's exit
        awaited, started again after a failure up to ``backoffLimit`` times, all within
        ``activeDeadlineSeconds``; its log kept in the run's ``pods/<job>.log``. ``start``: run
        the completed container once more first (a second Job). Returns what the run did (its
        ``bootstrap done`` line: the wallets funded, channels opened and confirmed)."""
        job = self.played[name].job
        assert job is not None
        container = f"{name}-{job.container}"
        deadline = time.monotonic() + job.deadline_s
        if start:
            await self.podman.run("start", container)
        for attempt in range(1, job.backoff_limit + 2):
            left = deadline - time.monotonic()
            try:
                out = await self.podman.run("wait", container, timeout=max(left, 1))
            except PodError as exc:
                raise PodError(f"Job {name} not complete within activeDeadlineSeconds ({job.deadline_s:.0f}s): "
                               f"{exc}\n" + await self._job_log(name)) from None
            code = int(out.split()[-1])
            tail = await self._job_log(name)
            if code == 0:
                done = _job_done((self.work / f"{name}.log").read_text())
                self.say(f"Job {name} complete (try {attempt}): {done}")
                return done
            self.say(f"Job {name} failed (exit {code}, try {attempt} of {job.backoff_limit + 1})")
            if attempt <= job.backoff_limit:
                await self.podman.run("start", container)
        raise PodError(f"Job {name} failed {job.backoff_limit + 1} times (backoffLimit); its log ends:\n{tail}")

    async def _attach(self, nodes: list[str]) -> None:
        """The harness's own view of what the Job made, for the scenario runner (its miner,
        collection and report): btcd, the faucet, each node (admin files from its exporter's
        Secret, active and synced) with its services' macaroons from the Secrets the Job
        published; those Secrets and ConfigMap ``p2pep-hub`` go to the services' pods."""
        faucet = await self.store.get_secret(FAUCET_SECRET)
        miner = await self.store.get_configmap(MINER_CONFIGMAP)
        hub = await self.store.get_configmap(HUB_CONFIGMAP)
        if not faucet or not miner or hub is None:
            raise PodError(f"the Job completed without Secret {FAUCET_SECRET} or ConfigMaps "
                           f"{MINER_CONFIGMAP}, {HUB_CONFIGMAP} in {self.store_dir}")
        self.net.faucet = Faucet(faucet["secret_hex"].decode().strip())
        info = BtcdInfo(rpc_port=BTCD_RPC_PORT, p2p_port=0, dir=str(self.run_dir / "btcd"))
        self.net.btcd = ClusterBtcd(info, f"{self.addresses['btcd']}:{BTCD_RPC_PORT}", BTCD_USER, self.btcd_pass,
                                    miner["mining_addr"])
        boot = Bootstrap(self.run_dir, self.net, KubeAdminFiles(self.store), KubePublisher(self.store))
        await asyncio.gather(*(boot.attach(n, self.addresses[lnd_workload(n)], 60) for n in nodes))
        for secret, (node, service) in lnd_secrets([c.name for c in components("regtest")]).items():
            files = await self.store.get_secret(secret)
            if files is None:
                raise PodError(f"the Job completed without Secret {secret}")
            self.secrets[secret] = files
            mac = f"p2pep-{service}.macaroon"
            write_private(self.run_dir / node / MACAROON_SUBDIR / mac, files[mac])
        self.configmaps.append(configmap(HUB_CONFIGMAP, hub))

    def _host_material(self) -> None:
        cert, key = _self_signed("btcd")
        d = self.run_dir / "btcd"
        d.mkdir(parents=True, exist_ok=True)
        (d / "rpc.cert").write_bytes(cert)
        self.secrets["p2pep-btcd-server"] = {"rpc.cert": cert, "rpc.key": key}
        self.secrets["p2pep-btcd-client"] = {"rpc.cert": cert, "user": BTCD_USER.encode(),
                                             "pass": self.btcd_pass.encode()}

    async def _play(self, names: list[str], phase: str) -> None:
        played = translate(self.docs, self.secrets, self.work / "secrets", PREFIX, self.configmaps, names,
                           store=self.store_dir)
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

    def _service_secrets(self) -> None:
        """The Secrets `p2pep k8s secrets` prints for this run dir (after the TLS folder), the
        ones already there kept: the lnd ones are the Job's (:meth:`Bootstrap.publish`, read
        back from the store), btcd's the host's; the rest (TLS, meter keys) the host's."""
        meter_keys = {m: scenario_state.scenario_dir(self.run_dir) / m / "meter.key" for m in households()}
        run_tls.prepare(self.run_dir / "tls", CENTRAL, meter_keys)
        text = secrets_yaml(self.run_dir, "regtest", BTCD_USER, self.btcd_pass)
        for doc in yaml.safe_load_all(text):
            if doc:
                self.secrets.setdefault(doc["metadata"]["name"], {
                    k: base64.b64decode(v) for k, v in doc.get("data", {}).items()})

    async def play_services(self, names: list[str], phase: str) -> None:
        await self._play(names, phase)


def _job_done(log_text: str) -> dict[str, list[str]]:
    """What the Job's last run did, from its last ``bootstrap done`` line (JSON, structlog's)."""
    for line in reversed(log_text.splitlines()):
        try:
            event = json.loads(line[line.index("{"):]) if "{" in line else {}
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == "bootstrap done":
            return {k: list(event.get(k) or []) for k in ("funded", "opened", "confirmed")}
    raise PodError("the Job exited 0 without its `bootstrap done` line")


def _make_store(folder: Path) -> None:
    """The folder store, empty (nothing of an earlier run: its faucet and admin files are not
    this run's nodes'), writable by the pods' user (10001) only: it holds admin macaroons."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(mode=0o700, parents=True)
    if os.geteuid() == 0:
        os.chown(folder, 10001, 10001)


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
        boot = bootstrap_values()  # what the Job funds and opens (its generated ConfigMap)
        amounts = {"fund_sat": s.network.fund_sat, "channel_sat": s.network.channel_sat,
                   "push_sat": s.network.push_sat}
        if any(boot[k] != v for k, v in amounts.items()):
            raise PodError(f"the regtest overlay's bootstrap Job funds and opens {boot}; scenario {s.name} "
                           f"wants {amounts}")
        self._set_phase("network")
        t = time.monotonic()
        self.say("pods: the bootstrap Job, btcd and four lnd nodes with their exporters; the Job run to completion")
        self.net = self.cluster.net  # closed by the teardown, also if the bring-up fails
        await self.cluster.up()
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

