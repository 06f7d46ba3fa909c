"""The regtest overlay's bootstrap: one implementation, two places it runs.

The steps (:class:`Bootstrap`) are what ``p2pep up`` does for processes, done for lnd and btcd
running as the cluster's workloads:

1. :meth:`Bootstrap.chain`: wait for btcd's RPC, mine past segwit (to the faucet's address:
   btcd's ``--miningaddr`` is ConfigMap ``p2pep-btcd-miner``);
2. :meth:`Bootstrap.add_node`: wait for the node's ``tls.cert`` and ``admin.macaroon``, put them
   in a work folder laid out as lnd's ``--lnddir``, wait until lnd is active and synced, and
   bake each service's own macaroon there (:mod:`p2pep.lnd.macaroons`: the same permission
   lists as every other run);
3. :meth:`Bootstrap.fund_and_open`: fund every wallet never funded from the faucet, open each
   meter's channel to the hub where there is none (open or pending), confirm them;
4. :meth:`Bootstrap.publish`: ConfigMap ``p2pep-hub`` (the hub's ``pubkey@lnd-hub:9735``),
   then Secrets ``p2pep-lnd-anchor`` and ``p2pep-lnd-meter-N``
   (:func:`p2pep.k8s.cli.lnd_secret_files`, what ``p2pep k8s secrets`` prints).

Where a node's admin files come from (:class:`AdminFiles`) and where Secrets and ConfigMaps
go (:class:`Publisher`) are interfaces; the Job (:func:`run_in_cluster`, ``p2pep k8s
bootstrap``) gives both a :class:`p2pep.k8s.store.Store`: it reads Secrets
``p2pep-lnd-admin-<node>`` (written by each lnd pod's exporter sidecar,
:mod:`p2pep.k8s.exporter`) and writes its own, through the Kubernetes API
(:mod:`p2pep.k8s.kubeapi`) in a cluster, or through a folder (:class:`p2pep.k8s.store.FolderStore`)
in the pod-level run under podman (:mod:`p2pep.k8s.pods` plays this Job's own pod,
translated by :mod:`p2pep.k8s.podman`). The harness of that run only attaches (:meth:`Bootstrap.attach`)
to the nodes afterwards (its miner and collection need them); it bootstraps nothing.

Invariants:

* Idempotent: :func:`plan` decides from the nodes' own state (wallet balance, channels with
  the hub) what is left to do, so a Job run again (or restarted half-way) funds no wallet
  twice and opens no second channel; the Secrets and ConfigMaps are replaced every run
  (macaroons baked again stay valid beside the earlier ones).
* ``p2pep-hub`` is written before the meters' Secrets: a meter pod starts only once its
  Secret mounts, and then finds the hub's address (its ``envFrom`` is optional).
* Amounts are integers of satoshis.
* The admin macaroon stays in the work folder of the tooling (an emptyDir in the Job); no
  Secret this module writes holds it.
"""

from __future__ import annotations

import asyncio
import secrets as token
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
import structlog

from p2pep.chain.btcd_rpc import BtcdRpc, BtcdRpcConfig, BtcdRpcError
from p2pep.k8s import (
    BTCD_RPC_PORT,
    FAUCET_SECRET,
    HUB_CONFIGMAP,
    HUB_NODE,
    HUB_VARIABLE,
    LND_P2P_PORT,
    LND_RPC_PORT,
    MACAROON_SUBDIR,
    MINER_CONFIGMAP,
    admin_secret,
    lnd_secrets,
    lnd_workload,
)
from p2pep.k8s.cli import lnd_secret_files
from p2pep.k8s.exporter import ADMIN_MACAROON, TLS_CERT
from p2pep.k8s.settings import BootstrapSettings
from p2pep.lnd.client import LndClient, LndConnection, LndError
from p2pep.lnd.macaroons import write_private
from p2pep.regtest.binaries import Binaries
from p2pep.regtest.btcd import Btcd, BtcdInfo
from p2pep.regtest.errors import RegtestError
from p2pep.regtest.faucet import Faucet
from p2pep.regtest.lnd_node import LndInfo, LndNode
from p2pep.regtest.network import MIN_START_HEIGHT, RegtestNetwork
from p2pep.regtest.waiting import wait_for

log = structlog.get_logger(__name__)


class BootstrapError(RegtestError):
    """A step could not be done (btcd or a node never answered, segwit not active...)."""


class AdminFiles(Protocol):
    """Where a node's ``tls.cert`` and ``admin.macaroon`` come from (None: not there yet)."""

    async def read(self, node: str) -> dict[str, bytes] | None: ...


class Publisher(Protocol):
    """Where the bootstrap's Secrets and ConfigMaps go (each written whole, replaced if present)."""

    async def secret(self, name: str, files: Mapping[str, bytes]) -> None: ...

    async def configmap(self, name: str, data: Mapping[str, str]) -> None: ...


class KubeStore(Protocol):
    """The store calls the Job makes (:class:`p2pep.k8s.store.Store`: the Kubernetes API or a folder)."""

    async def get_secret(self, name: str) -> dict[str, bytes] | None: ...

    async def put_secret(self, name: str, files: Mapping[str, bytes]) -> str: ...

    async def put_configmap(self, name: str, data: Mapping[str, str]) -> str: ...


# --- btcd and lnd as workloads: RegtestNetwork's steps at their cluster addresses ----------------
@dataclass
class ClusterLndInfo(LndInfo):
    pod: str = ""  # lnd-hub, lnd-meter-1: its Service's name, in its certificate (--tlsextradomain)
    address: str = ""  # what the tooling dials: the pod's address (podman) or the Service's name (cluster)

    @property
    def rpcserver(self) -> str:
        return f"{self.address}:{LND_RPC_PORT}"

    @property
    def p2p_host(self) -> str:  # what other nodes connect to
        return f"{self.pod}:{LND_P2P_PORT}"


class _MacaroonAuth(grpc.AuthMetadataPlugin):
    def __init__(self, macaroon_hex: str) -> None:
        self.macaroon_hex = macaroon_hex

    def __call__(self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback) -> None:
        callback((("macaroon", self.macaroon_hex),), None)


class ClusterLndNode(LndNode):
    """An lnd the cluster runs (nothing to start), dialled as its certificate names it."""

    info: ClusterLndInfo

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


class ClusterBtcd(Btcd):
    """btcd's RPC at ``rpchost`` (nothing to start: the cluster runs it)."""

    def __init__(self, info: BtcdInfo, rpchost: str, user: str, password: str, mining_addr: str) -> None:
        super().__init__(Path("btcd"), info, mining_addr)
        self.rpc = BtcdRpc(BtcdRpcConfig(rpchost, user, password, info.cert))

    async def call(self, method: str, *params: Any) -> Any:
        return await self.rpc.call(method, *params)


class ClusterNetwork(RegtestNetwork):
    """btcd and the lnd nodes of the cluster (their files in ``work_dir`` as ``p2pep up``'s)."""

    def __init__(self, work_dir: Path, faucet: Faucet) -> None:
        self.run_dir = work_dir
        self.bins = Binaries(Path("/nonexistent"))
        self.faucet = faucet
        self.btcd: Btcd | None = None
        self.btcd_peer: Btcd | None = None  # one btcd (no relay peer, never restarted by the tooling)
        self.nodes: dict[str, LndNode] = {}

    def save(self) -> None:
        pass  # nothing to attach to later: the workloads are the cluster's

    async def mine(self, n: int, timeout: float = 60) -> list[str]:
        assert self.btcd is not None
        hashes = await self.btcd.mine(n)
        tip = await self.btcd.height()
        for node in self.nodes.values():
            async def synced(node: LndNode = node) -> bool:
                info = await node.client.get_info()
                return info.block_height >= tip and info.synced_to_chain
            await wait_for(synced, timeout, what=f"{node.name} synced to height {tip}")
        return hashes

    async def public_channel_count(self) -> int:
        seen: set[int] = set()
        for n in self.nodes.values():
            seen |= {c.chan_id for c in await n.client.list_channels() if not c.private}
        return len(seen)

    async def down(self, purge: bool = False) -> None:
        await self.close()


# --- what is left to do: from the nodes' state alone (pure) ----------------------------------------
@dataclass(frozen=True)
class NodeState:
    """What a node's own RPCs say (:func:`node_state`)."""

    name: str
    wallet_sat: int  # confirmed + unconfirmed on-chain balance
    active_peers: frozenset[str] = frozenset()  # pubkeys it has an open channel with
    pending_peers: frozenset[str] = frozenset()  # pubkeys it has a channel opening with


@dataclass(frozen=True)
class Plan:
    fund: list[str] = field(default_factory=list)  # wallets never funded
    open: list[str] = field(default_factory=list)  # meters without a channel to the hub
    confirm: list[str] = field(default_factory=list)  # meters whose channel to the hub is still opening

    @property
    def done(self) -> bool:
        return not (self.fund or self.open or self.confirm)


def plan(states: Mapping[str, NodeState], hub: str, hub_pubkey: str) -> Plan:
    """What is left: a wallet is funded when it has never been (no coins and no channel: coins
    locked in a channel count as funded); a meter opens its channel to the hub when it has none,
    open or pending; a pending one is confirmed (mined on), never opened twice."""
    fund, open_, confirm = [], [], []
    for name, s in sorted(states.items()):
        channels = s.active_peers | s.pending_peers
        if s.wallet_sat == 0 and not channels:
            fund.append(name)
        if name == hub:
            continue
        if hub_pubkey in s.active_peers:
            continue
        if hub_pubkey in s.pending_peers:
            confirm.append(name)
        else:
            open_.append(name)
    return Plan(fund, open_, confirm)


async def node_state(node: LndNode) -> NodeState:
    c = node.client
    bal, channels, pending = await asyncio.gather(c.wallet_balance(), c.list_channels(), c.pending_channels())
    return NodeState(node.name, int(bal.confirmed_balance) + int(bal.unconfirmed_balance),
                     frozenset(ch.remote_pubkey for ch in channels),
                     frozenset(p.channel.remote_node_pub for p in pending.pending_open_channels))


# --- the steps ---------------------------------------------------------------------------------------
class Bootstrap:
    """The bootstrap steps on ``net`` (see the module docstring); ``work_dir/<node>`` holds each
    node's files as lnd's ``--lnddir`` lays them out."""

    def __init__(self, work_dir: Path, net: ClusterNetwork, admin: AdminFiles, out: Publisher,
                 hub: str = HUB_NODE) -> None:
        self.work_dir = work_dir
        self.net = net
        self.admin = admin
        self.out = out
        self.hub = hub

    async def chain(self, btcd: ClusterBtcd, timeout: float = 120) -> None:
        """btcd answers, and the chain is past segwit's activation (mined to the faucet)."""
        self.net.btcd = btcd

        async def answers() -> bool:
            try:
                await btcd.call("getblockcount")
                return True
            except (BtcdRpcError, OSError):
                return False
        await wait_for(answers, timeout, interval=1.0, what="btcd's RPC")
        height = await btcd.height()
        if height < MIN_START_HEIGHT:
            await btcd.mine(MIN_START_HEIGHT - height)
        if not await btcd.segwit_active():
            raise BootstrapError(f"segwit not active at height {MIN_START_HEIGHT}")
        log.info("chain ready", height=max(height, MIN_START_HEIGHT))

    async def add_node(self, node: str, address: str, timeout: float = 120) -> ClusterLndNode:
        """:meth:`attach`, then its services' macaroons baked beside its admin files."""
        lnd = await self.attach(node, address, timeout)
        await lnd.bake_service_macaroons()
        log.info("node ready", node=node, pubkey=lnd.info.pubkey)
        return lnd

    async def attach(self, node: str, address: str, timeout: float = 120) -> ClusterLndNode:
        """The node's admin files into ``work_dir/<node>``, lnd active and synced (its pubkey
        known), and the node in ``net.nodes``; nothing written to it."""
        d = self.work_dir / node
        mac_dir = d / MACAROON_SUBDIR
        mac_dir.mkdir(parents=True, exist_ok=True)
        pod = lnd_workload(node)

        async def files() -> bool:
            got = await self.admin.read(node)
            if got is None or not got.get(TLS_CERT) or not got.get(ADMIN_MACAROON):
                return False
            (d / TLS_CERT).write_bytes(got[TLS_CERT])
            write_private(mac_dir / ADMIN_MACAROON, got[ADMIN_MACAROON])
            return True
        await wait_for(files, timeout, interval=1.0, what=f"{pod}'s tls.cert and admin macaroon")
        info = ClusterLndInfo(name=node, dir=str(d), rpc_port=LND_RPC_PORT, rest_port=0, p2p_port=LND_P2P_PORT,
                              metrics_port=0, pod=pod, address=address)
        lnd = ClusterLndNode(Path("lnd"), info, BtcdInfo(BTCD_RPC_PORT, 0, str(self.work_dir / "btcd")))
        last = ""

        async def ready() -> bool:
            nonlocal last
            try:
                if await lnd.client.get_state() != "SERVER_ACTIVE":
                    return False
                got = await lnd.client.get_info()
                info.pubkey = got.identity_pubkey
                return bool(got.synced_to_chain)
            except LndError as exc:
                last = str(exc)
                return False
        try:
            await wait_for(ready, timeout, interval=0.5, what=f"{pod} active and synced")
        except Exception as exc:
            raise BootstrapError(f"{pod}: {exc} ({last})") from exc
        self.net.nodes[node] = lnd
        return lnd

    async def state(self) -> dict[str, NodeState]:
        names = list(self.net.nodes)
        got = await asyncio.gather(*(node_state(self.net.nodes[n]) for n in names))
        return dict(zip(names, got))

    async def fund_and_open(self, fund_sat: int, channel_sat: int, push_sat: int) -> Plan:
        """Fund the wallets and open the channels still missing (:func:`plan`); returns what was done."""
        net = self.net
        hub_pubkey = net.nodes[self.hub].info.pubkey
        todo = plan(await self.state(), self.hub, hub_pubkey)
        log.info("bootstrap plan", fund=todo.fund, open=todo.open, confirm=todo.confirm)
        if todo.fund:
            await net.fund([net.nodes[n] for n in todo.fund], fund_sat)
        if todo.open:
            await net.open_channels([(m, self.hub) for m in todo.open], channel_sat, push_sat)
        elif todo.confirm:
            await net.mine(6)  # 1 confirmation to be usable, 6 to be announced
        for m in todo.confirm:
            async def active(m: str = m) -> bool:
                return hub_pubkey in (await node_state(net.nodes[m])).active_peers
            await wait_for(active, 60, what=f"{m}'s channel to the hub active")
        if todo.confirm and not todo.open:
            await net.wait_graph()
        return todo

    async def publish(self, components: Sequence[str]) -> None:
        """ConfigMap ``p2pep-hub`` first, then each component's lnd Secret (for the nodes it has
        added: it reads no scenario, which the images do not ship)."""
        hub = self.net.nodes[self.hub].info
        await self.out.configmap(HUB_CONFIGMAP, {HUB_VARIABLE: f"{hub.pubkey}@{hub.p2p_host}"})
        wanted = lnd_secrets(list(components), [n for n in self.net.nodes if n != self.hub])
        for secret, (node, service) in wanted.items():
            await self.out.secret(secret, lnd_secret_files(self.work_dir / node, service))
        log.info("bootstrap published", configmap=HUB_CONFIGMAP, secrets=sorted(wanted))


# --- the Job: in the cluster, or its pod under podman -------------------------------------------------
class KubeAdminFiles:
    """A node's admin files from Secret ``p2pep-lnd-admin-<node>`` (its exporter sidecar's), in
    the store (the Kubernetes API, or the folder of the pod-level run)."""

    def __init__(self, api: KubeStore) -> None:
        self.api = api

    async def read(self, node: str) -> dict[str, bytes] | None:
        return await self.api.get_secret(admin_secret(node))


class KubePublisher:
    """Secrets and ConfigMaps into the store (the Kubernetes API, or a folder): create, or replace."""

    def __init__(self, api: KubeStore) -> None:
        self.api = api

    async def secret(self, name: str, files: Mapping[str, bytes]) -> None:
        outcome = await self.api.put_secret(name, files)
        log.info("secret written", secret=name, outcome=outcome)

    async def configmap(self, name: str, data: Mapping[str, str]) -> None:
        outcome = await self.api.put_configmap(name, data)
        log.info("configmap written", configmap=name, outcome=outcome)


async def faucet_of(api: KubeStore) -> Faucet:
    """The faucet of Secret ``p2pep-faucet`` (made once, kept across runs) and ConfigMap
    ``p2pep-btcd-miner`` naming its address (btcd waits for it to start)."""
    got = await api.get_secret(FAUCET_SECRET)
    if got and got.get("secret_hex"):
        faucet = Faucet(got["secret_hex"].decode().strip())
    else:
        faucet = Faucet(token.token_hex(32))
        await api.put_secret(FAUCET_SECRET, {"secret_hex": faucet.secret_hex.encode()})
        log.info("faucet made", secret=FAUCET_SECRET)
    await api.put_configmap(MINER_CONFIGMAP, {"mining_addr": faucet.address})
    return faucet


async def run_in_cluster(settings: BootstrapSettings, api: KubeStore) -> Plan:
    """The Job: every step, against the Services ``btcd`` and ``lnd-<node>`` (the pods of those
    names under podman), through ``api`` (:class:`p2pep.k8s.store.Store`)."""
    work = Path(settings.work_dir)
    (work / "btcd").mkdir(parents=True, exist_ok=True)
    btcd_dir = Path(settings.btcd_dir)
    (work / "btcd" / "rpc.cert").write_bytes((btcd_dir / "rpc.cert").read_bytes())
    user = (btcd_dir / "user").read_text().strip()
    password = (btcd_dir / "pass").read_text().strip()
    faucet = await faucet_of(api)
    net = ClusterNetwork(work, faucet)
    boot = Bootstrap(work, net, KubeAdminFiles(api), KubePublisher(api), settings.hub)
    try:
        info = BtcdInfo(rpc_port=BTCD_RPC_PORT, p2p_port=0, dir=str(work / "btcd"))
        await boot.chain(ClusterBtcd(info, settings.btcd_rpchost, user, password, faucet.address), settings.wait_s)
        nodes = [settings.hub, *settings.meter_nodes]
        await asyncio.gather(*(boot.add_node(n, lnd_workload(n), settings.wait_s) for n in nodes))
        done = await boot.fund_and_open(settings.fund_sat, settings.channel_sat, settings.push_sat)
        await boot.publish(["anchor", *settings.meter_nodes])
        return done
    finally:
        await net.close()


async def amain() -> int:
    from p2pep.k8s.kubeapi import KubeApiError
    from p2pep.k8s.settings import KubeApiSettings
    from p2pep.k8s.store import open_store
    from p2pep.servicekit.logs import configure_logging
    from p2pep.servicekit.settings import load_settings

    settings = load_settings(BootstrapSettings, "bootstrap")
    configure_logging(settings.log_level, json=settings.log_json, service="bootstrap")
    try:
        async with open_store(load_settings(KubeApiSettings, "bootstrap")) as store:
            done = await run_in_cluster(settings, store)
    except (KubeApiError, RegtestError, OSError) as exc:
        log.error("bootstrap failed", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return 1
    log.info("bootstrap done", funded=done.fund, opened=done.open, confirmed=done.confirm)
    return 0


def main() -> int:
    return asyncio.run(amain())


if __name__ == "__main__":
    raise SystemExit(main())
