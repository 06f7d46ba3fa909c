"""``RegtestNetwork.wait_btcd_synced`` with fake btcds: the height it returns is read after
the check that btcd has its peer's best block, never before it (a btcd fetching its chain
back after a restart connects many blocks between two RPC calls)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from p2pep.regtest.binaries import Binaries
from p2pep.regtest.network import RegtestNetwork


class Alive:
    def alive(self) -> bool:
        return True


class Peer:
    def __init__(self, height: int) -> None:
        self.height_, self.proc = height, Alive()

    async def tip(self) -> tuple[int, str]:
        return self.height_, f"block-{self.height_}"


class Fetching(Peer):
    """A btcd catching up: every RPC call connects another batch of blocks."""

    def __init__(self, height: int, batch: int, target: int) -> None:
        super().__init__(height)
        self.batch, self.target, self.rpc = batch, target, self

    def _advance(self) -> None:
        self.height_ = min(self.height_ + self.batch, self.target)

    async def tip(self) -> tuple[int, str]:
        tip = await super().tip()
        self._advance()
        return tip

    async def height(self) -> int:
        return self.height_

    async def call(self, method: str, *params: Any) -> dict[str, Any]:
        assert method == "getblockheader" and params[0] == f"block-{self.target}"
        return {"height": self.target}  # connected by now (the real RPC fails until it is)


async def test_the_height_returned_is_the_one_after_the_peers_best_block_is_known(tmp_path: Path) -> None:
    net = RegtestNetwork(tmp_path, Binaries(tmp_path))
    net.btcd, net.btcd_peer = Fetching(450, 12, 462), Peer(462)  # type: ignore[assignment]
    assert await net.wait_btcd_synced(5) == 462  # read at the tip() call: 450
