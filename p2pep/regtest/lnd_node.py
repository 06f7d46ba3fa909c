"""One lnd process on regtest with the btcd backend: own dir, ports, wallet."""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from pathlib import Path

from p2pep.lnd.client import LndClient, LndConnection, LndError
from p2pep.lnd.macaroons import (
    HOUSEHOLD_NODE_SERVICES,
    OPERATOR_NODE_SERVICES,
    bake_for,
    macaroon_filename,
    write_private,
)
from p2pep.regtest.btcd import RPC_PASS, RPC_USER, BtcdInfo
from p2pep.regtest.errors import ProcessFailed
from p2pep.regtest.ports import ensure_free
from p2pep.regtest.process import Proc
from p2pep.regtest.waiting import timeout_scale

# Forwarding policy of every node (only the hub forwards): see p2pep.scenario.drain.
FORWARD_BASE_FEE_MSAT = 0
FORWARD_FEE_PPM = 1000
HUB = "hub"  # the operator's node; every other node is a household's


HOP_HALFLIFE = "15s"  # lnd's mission-control recovery half-life (see the argument below; k8s/ too)


@dataclass
class LndInfo:
    name: str
    dir: str
    rpc_port: int
    rest_port: int
    p2p_port: int
    metrics_port: int
    pid: int | None = None
    pubkey: str = ""

    @property
    def rpcserver(self) -> str:
        return f"127.0.0.1:{self.rpc_port}"

    @property
    def p2p_host(self) -> str:
        return f"127.0.0.1:{self.p2p_port}"

    @property
    def tls_cert(self) -> str:
        return str(Path(self.dir) / "tls.cert")

    @property
    def macaroon_dir(self) -> Path:
        return Path(self.dir) / "data" / "chain" / "bitcoin" / "regtest"

    def macaroon(self, kind: str = "admin") -> str:
        """One of lnd's own macaroons (admin: the operator's tooling only)."""
        return str(self.macaroon_dir / f"{kind}.macaroon")

    @property
    def services(self) -> tuple[str, ...]:
        """The P2PEP services that use this node: the anchor on the operator's hub, the
        meter on every other (a household's) node (:mod:`p2pep.lnd.macaroons`)."""
        return OPERATOR_NODE_SERVICES if self.name == HUB else HOUSEHOLD_NODE_SERVICES

    def service_macaroon(self, service: str) -> str:
        """The macaroon baked for ``service`` on this node (:meth:`LndNode.bake_service_macaroons`)."""
        if service not in self.services:
            raise ValueError(f"{service} holds no macaroon of node {self.name} (only {', '.join(self.services)})")
        return str(self.macaroon_dir / macaroon_filename(service))

    @property
    def log(self) -> str:
        return str(Path(self.dir) / "lnd.out")

    def connection(self, macaroon: str = "admin") -> LndConnection:
        return LndConnection(self.name, self.rpcserver, self.tls_cert, self.macaroon(macaroon))

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class LndNode:
    def __init__(self, binary: Path, info: LndInfo, btcd: BtcdInfo) -> None:
        self.info = info
        self.btcd = btcd
        d = Path(info.dir)
        self.proc = Proc(
            info.name,
            [
                str(binary),
                f"--lnddir={d}",
                "--noseedbackup",
                "--bitcoin.regtest",
                "--bitcoin.node=btcd",
                f"--btcd.rpchost={btcd.rpchost}",
                f"--btcd.rpcuser={RPC_USER}",
                f"--btcd.rpcpass={RPC_PASS}",
                f"--btcd.rpccert={btcd.cert}",
                f"--rpclisten={info.rpcserver}",
                f"--restlisten=127.0.0.1:{info.rest_port}",
                f"--listen={info.p2p_host}",
                f"--alias={info.name}",
                "--debuglevel=info",
                "--trickledelay=50",
                "--accept-keysend",
                "--maxpendingchannels=20",
                "--db.batch-commit-interval=10ms",
                "--bitcoin.defaultchanconfs=1",
                # A contract's last, partial increment can be worth less than 1 sat (3 Wh at
                # 250 sat/kWh is 750 msat): channels must carry HTLCs down to 1 msat, where
                # lnd's default for the HTLCs a node sends and forwards is 1,000 msat.
                "--bitcoin.minhtlc=1",
                "--bitcoin.minhtlcout=1",
                # The hub's forwarding fee: lnd's default 1 sat base fee would be a third of a
                # 3-sat increment; an operator charges in proportion (0.1%), nothing per payment.
                f"--bitcoin.basefee={FORWARD_BASE_FEE_MSAT}",
                f"--bitcoin.feerate={FORWARD_FEE_PPM}",
                "--protocol.wumbo-channels",
                # Mission control: after a failure lnd avoids that hop pair, recovering with this
                # half-life (default 1 h). A household pays every supplier over the one hub, so a
                # hub or node back from a restart must be tried again within seconds, not hours.
                f"--routerrpc.apriori.penaltyhalflife={HOP_HALFLIFE}",
                "--prometheus.enable",
                f"--prometheus.listen=127.0.0.1:{info.metrics_port}",
                "--tlsextradomain=localhost",
                "--nobootstrap",
            ],
            Path(info.log),
            pid=info.pid,
        )
        self._client: LndClient | None = None

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def client(self) -> LndClient:
        if self._client is None:
            self._client = LndClient(self.info.connection())
        return self._client

    async def _drop_client(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def start_process(self) -> None:
        for what, port in (("rpc", self.info.rpc_port), ("rest", self.info.rest_port),
                           ("p2p", self.info.p2p_port), ("metrics", self.info.metrics_port)):
            ensure_free(f"lnd {self.name} {what}", port)
        self.proc.start()
        self.info.pid = self.proc.pid

    async def wait_ready(self, timeout: float = 60.0, btcd_proc: Proc | None = None) -> None:
        """Wait for the TLS cert and macaroon, an active RPC server, and a chain-synced wallet."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout * timeout_scale()
        last = "not started"
        while loop.time() < end:
            self.proc.check()
            if btcd_proc is not None and not btcd_proc.alive():
                raise ProcessFailed("btcd", f"exited while {self.name} was starting", btcd_proc.log)
            admin = Path(self.info.macaroon())
            if Path(self.info.tls_cert).exists() and admin.exists() and admin.stat().st_size > 0:
                try:
                    state = await self.client.get_state()
                    if state == "SERVER_ACTIVE":
                        info = await self.client.get_info()
                        self.info.pubkey = info.identity_pubkey
                        if info.synced_to_chain:
                            return
                        last = f"syncing (height {info.block_height})"
                    else:
                        last = f"state {state}"
                except LndError as exc:
                    last = str(exc)
                    # a client built while lnd was still writing its files holds a bad
                    # certificate or an empty macaroon: build it again from the files
                    if "connection" in last.lower() or "UNAVAILABLE" in last or "macaroon" in last:
                        await self._drop_client()
            await asyncio.sleep(0.2)
        raise ProcessFailed(self.name, f"not ready after {timeout * timeout_scale():.0f}s ({last})", self.proc.log)

    async def start(self, timeout: float = 60.0, btcd_proc: Proc | None = None) -> None:
        self.start_process()
        await self.wait_ready(timeout, btcd_proc)

    async def bake_service_macaroons(self) -> dict[str, str]:
        """Bake (again) the macaroon of each service using this node, with the admin
        macaroon, and write each 0600 beside lnd's own; returns service -> path. Baking
        again is harmless: macaroons baked earlier under the same root key stay valid."""
        out: dict[str, str] = {}
        for service in self.info.services:
            path = self.info.service_macaroon(service)
            write_private(Path(path), await bake_for(self.client, service))
            out[service] = path
        return out

    async def stop(self) -> None:
        await self._drop_client()
        await asyncio.to_thread(self.proc.stop, 15)

    async def kill(self) -> None:
        await self._drop_client()
        self.proc.kill()
