"""`python -m services.anchor`: the anchor service process (settings: ``P2PEP_ANCHOR_*``).

Wires the pieces: btcd (JSON-RPC) as the chain view, the hub's LND wallet as the payer,
the Anchorer (SQLite at ``db_path``), the block watcher, and the gRPC AnchorService with
health checking and ``/metrics``. Ready (health SERVING) once its store is open and while the
hub's lnd (its wallet: ``WalletBalance``) and btcd (``getblockcount``) answer. SIGTERM: health goes NOT_SERVING, in-flight calls
finish, the watcher finishes the block it is handling, then connections and the store close.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import structlog

from p2pep.anchor.batching import BatchPolicy
from p2pep.anchor.btcd_chain import BtcdChain
from p2pep.anchor.lnd_wallet import LndAnchorWallet
from p2pep.chain.btcd_rpc import BtcdRpc, BtcdRpcConfig
from p2pep.servicekit import ServiceHost, configure_logging, load_settings, run_service
from p2pep.servicekit.readiness import Readiness
from p2pep.settings.anchor import AnchorSettings
from p2pep.v1 import anchor_pb2_grpc as pb_grpc
from services.anchor.anchorer import Anchorer, AnchorerConfig
from services.anchor.hub import HubMonitor
from services.anchor.servicer import AnchorServicer
from services.anchor.wallet import CountingWallet
from services.anchor.watcher import BlockWatcher

log = structlog.get_logger(__name__)


class _Wallet(Protocol):
    async def wallet_balance(self) -> object: ...


class _Chain(Protocol):
    async def get_best_height(self) -> int: ...


def watch_dependencies(readiness: Readiness, hub: _Wallet, chain: _Chain) -> None:
    """Ready while the hub's wallet (what anchoring pays from) and btcd (what it watches) answer."""
    readiness.watch("lnd", hub.wallet_balance)
    readiness.watch("btcd", chain.get_best_height)


async def main(stop: asyncio.Event) -> None:
    settings = load_settings(AnchorSettings, "anchor")
    configure_logging(settings.log_level, json=settings.log_json, service="anchor")
    rpc = BtcdRpc(BtcdRpcConfig(settings.btcd_rpchost, settings.btcd_user, settings.btcd_pass, settings.btcd_cert))
    chain = BtcdChain(rpc)
    wallet = LndAnchorWallet.connect(settings.lnd_rpcserver, settings.lnd_tls_cert, settings.lnd_macaroon)
    config = AnchorerConfig(
        policy=BatchPolicy(every_blocks=settings.every_blocks, max_leaves=settings.max_leaves),
        min_confirmations=settings.min_confirmations,
        sat_per_vbyte=settings.sat_per_vbyte,
        watch_depth=max(settings.watch_depth, settings.min_confirmations),
    )
    anchorer = await Anchorer(settings.db_path, CountingWallet(wallet, chain), chain, config, relay=chain).open()
    watcher = BlockWatcher(chain, anchorer.on_block, settings.poll_s)
    watch_task = asyncio.create_task(watcher.run(), name="anchor-block-watcher")
    hub_stop = asyncio.Event()
    hub_task = asyncio.create_task(HubMonitor(wallet.client, interval_s=settings.hub_poll_s).run(hub_stop),
                                   name="anchor-hub-monitor")

    async def stop_hub_monitor() -> None:
        hub_stop.set()
        await hub_task

    async def stop_watcher() -> None:
        watcher.stop()
        try:
            await asyncio.wait_for(watch_task, settings.shutdown_grace_s + 30)
        except TimeoutError:
            log.warning("anchor.watcher_cancelled")  # crash-safe: at worst a root is anchored twice

    host = ServiceHost(settings, name="anchor")
    watch_dependencies(host.readiness, wallet.client, chain)
    pb_grpc.add_AnchorServiceServicer_to_server(
        AnchorServicer(anchorer, settings.max_request_leaves), host.grpc_server)
    # Hooks run in reverse order, after gRPC has drained: watcher, then the store, then connections.
    host.add_shutdown_hook(rpc.close)
    host.add_shutdown_hook(wallet.close)
    host.add_shutdown_hook(anchorer.close)
    host.add_shutdown_hook(stop_watcher)
    host.add_stopping_hook(stop_hub_monitor)
    try:
        await host.start(serving=["p2pep.v1.AnchorService"])
        log.info("anchor.config", db_path=settings.db_path, lnd=settings.lnd_rpcserver, btcd=settings.btcd_rpchost,
                 every_blocks=settings.every_blocks, max_leaves=settings.max_leaves,
                 min_confirmations=settings.min_confirmations, sat_per_vbyte=settings.sat_per_vbyte)
    except BaseException:
        await host.stop(0)
        raise
    await host.wait_and_stop(stop)


if __name__ == "__main__":
    raise SystemExit(run_service(main))
