"""btcd on regtest: its own data dir, TLS cert, loopback ports, mining to the faucet.

A network runs two: the main btcd (everything's RPC backend: lnd, the anchor, ``p2pep
verify``; the harness mines on it) and a peer that only relays blocks (``btcd-peer``). The
main one dials the peer (``--addpeer``), so a main btcd SIGKILLed and started again, which
in regtest mode deletes its block database (btcd's ``removeRegressionDB``), fetches the chain
back from the peer. Nothing mines on the peer: its chain is the main one's, never ahead.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pep.chain.btcd_rpc import BtcdRpc, BtcdRpcConfig, BtcdRpcError
from p2pep.regtest.errors import ProcessFailed
from p2pep.regtest.ports import ensure_free
from p2pep.regtest.process import Proc
from p2pep.regtest.waiting import timeout_scale

RPC_USER = "p2pep"
RPC_PASS = "p2pep-regtest"


@dataclass
class BtcdInfo:
    rpc_port: int
    p2p_port: int
    dir: str
    pid: int | None = None

    @property
    def rpchost(self) -> str:
        return f"127.0.0.1:{self.rpc_port}"

    @property
    def cert(self) -> str:
        return str(Path(self.dir) / "rpc.cert")

    @property
    def log(self) -> str:
        return str(Path(self.dir) / "btcd.out")

    def rpc_config(self) -> BtcdRpcConfig:
        return BtcdRpcConfig(self.rpchost, RPC_USER, RPC_PASS, self.cert)


class Btcd:
    def __init__(self, binary: Path, info: BtcdInfo, mining_addr: str | None, peers: tuple[str, ...] = (),
                 name: str = "btcd") -> None:
        """``mining_addr`` None: a relay-only peer (no mining, no tx relay, no index)."""
        self.info = info
        self.name = name
        d = Path(info.dir)
        if mining_addr is not None:
            role = [f"--miningaddr={mining_addr}", "--txindex", "--rpcmaxclients=200", "--rpcmaxwebsockets=200",
                    "--rpcmaxconcurrentreqs=200"]
        else:  # relays blocks only: the cost of a second node kept small
            role = ["--blocksonly", "--rpcmaxclients=10", "--rpcmaxwebsockets=5", "--nocfilters"]
        self.proc = Proc(
            name,
            [
                str(binary),
                "--regtest",
                f"--datadir={d / 'data'}",
                f"--logdir={d / 'logs'}",
                f"--rpccert={info.cert}",
                f"--rpckey={d / 'rpc.key'}",
                f"--rpcuser={RPC_USER}",
                f"--rpcpass={RPC_PASS}",
                f"--rpclisten={info.rpchost}",
                f"--listen=127.0.0.1:{info.p2p_port}",
                *role,
                *(f"--addpeer={p}" for p in peers),
                "--nobanning",
                "--debuglevel=info",
            ],
            Path(info.log),
            pid=info.pid,
        )
        self.rpc = BtcdRpc(info.rpc_config())

    async def start(self, timeout: float = 30.0) -> None:
        ensure_free(f"{self.name} rpc", self.info.rpc_port)
        ensure_free(f"{self.name} p2p", self.info.p2p_port)
        self.proc.start()
        self.info.pid = self.proc.pid
        await self.wait_rpc(timeout)

    async def wait_rpc(self, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout * timeout_scale()
        last = ""
        while loop.time() < end:
            self.proc.check()
            if Path(self.info.cert).exists():
                try:
                    await self.rpc.call("getblockcount")
                    return
                except BtcdRpcError as exc:
                    last = str(exc)
            await asyncio.sleep(0.1)
        raise ProcessFailed(self.name, f"RPC not answering after {timeout}s ({last})", self.proc.log)

    async def call(self, method: str, *params: Any) -> Any:
        try:
            return await self.rpc.call(method, *params)
        except BtcdRpcError as exc:
            if not self.proc.alive():
                raise ProcessFailed(self.name, f"not running ({exc.message})", self.proc.log) from exc
            raise

    async def mine(self, n: int) -> list[str]:
        """Mine ``n`` blocks (btcd's ``generate``), in chunks to keep RPCs short."""
        hashes: list[str] = []
        while len(hashes) < n:
            hashes += await self.call("generate", min(100, n - len(hashes)))
        return hashes

    async def height(self) -> int:
        return int(await self.call("getblockcount"))

    async def tip(self) -> tuple[int, str]:
        """(height, hash) of the best block."""
        info = await self.call("getbestblock")
        return int(info["height"]), str(info["hash"])

    async def segwit_active(self) -> bool:
        info = await self.call("getblockchaininfo")
        forks = info.get("softforks") or {}
        bip9 = info.get("bip9_softforks") or {}
        seg = (forks.get("segwit") if isinstance(forks, dict) else None) or bip9.get("segwit") or {}
        status = seg.get("status") or seg.get("bip9", {}).get("status")
        if seg.get("active") is True:
            return True
        return bool(status == "active")

    async def close(self) -> None:
        await self.rpc.close()

    def stop(self) -> None:
        self.proc.stop()

    async def kill(self) -> None:
        """SIGKILL (its RPC connection dropped first)."""
        await self.rpc.close()
        self.proc.kill()
