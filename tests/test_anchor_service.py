"""Anchor service parts without a network: block watcher, gRPC servicer + client, LND adapter.

The chain and wallet are the in-memory fakes; the real btcd/LND runs are in
tests/test_anchor_regtest*.py.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from fakes.chain import FakeChain, FakeWallet
from tls_helpers import dial, server_credentials, tls_as

from p2pep.anchor.batching import BatchPolicy
from p2pep.anchor.client import AnchorClient, AnchorServiceError
from p2pep.anchor.document import build_document
from p2pep.anchor.lnd_wallet import LndAnchorWallet
from p2pep.anchor.opreturn import OpReturnError, encode_payload
from p2pep.anchor.verify import verify_document
from p2pep.anchor.wire import WireError, proof_from_pb, proof_to_pb
from p2pep.canonical import contract_hash
from p2pep.identity import Identity
from p2pep.regtest.ports import free_port
from p2pep.regtest.waiting import wait_for
from p2pep.servicekit.auth import AuthInterceptor
from p2pep.servicekit.errors import RefusalInterceptor
from p2pep.servicekit.tls import Tls
from p2pep.v1 import anchor_pb2 as pb
from p2pep.v1 import anchor_pb2_grpc as pb_grpc
from services.anchor.anchorer import Anchorer, AnchorerConfig
from services.anchor.servicer import AnchorServicer
from services.anchor.watcher import BlockWatcher, Tip, classify


def terms(i: int) -> dict[str, Any]:
    return {"v": 1, "contract_id": f"c-{i}", "energy_wh": 1000 + i, "price_msat_per_kwh": 90_000}


# -- block watcher --------------------------------------------------------------------------
def test_classify() -> None:
    a, b = Tip(10, "a"), Tip(11, "b")
    assert classify(None, a, None) == "first"
    assert classify(a, a, None) is None
    assert classify(a, b, "a") == "extended"
    assert classify(a, b, "x") == "reorg"  # longer, but the old tip left the chain
    assert classify(a, Tip(10, "z"), None) == "reorg"  # same height, other hash
    assert classify(a, Tip(9, "y"), None) == "reorg"  # shorter (invalidateblock)


async def test_watcher_calls_on_block_for_every_tip_change() -> None:
    chain = FakeChain()
    chain.mine(5)
    seen: list[int] = []

    async def on_block(h: int) -> None:
        seen.append(h)

    w = BlockWatcher(chain, on_block, poll_s=0.01)
    assert await w.poll_once() == "first"
    assert await w.poll_once() is None
    chain.mine(2)
    assert await w.poll_once() == "extended"
    chain.reorg(1)
    chain.mine(1)  # same height, another block
    assert await w.poll_once() == "reorg"
    chain.reorg(2)
    assert await w.poll_once() == "reorg"
    assert seen == [5, 7, 7, 5]


@pytest.mark.expected_log_errors(r"anchor\.block_handling_failed.*RuntimeError: store busy")
async def test_watcher_retries_a_failed_block_and_survives_chain_outage() -> None:
    chain = FakeChain()
    calls: list[int] = []

    async def flaky(h: int) -> None:
        calls.append(h)
        if len(calls) == 1:
            raise RuntimeError("store busy")

    w = BlockWatcher(chain, flaky, poll_s=0.01)
    chain.unavailable = True
    task = asyncio.create_task(w.run())
    await wait_for(lambda: chain.calls >= 2, 5, what="polls while btcd is down")
    chain.unavailable = False
    await wait_for(lambda: len(calls) >= 2, 5, what="the failed block handled again")
    w.stop()
    await asyncio.wait_for(task, 5)
    assert calls == [0, 0] and w.tip is not None and w.tip.height == 0


# -- servicer and client --------------------------------------------------------------------
def settlement_tls() -> Tls:
    return tls_as(Identity("service", "settlement"))  # the anchor's one writer


class Service:
    def __init__(self, tmp: Path) -> None:
        self.chain = FakeChain()
        self.chain.mine(10)
        self.wallet = FakeWallet(self.chain)
        cfg = AnchorerConfig(policy=BatchPolicy(every_blocks=1, max_leaves=100), min_confirmations=2,
                             watch_depth=10)
        self.anchorer = Anchorer(str(tmp / "anchor.sqlite"), self.wallet, self.chain, cfg)
        self.port = free_port()
        self.server: grpc.aio.Server | None = None

    async def start(self) -> None:
        await self.anchorer.open()
        # as every ServiceHost has: mutual TLS, the authorization table, refusals as statuses
        self.server = grpc.aio.server(interceptors=[AuthInterceptor(None), RefusalInterceptor()])
        pb_grpc.add_AnchorServiceServicer_to_server(AnchorServicer(self.anchorer, 500), self.server)
        self.server.add_secure_port(f"127.0.0.1:{self.port}", server_credentials(Identity("service", "anchor")))
        await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)
        await self.anchorer.close()

    async def block(self) -> None:
        await self.anchorer.on_block(self.chain.mine())


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    s = Service(tmp_path)
    await s.start()
    yield s
    await s.stop()


async def test_add_leaf_then_proofs_verify(service: Service) -> None:
    async with AnchorClient(f"127.0.0.1:{service.port}", tls=settlement_tls()) as client:
        for i in range(5):
            assert await client.add_leaf("contract", f"c-{i}", contract_hash(terms(i))) is True
        assert await client.add_leaf("contract", "c-0", contract_hash(terms(0))) is False  # retry-safe
        assert await client.proofs("c-0") == []
        await service.block()  # closes and sends
        await service.block()  # mined: 1 confirmation
        [status] = await client.proof_status("c-3")
        assert (status.confirmations, status.confirmed) == (1, False)
        assert await client.proofs("c-3", confirmed_only=True) == []
        await service.block()
        proofs = await client.proofs("c-3", confirmed_only=True)
        assert len(proofs) == 1 and proofs[0].tree_size == 5 and proofs[0].leaf_index == 3
        report = await verify_document(build_document(terms(3), None, proofs).to_json(), service.chain, 2,
                                       signed=False)
        assert report.ok, report.render()
        [batch] = await client.list_batches()
        assert (batch.size, batch.state, batch.confirmations) == (5, "confirmed", 2)
        assert batch.txid == proofs[0].txid and list(batch.txids) == [batch.txid]


async def test_bad_leaves_are_refused_naming_the_field_and_nothing_is_stored(service: Service) -> None:
    stub = pb_grpc.AnchorServiceStub(dial(f"127.0.0.1:{service.port}", "anchor", as_=Identity("service", "settlement")))
    good = pb.Leaf(kind=pb.LEAF_KIND_CONTRACT, contract_id="c-1", leaf_hash=b"\x01" * 32)
    cases = [
        ([good, pb.Leaf(kind=pb.LEAF_KIND_CONTRACT, contract_id="c-2", leaf_hash=b"\x02" * 31)],
         "leaves[1].leaf_hash: expected 32 bytes, got 31"),
        ([good, pb.Leaf(contract_id="c-2", leaf_hash=b"\x02" * 32)], "leaves[1].kind"),
        ([pb.Leaf(kind=pb.LEAF_KIND_SETTLEMENT, leaf_hash=b"\x02" * 32)], "leaves[0].contract_id"),
        ([], "leaves: must not be empty"),
        ([good] * 501, "leaves: 501 leaves, at most 500"),
    ]
    for leaves, message in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.AddLeaves(pb.AddLeavesRequest(leaves=leaves))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetProofs(pb.GetProofsRequest())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "contract_id" in (err.value.details() or "")
    resp = await stub.AddLeaves(pb.AddLeavesRequest(leaves=[good]))
    assert list(resp.added) == [True]  # the refused calls stored nothing, not even their valid leaves
    # the client refuses bad input before sending, and a permanent refusal is not retried
    async with AnchorClient(f"127.0.0.1:{service.port}", tls=settlement_tls()) as client:
        with pytest.raises(WireError):
            await client.add_leaf("meter", "c-1", b"\x00" * 32)  # type: ignore[arg-type]
        with pytest.raises(AnchorServiceError) as exc:
            await client.add_leaf("contract", "c-1", b"\x00" * 3)
        assert exc.value.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_add_leaf_waits_for_the_service_to_come_up(tmp_path: Path) -> None:
    s = Service(tmp_path)
    client = AnchorClient(f"127.0.0.1:{s.port}", tls=settlement_tls(), backoff_initial_s=0.05, backoff_max_s=0.2, call_timeout_s=1)
    task = asyncio.create_task(client.add_leaf("settlement", "c-9", b"\x09" * 32))
    try:
        await asyncio.sleep(0)  # let the first attempt fail against the closed port
        assert not task.done()
        await s.start()
        assert await asyncio.wait_for(task, 10) is True
    finally:
        await client.close()
        await s.stop()


def test_proof_message_round_trip() -> None:
    from p2pep.anchor.document import AnchorProof

    p = AnchorProof("settlement", b"\x01" * 32, 2, 3, (b"\x02" * 32,), b"\x03" * 32, "aa" * 32, "bb" * 32, 500, 1)
    assert proof_from_pb(proof_to_pb(p)) == p


async def test_lnd_wallet_refuses_anything_but_an_anchor_payload() -> None:
    sent: list[tuple[bytes, int, str]] = []

    class FakeLnd:
        async def send_op_return(self, payload: bytes, sat_per_vbyte: int, label: str = "") -> str:
            sent.append((payload, sat_per_vbyte, label))
            return "ab" * 32

    wallet = LndAnchorWallet(FakeLnd())  # type: ignore[arg-type]
    with pytest.raises(OpReturnError):
        await wallet.send_op_return(b"meter-1 used 1234 Wh", 2)
    assert await wallet.send_op_return(encode_payload(b"\x07" * 32), 2) == "ab" * 32
    assert sent == [(encode_payload(b"\x07" * 32), 2, "p2pep anchor " + "07" * 32)]


def test_bad_configuration_names_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    from p2pep.servicekit import load_settings
    from p2pep.settings.anchor import AnchorSettings

    for k in list(os.environ):
        if k.startswith("P2PEP_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("P2PEP_ANCHOR_POLL_S", "0")
    with pytest.raises(SystemExit) as exc:
        load_settings(AnchorSettings, "anchor")
    msg = str(exc.value)
    assert "P2PEP_ANCHOR_LND_MACAROON: Field required" in msg and "P2PEP_ANCHOR_POLL_S" in msg
