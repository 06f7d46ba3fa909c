"""Bring up, drive and tear down a regtest Lightning network.

Layout: one btcd (every node's backend, where blocks are mined) and a second, ``btcd-peer``,
that only relays blocks; a ``hub`` (the operator's node) and meters ``meter-1`` …
``meter-N``. Every meter opens a channel to the hub and pushes half of it, so
each side can pay and be paid; direct meter↔meter channels on request.

Made for a dozen nodes and more: the nodes start side by side, every wallet is funded by one
transaction in one block, every channel opened at once and confirmed by the same six
blocks, and every wait (sync, channel active, gossip) watches all nodes at once.

btcd can be SIGKILLed and started again (:meth:`RegtestNetwork.stop_btcd`,
:meth:`RegtestNetwork.start_btcd_again`): in regtest mode it starts with an empty chain and
fetches it back from ``btcd-peer``. Until it has the peer's tip again nothing is mined
(:meth:`RegtestNetwork.mine` waits for :meth:`RegtestNetwork.wait_btcd_synced`), so the main
chain is never forked by a btcd that has not caught up.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from p2pep.chain.btcd_rpc import BtcdRpcError
from p2pep.regtest.binaries import Binaries, find_binaries
from p2pep.regtest.btcd import RPC_PASS, RPC_USER, Btcd, BtcdInfo
from p2pep.regtest.errors import ProcessFailed, RegtestError
from p2pep.regtest.faucet import Faucet
from p2pep.regtest.lnd_node import HUB, LndInfo, LndNode
from p2pep.regtest.ports import free_port
from p2pep.regtest.process import pid_alive
from p2pep.regtest.run_dir import default_run_dir, load_state, save_state
from p2pep.regtest.waiting import timeout_scale, wait_for

RPC_INTERNAL = -32603  # btcd's getblockheader of a block it knows outside its best chain
PEER = "btcd-peer"  # the second btcd: relays blocks, keeps the chain while btcd restarts
SEGWIT_HEIGHT = 432  # 3 BIP9 windows of 144 blocks on regtest
MIN_START_HEIGHT = 450


@dataclass
class NetworkSpec:
    meters: int = 3
    hub: bool = True
    fund_sat: int = 50_000_000
    channel_sat: int = 10_000_000
    push_sat: int = 5_000_000
    direct_channels: list[tuple[str, str]] = field(default_factory=list)
    utxos: int = 1  # funding outputs per node (all in one transaction, one block)
    # a second btcd, relaying blocks, a restarted btcd fetches its chain back from (stop_btcd);
    # off for a network whose chain is rewound by hand (invalidateblock): see start_btcd
    btcd_peer: bool = True


class RegtestNetwork:
    def __init__(self, run_dir: Path | None = None, binaries: Binaries | None = None) -> None:
        self.run_dir = Path(run_dir or default_run_dir())
        self.bins = binaries or find_binaries()
        self.faucet = Faucet.from_seed(str(self.run_dir))
        self.btcd: Btcd | None = None
        self.btcd_peer: Btcd | None = None  # relays blocks only: the chain a restarted btcd fetches back
        self.btcd_stopped = False  # stopped on purpose (stop_btcd): mining waits for it; else a dead btcd fails
        self.nodes: dict[str, LndNode] = {}

    # --- persistence --------------------------------------------------------------
    def save(self) -> None:
        assert self.btcd is not None
        save_state(
            self.run_dir,
            {
                "bin_dir": str(self.bins.dir),
                "faucet": {"secret": self.faucet.secret_hex, "address": self.faucet.address},
                "btcd": asdict(self.btcd.info),
                "btcd_peer": asdict(self.btcd_peer.info) if self.btcd_peer is not None else None,
                "nodes": [n.info.to_dict() for n in self.nodes.values()],
            },
        )

    @classmethod
    def attach(cls, run_dir: Path | None = None) -> RegtestNetwork:
        """Attach to a network another process brought up (its processes keep running)."""
        rd = Path(run_dir or default_run_dir())
        st = load_state(rd)
        if st is None:
            raise RegtestError(f"no regtest network at {rd}: run `p2pep regtest up`")
        net = cls(rd, Binaries(Path(st["bin_dir"])))
        net.faucet = Faucet(st["faucet"]["secret"])
        peer = st.get("btcd_peer")  # None: a network brought up before btcd had a peer
        if peer:
            net.btcd_peer = Btcd(net.bins.btcd, BtcdInfo(**peer), None, name=PEER)
        net.btcd = Btcd(net.bins.btcd, BtcdInfo(**st["btcd"]), net.faucet.address, net._peers())
        for n in st["nodes"]:
            info = LndInfo(**n)
            net.nodes[info.name] = LndNode(net.bins.lnd, info, net.btcd.info)
        return net

    def is_running(self) -> bool:
        return any(b is not None and pid_alive(b.info.pid) for b in (self.btcd, self.btcd_peer))

    def _peers(self) -> tuple[str, ...]:
        return (f"127.0.0.1:{self.btcd_peer.info.p2p_port}",) if self.btcd_peer is not None else ()

    # --- bring up -------------------------------------------------------------------
    async def start_btcd(self, peer: bool = True) -> Btcd:
        """The relay peer (unless ``peer`` is False), then the main btcd dialling it; the chain
        mined to segwit. Without the peer a btcd stopped cannot be started again with its chain;
        with it, ``invalidateblock`` on the main btcd leaves the peer on the old branch (btcd
        then puts the disconnected transactions back in its mempool and keeps them there even
        once they are mined again), so the reorg tests run without it."""
        if peer:
            pd = self.run_dir / PEER
            pd.mkdir(parents=True, exist_ok=True)
            self.btcd_peer = Btcd(self.bins.btcd, BtcdInfo(rpc_port=free_port(), p2p_port=free_port(), dir=str(pd)),
                                  None, name=PEER)
            await self.btcd_peer.start()
        d = self.run_dir / "btcd"
        d.mkdir(parents=True, exist_ok=True)
        info = BtcdInfo(rpc_port=free_port(), p2p_port=free_port(), dir=str(d))
        self.btcd = Btcd(self.bins.btcd, info, self.faucet.address, self._peers())
        await self.btcd.start()
        height = await self.btcd.height()
        if height < MIN_START_HEIGHT:
            await self.btcd.mine(MIN_START_HEIGHT - height)
        if not await self.btcd.segwit_active():
            raise ProcessFailed("btcd", f"segwit not active at height {MIN_START_HEIGHT}", self.btcd.proc.log)
        self.save()
        await self.wait_btcd_synced()
        return self.btcd

    async def wait_btcd_synced(self, timeout: float = 60) -> int:
        """Wait until the main btcd runs and knows the relay peer's best block: has it in its
        best chain (caught up, or ahead), or knows it outside (``invalidateblock``: it chose
        another chain the peer will follow once it is longer). A btcd restarted with an empty
        chain does not know it until it has fetched it. Returns btcd's height. Without a
        peer: until btcd answers. A btcd not running that was not stopped on purpose
        (:meth:`stop_btcd`) fails at once."""
        btcd, peer = self.btcd, self.btcd_peer
        assert btcd is not None

        def crashed() -> bool:
            return not btcd.proc.alive() and not self.btcd_stopped

        async def synced() -> int:
            if not btcd.proc.alive():
                return 0
            height, best = await btcd.tip()
            if peer is None or best == (peer_best := (await peer.tip())[1]):
                return height
            try:
                await btcd.rpc.call("getblockheader", peer_best, True)
            except BtcdRpcError as exc:
                if exc.code != RPC_INTERNAL or "main chain" not in exc.message:
                    return 0  # not known (yet): still catching up
            # read again: a btcd fetching the chain may have connected many blocks since ``tip``
            return await btcd.height()

        if crashed():
            raise ProcessFailed("btcd", "not running", btcd.proc.log)
        try:
            return await wait_for(synced, timeout, interval=0.1, what=f"btcd to know {PEER}'s best block")
        except TimeoutError:
            if crashed():
                raise ProcessFailed("btcd", "not running", btcd.proc.log) from None
            raise

    async def stop_btcd(self, kill: bool = True) -> None:
        """SIGKILL (or, ``kill`` False, SIGTERM) the main btcd on purpose; the relay peer keeps
        the chain. Mining waits until :meth:`start_btcd_again` has brought it back."""
        assert self.btcd is not None
        self.btcd_stopped = True
        if kill:
            await self.btcd.kill()
        else:
            await self.btcd.close()
            await asyncio.to_thread(self.btcd.stop)

    async def start_btcd_again(self, timeout: float = 60) -> dict[str, float | int]:
        """Start the main btcd on its dir and ports again (after a stop or a SIGKILL), wait
        until it has the peer's chain back, then mine a block and wait until every running lnd
        node has it: lnd's GetInfo answers from what it saw last while its btcd connection is
        down (lnd dials btcd again after 5 s, then 10 s, ...), so only a new block shows it is
        back. Returns the heights and how long each step took (seconds after the start)."""
        assert self.btcd is not None
        if self.btcd_peer is None:
            raise RegtestError("btcd has no relay peer (network brought up before there was one): "
                               "a restarted regtest btcd would have no chain")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await self.btcd.start(timeout)
        self.btcd_stopped = False
        self.save()
        t_rpc = loop.time()
        height = await self.wait_btcd_synced(timeout)
        t_chain = loop.time()
        blocks = await self.mine_until_nodes_follow(timeout)
        return {"height": height, "rpc_s": round(t_rpc - t0, 2), "chain_s": round(t_chain - t0, 2),
                "lnd_s": round(loop.time() - t0, 2), "blocks": blocks}

    async def mine_until_nodes_follow(self, timeout: float = 60, step: float = 5) -> int:
        """Mine a block at a time until every running lnd node has the new tip within ``step``
        seconds; returns the blocks mined. After a btcd restart: an lnd whose btcd connection
        comes back just as a block is connected can miss that block's notification until the
        next one (seen on lnd 0.21: its notifier stays a block behind, its wallet does not)."""
        assert self.btcd is not None
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout * timeout_scale()
        mined = 0
        while True:
            await self.wait_btcd_synced(timeout)
            await self.btcd.mine(1)
            mined += 1
            try:
                await self.wait_nodes_synced(await self.btcd.height(), step)
                return mined
            except TimeoutError:
                if loop.time() >= end:
                    raise

    def _new_node(self, name: str) -> LndNode:
        if name in self.nodes:
            raise RegtestError(f"node {name} exists already")
        assert self.btcd is not None
        d = self.run_dir / name
        d.mkdir(parents=True, exist_ok=True)
        info = LndInfo(name=name, dir=str(d), rpc_port=free_port(), rest_port=free_port(),
                       p2p_port=free_port(), metrics_port=free_port())
        node = LndNode(self.bins.lnd, info, self.btcd.info)
        self.nodes[name] = node
        return node

    async def add_nodes(self, names: list[str], fund_sat: int = 0, utxos: int = 1) -> list[LndNode]:
        """Start lnd nodes side by side, wait until synced, fund each with ``utxos`` outputs
        (one transaction, one block mined)."""
        assert self.btcd is not None
        nodes = [self._new_node(n) for n in names]
        try:
            for n in nodes:
                n.start_process()
            await asyncio.gather(*(n.wait_ready(btcd_proc=self.btcd.proc) for n in nodes))
            await asyncio.gather(*(n.bake_service_macaroons() for n in nodes))
        finally:
            self.save()
        if fund_sat:
            await self.fund(nodes, fund_sat, utxos)
        return nodes

    async def bake_service_macaroons(self) -> None:
        """Each running node's service macaroons, baked again (for a network brought up
        before they existed, or whose table changed since; see :mod:`p2pep.lnd.macaroons`)."""
        await asyncio.gather(*(n.bake_service_macaroons() for n in self.nodes.values() if n.proc.alive()))

    async def fund(self, nodes: list[LndNode], sats: int, utxos: int = 1) -> None:
        """Send each node ``utxos`` outputs of ``sats`` in one transaction, confirmed in one block."""
        assert self.btcd is not None
        before = dict(zip((n.name for n in nodes), await asyncio.gather(
            *(n.client.wallet_balance() for n in nodes))))
        addresses = await asyncio.gather(*(n.client.new_address() for n in nodes for _ in range(utxos)))
        await self.faucet.send_many(self.btcd, dict.fromkeys(addresses, sats))
        await self.mine(1)

        async def funded(n: LndNode) -> None:
            async def enough() -> bool:
                return (await n.client.wallet_balance()).confirmed_balance >= \
                    before[n.name].confirmed_balance + utxos * sats
            await wait_for(enough, 60, what=f"{n.name} wallet funded")

        await asyncio.gather(*(funded(n) for n in nodes))

    async def mine(self, n: int, timeout: float = 60) -> list[str]:
        """Mine and wait until every lnd node has seen the new tip (all nodes watched at once).
        Mines only on a btcd that has its peer's chain (one just restarted has not, at first):
        waits for that first, up to ``timeout``."""
        assert self.btcd is not None
        await self.wait_btcd_synced(timeout)
        hashes = await self.btcd.mine(n)
        await self.wait_nodes_synced(await self.btcd.height(), timeout)
        return hashes

    async def wait_nodes_synced(self, tip: int, timeout: float = 60) -> None:
        """Wait until every running lnd node is synced to the chain at height ``tip`` or above."""
        async def synced(node: LndNode) -> None:
            async def at_tip() -> bool:
                info = await node.client.get_info()
                return info.block_height >= tip and info.synced_to_chain
            await wait_for(at_tip, timeout, what=f"{node.name} synced to height {tip}")

        await asyncio.gather(*(synced(node) for node in self.nodes.values() if node.proc.alive()))

    async def connect(self, a: LndNode, b: LndNode) -> None:
        await a.client.connect(b.info.pubkey, b.info.p2p_host)

    async def open_channels(
        self, pairs: list[tuple[str, str]], local_sat: int, push_sat: int, private: bool = False
    ) -> list[str]:
        """Open channels a→b (pushing ``push_sat`` to b), confirm them, wait until active and announced."""
        assert self.btcd is not None
        await asyncio.gather(*(self.connect(self.nodes[a], self.nodes[b]) for a, b in pairs))
        points = await asyncio.gather(
            *(self.nodes[a].client.open_channel(self.nodes[b].info.pubkey, local_sat, push_sat, private)
              for a, b in pairs)
        )
        txids = {p.split(":")[0] for p in points}

        async def in_mempool() -> bool:
            return txids <= set(await self.btcd.call("getrawmempool"))  # type: ignore[union-attr]

        await wait_for(in_mempool, 30, what="funding transactions in btcd's mempool")
        await self.mine(6)  # 1 conf to be usable, 6 to be announced
        await asyncio.gather(*(self.wait_channel_active(x, point)
                               for (a, b), point in zip(pairs, points) for x in (a, b)))
        if not private:
            await self.wait_graph()
        return list(points)

    async def wait_channel_active(self, name: str, channel_point: str, timeout: float = 60) -> None:
        node = self.nodes[name]

        async def active() -> bool:
            return any(c.channel_point == channel_point and c.active for c in await node.client.list_channels())

        await wait_for(active, timeout, what=f"channel {channel_point} active at {name}")

    async def public_channel_count(self) -> int:
        alive = [n for n in self.nodes.values() if n.proc.alive()]
        seen: set[int] = set()
        for channels in await asyncio.gather(*(n.client.list_channels() for n in alive)):
            seen |= {c.chan_id for c in channels if not c.private}
        return len(seen)

    async def wait_graph(self, timeout: float = 90) -> None:
        """Wait until every node knows every public channel with both policies (so it can
        route); every node watched at once."""
        expected = await self.public_channel_count()

        async def learned(node: LndNode) -> None:
            async def knows_all() -> bool:
                g = await node.client.describe_graph()
                return sum(1 for e in g.edges if e.node1_policy.ListFields() and e.node2_policy.ListFields()) >= expected
            await wait_for(knows_all, timeout, interval=0.25, what=f"{node.name} to learn {expected} channels")

        await asyncio.gather(*(learned(node) for node in self.nodes.values()))

    @classmethod
    async def up(cls, spec: NetworkSpec | None = None, run_dir: Path | None = None) -> RegtestNetwork:
        spec = spec or NetworkSpec()
        net = cls(run_dir)
        if load_state(net.run_dir) is not None:
            old = cls.attach(net.run_dir)
            if old.is_running():
                raise RegtestError(f"a network is already running at {net.run_dir}: `p2pep regtest down` first")
            shutil.rmtree(net.run_dir)
        try:
            await net.start_btcd(spec.btcd_peer)
            names = ([HUB] if spec.hub else []) + [f"meter-{i}" for i in range(1, spec.meters + 1)]
            await net.add_nodes(names, spec.fund_sat, spec.utxos)
            pairs = [(f"meter-{i}", HUB) for i in range(1, spec.meters + 1)] if spec.hub else []
            pairs += list(spec.direct_channels)
            if pairs:
                await net.open_channels(pairs, spec.channel_sat, spec.push_sat)
            net.save()
        except BaseException:
            await net.down()
            raise
        return net

    async def restart(self, name: str, kill: bool = False) -> None:
        """Stop (SIGTERM, or SIGKILL with ``kill``) and start a node again on the same dir and ports."""
        node = self.nodes[name]
        await (node.kill() if kill else node.stop())
        assert self.btcd is not None
        await node.start(btcd_proc=self.btcd.proc)
        self.save()

    # --- status and teardown -------------------------------------------------------------
    async def status(self) -> dict[str, Any]:
        assert self.btcd is not None
        out: dict[str, Any] = {
            "run_dir": str(self.run_dir),
            "binaries": {"lncli": str(self.bins.dir / "lncli"), "btcctl": str(self.bins.dir / "btcctl"),
                         "lnd": str(self.bins.dir / "lnd"), "btcd": str(self.bins.dir / "btcd")},
            "btcd": {"rpchost": self.btcd.info.rpchost, "rpcuser": RPC_USER, "rpcpass": RPC_PASS,
                     "rpccert": self.btcd.info.cert, "running": self.btcd.proc.alive(),
                     "height": await self.btcd.height() if self.btcd.proc.alive() else None,
                     "log": self.btcd.info.log},
            "btcd_peer": None if (p := self.btcd_peer) is None else {
                "rpchost": p.info.rpchost, "p2p": f"127.0.0.1:{p.info.p2p_port}", "rpccert": p.info.cert,
                "running": p.proc.alive(), "height": await p.height() if p.proc.alive() else None,
                "log": p.info.log},
            "nodes": [],
        }
        for n in self.nodes.values():
            entry: dict[str, Any] = {
                "name": n.name, "pubkey": n.info.pubkey, "rpcserver": n.info.rpcserver,
                "p2p": n.info.p2p_host, "tlscertpath": n.info.tls_cert, "macaroonpath": n.info.macaroon(),
                "service_macaroons": {s: n.info.service_macaroon(s) for s in n.info.services},
                "lnddir": n.info.dir, "running": n.proc.alive(), "log": n.info.log,
                "metrics": f"http://127.0.0.1:{n.info.metrics_port}/metrics",
            }
            if n.proc.alive():
                try:
                    wb = await n.client.wallet_balance()
                    cb = await n.client.channel_balance()
                    entry["wallet_sat"] = {"confirmed": wb.confirmed_balance, "unconfirmed": wb.unconfirmed_balance}
                    entry["channel_balance_sat"] = {"local": cb.local_balance.sat, "remote": cb.remote_balance.sat}
                    entry["channels"] = [
                        {"channel_point": c.channel_point, "peer": c.remote_pubkey, "capacity": c.capacity,
                         "local": c.local_balance, "remote": c.remote_balance, "active": c.active,
                         "private": c.private}
                        for c in await n.client.list_channels()
                    ]
                except Exception as exc:  # noqa: BLE001 - status shows what it can
                    entry["error"] = str(exc)
            out["nodes"].append(entry)
        return out

    async def close(self) -> None:
        """Drop RPC connections (processes keep running)."""
        for n in self.nodes.values():
            await n._drop_client()
        for b in (self.btcd, self.btcd_peer):
            if b is not None:
                await b.close()

    async def down(self, purge: bool = False) -> None:
        """Stop every lnd (SIGTERM, SIGKILL after a grace period), then btcd and its peer."""
        await asyncio.gather(*(n.stop() for n in self.nodes.values()))
        for b in (self.btcd, self.btcd_peer):
            if b is not None:
                await b.close()
                await asyncio.to_thread(b.stop)
        if purge:
            shutil.rmtree(self.run_dir, ignore_errors=True)
