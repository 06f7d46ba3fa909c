"""The harness fails fast and clearly: taken ports, missing binaries, a crashed btcd."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from p2pep.regtest import BinaryMissing, PortInUse, ProcessFailed, RegtestNetwork
from p2pep.regtest.binaries import Binaries, find_binaries
from p2pep.regtest.btcd import Btcd, BtcdInfo
from p2pep.regtest.ports import free_port

pytestmark = pytest.mark.regtest


def test_missing_binary_is_named(tmp_path: Path) -> None:
    with pytest.raises(BinaryMissing, match=r"lnd binary not found at .*make binaries"):
        _ = Binaries(tmp_path).lnd


async def test_port_already_taken(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        btcd = Btcd(find_binaries().btcd, BtcdInfo(rpc_port=port, p2p_port=free_port(), dir=str(tmp_path)), "x")
        t0 = time.monotonic()
        with pytest.raises(PortInUse, match=f"btcd rpc: port 127.0.0.1:{port} is already in use"):
            await btcd.start()
        assert time.monotonic() - t0 < 5
        await btcd.close()


async def test_crashed_btcd_gives_a_clear_error(tmp_path: Path) -> None:
    net = RegtestNetwork(tmp_path / "net")
    try:
        await net.start_btcd()
        [node] = await net.add_nodes(["lonely"])
        assert net.btcd is not None
        net.btcd.proc.kill()
        t0 = time.monotonic()
        with pytest.raises(ProcessFailed, match="btcd: not running"):
            await net.mine(1)
        # an lnd started against the dead btcd fails naming btcd, instead of hanging
        await node.stop()
        with pytest.raises(ProcessFailed, match=r"btcd|lonely"):
            await node.start(timeout=20, btcd_proc=net.btcd.proc)
        assert time.monotonic() - t0 < 60
    finally:
        await net.down()
