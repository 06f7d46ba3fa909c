"""Issue 5 acceptance on the real regtest network (session ``regtest`` fixture).

* 1,000 real contracts anchored in ONE transaction from the hub's LND wallet; every proof
  verifies against real btcd; the tx has exactly one OP_RETURN of the documented layout.
* Tampering (a contract field, a path element, chain data) fails naming the check, in the
  library and through the `p2pep verify` CLI as a subprocess.
* The anchor service as a subprocess: AddLeaves over gRPC, blocks, confirmed proofs, SIGTERM.

The reorg test has its own network: tests/test_anchor_regtest_reorg.py.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import tls_helpers
from anchor_regtest_helpers import AnchorStack, contract_terms, failed, signed_document, tx_fee_and_vsize
from grpc_health.v1 import health_pb2, health_pb2_grpc

from p2pep.anchor import opreturn
from p2pep.anchor.batching import BatchPolicy
from p2pep.anchor.btcd_chain import BtcdChain
from p2pep.anchor.client import AnchorClient
from p2pep.anchor.document import AnchorProof, dumps_document
from p2pep.anchor.verify import verify_document
from p2pep.chain.btcd_rpc import BtcdRpc
from p2pep.identity import Identity
from p2pep.regtest import RegtestNetwork, wait_for
from p2pep.regtest.btcd import RPC_PASS, RPC_USER
from p2pep.regtest.ports import free_port
from p2pep.servicekit.settings import settings_env
from p2pep.settings.anchor import AnchorSettings
from p2pep.settling.contracts import ContractTerms
from services.anchor.anchorer import AnchorerConfig

pytestmark = pytest.mark.regtest
REPO = Path(__file__).resolve().parents[1]
N = 1000
FEE_RATE = 2  # sat/vB asked of the wallet


@dataclass
class Anchored:
    terms: list[ContractTerms]
    proofs: dict[str, list[AnchorProof]]
    txid: str
    block_hash: str
    stack: AnchorStack


@pytest.fixture(scope="module")
async def anchored(regtest: RegtestNetwork, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Anchored]:
    """1,000 contracts through the Anchorer: one batch, one transaction, mined in one block."""
    assert regtest.btcd is not None
    terms = contract_terms(N, "bulk")
    config = AnchorerConfig(policy=BatchPolicy(every_blocks=1, max_leaves=N), min_confirmations=1,
                            sat_per_vbyte=FEE_RATE)
    stack = await AnchorStack.open(regtest, tmp_path_factory.mktemp("anchor") / "anchor.sqlite", config)
    try:
        # The batch is full at 1,000 leaves, so adding them closes it and publishes the tx at once.
        added = await stack.anchorer.add_leaves([("contract", t.contract_id, t.hash()) for t in terms])
        assert all(added)
        [batch] = await stack.anchorer.batches()
        assert (batch.size, batch.state) == (N, "broadcast") and batch.txid

        async def in_mempool() -> bool:
            return batch.txid in await regtest.btcd.call("getrawmempool")  # type: ignore[union-attr]

        await wait_for(in_mempool, 30, what="anchor tx in btcd's mempool")
        [block_hash] = await regtest.mine(1)
        await stack.tip()
        [batch] = await stack.anchorer.batches()
        assert (batch.state, batch.block_hash) == ("confirmed", block_hash)  # K = 1
        proofs = {t.contract_id: await stack.proofs(t.contract_id) for t in terms}
        yield Anchored(terms, proofs, batch.txid, block_hash, stack)
    finally:
        await stack.close()


async def test_thousand_contracts_in_one_transaction(anchored: Anchored) -> None:
    stack = anchored.stack
    assert all(len(p) == 1 for p in anchored.proofs.values())
    roots = {p[0].root for p in anchored.proofs.values()}
    txids = {(p[0].txid, p[0].block_hash) for p in anchored.proofs.values()}
    assert len(roots) == 1 and txids == {(anchored.txid, anchored.block_hash)}
    assert sorted(p[0].leaf_index for p in anchored.proofs.values()) == list(range(N))
    [root] = roots

    fee, vsize, tx = await tx_fee_and_vsize(stack.rpc, anchored.txid)
    nulldata = [o for o in tx["vout"] if o["scriptPubKey"]["hex"].startswith("6a")]
    assert len(nulldata) == 1, tx["vout"]
    out = nulldata[0]
    assert out["value"] == 0 and out["scriptPubKey"]["type"] == "nulldata"
    script = bytes.fromhex(out["scriptPubKey"]["hex"])
    assert script == opreturn.encode_script(root)  # 6a 26 'P2PEP' 01 <root>
    assert script[:8].hex() == "6a26503250455001" and len(script) == opreturn.SCRIPT_LEN
    assert opreturn.decode_script(script) == root
    assert all(p[0].vout == out["n"] for p in anchored.proofs.values())
    assert FEE_RATE <= fee / vsize <= FEE_RATE + 1  # what we asked for, within LND's estimation slack

    t0 = time.perf_counter()
    reports = await stack.verify_all(anchored.terms, k=1, proofs=anchored.proofs)  # btcd asked once per question
    verify_s = time.perf_counter() - t0
    bad = [(t.contract_id, failed(r)) for t, r in zip(anchored.terms, reports) if not r.ok]
    assert not bad, bad[:5]
    # and every 10th document on its own, each with its own 4 RPCs, as `p2pep verify` does
    sample = anchored.terms[::10]
    t0 = time.perf_counter()
    reports = await stack.verify_all(sample, k=1, proofs=anchored.proofs, dedup=False)
    sample_s = time.perf_counter() - t0
    assert all(r.ok for r in reports)
    print(f"\nanchor tx {anchored.txid}: {vsize} vB, fee {fee} sat ({fee / vsize:.2f} sat/vB), "
          f"{vsize / N:.3f} vB and {fee / N:.3f} sat per contract at {N}; inputs {len(tx['vin'])}, "
          f"outputs {len(tx['vout'])}; {N} documents verified against btcd in {verify_s:.2f}s, "
          f"{len(sample)} with their own RPCs in {sample_s:.2f}s")


async def test_tampering_fails_naming_the_check(anchored: Anchored) -> None:
    chain = anchored.stack.chain
    t = anchored.terms[417]
    good = signed_document(t, anchored.proofs[t.contract_id]).to_json()
    assert (await verify_document(good, chain, 1)).ok

    def tampered(edit: Any) -> dict[str, Any]:
        doc = copy.deepcopy(good)
        edit(doc)
        return doc

    def flip(hex64: str) -> str:
        return ("0" if hex64[0] != "0" else "1") + hex64[1:]

    path0 = good["proofs"][0]
    cases: list[tuple[str, dict[str, Any], list[str]]] = [
        ("one contract field changed",
         tampered(lambda d: d["terms"].update(energy_wh=d["terms"]["energy_wh"] + 1)),
         ["contract_hash", "signatures.consumer", "signatures.supplier"]),
        ("one path element changed",
         tampered(lambda d: d["proofs"][0]["path"].__setitem__(4, flip(path0["path"][4]))),
         ["proofs[0].merkle_path"]),
        ("leaf index moved",
         tampered(lambda d: d["proofs"][0].update(leaf_index=path0["leaf_index"] ^ 1)), ["proofs[0].merkle_path"]),
        ("another root",
         tampered(lambda d: d["proofs"][0].update(root=flip(path0["root"]))),
         ["proofs[0].merkle_path", "proofs[0].root_in_tx"]),
        ("wrong height", tampered(lambda d: d["proofs"][0].update(height=path0["height"] - 1)), ["proofs[0].block"]),
        ("wrong output", tampered(lambda d: d["proofs"][0]["op_return"].update(vout=1 - path0["op_return"]["vout"])),
         ["proofs[0].op_return"]),
        ("unknown tx", tampered(lambda d: d["proofs"][0].update(txid=flip(path0["txid"]))), ["proofs[0].tx_found"]),
    ]
    for what, doc, checks in cases:
        report = await verify_document(doc, chain, 1)
        assert not report.ok and failed(report) == checks, (what, report.render())
    # the chain can be right and still not deep enough
    deep = await verify_document(good, chain, 10_000)
    assert failed(deep) == ["proofs[0].confirmations"]
    assert deep.get("proofs[0].confirmations").message.startswith("not enough confirmations")


async def run_cli(*args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2PEP_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "p2pep.cli", "verify", *args, cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


async def test_verify_cli_on_exported_documents(anchored: Anchored, regtest: RegtestNetwork, tmp_path: Path) -> None:
    assert regtest.btcd is not None
    info = regtest.btcd.info
    conn = ["--btcd-rpc", info.rpchost, "--btcd-user", RPC_USER, "--btcd-pass", RPC_PASS, "--btcd-cert", info.cert]
    t = anchored.terms[3]
    doc = signed_document(t, anchored.proofs[t.contract_id])
    good = tmp_path / "good.json"
    good.write_text(dumps_document(doc))
    rc, out = await run_cli(str(good), *conn)
    assert rc == 0, out
    assert out.strip().splitlines()[-1] == "VERIFIED: all checks passed"
    assert "PASS  proofs[0].best_chain" in out

    changed = doc.to_json()
    changed["terms"]["price_msat_per_kwh"] += 1
    bad_field = tmp_path / "bad-field.json"
    bad_field.write_text(json.dumps(changed))
    rc, out = await run_cli(str(bad_field), *conn)
    assert rc == 1, out
    assert out.strip().splitlines()[-1].startswith("NOT VERIFIED: contract_hash: hash mismatch:")

    bad = doc.to_json()
    bad["proofs"][0]["path"][0] = "00" * 32
    bad_path = tmp_path / "bad-path.json"
    bad_path.write_text(json.dumps(bad))
    rc, out = await run_cli(str(bad_path), *conn)
    assert rc == 1, out
    assert out.strip().splitlines()[-1].startswith("NOT VERIFIED: proofs[0].merkle_path: path mismatch:")

    rc, out = await run_cli(str(good), *conn, "--min-confirmations", "100000")
    assert rc == 1 and "NOT VERIFIED: proofs[0].confirmations: not enough confirmations" in out


# -- the service, as a process --------------------------------------------------------------
K = 3


async def metrics_text(url: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/metrics") as r:
        return await r.text()


def metric(text: str, sample: str) -> float:
    """Value of one sample (``name`` or ``name{label="v"}``) in Prometheus text format."""
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == sample:
            return float(value)
    raise KeyError(sample)


async def test_anchor_service_process(regtest: RegtestNetwork, tmp_path: Path) -> None:
    assert regtest.btcd is not None
    hub = regtest.nodes["hub"].info
    grpc_port, http_port = free_port(), free_port()
    # Least privilege: the macaroon the harness baked for the anchor (walletrpc.SendOutputs only).
    macaroon = hub.service_macaroon("anchor")
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2PEP_")} | settings_env(
        AnchorSettings,
        db_path=str(tmp_path / "anchor.sqlite"),
        grpc_port=grpc_port,
        metrics_port=http_port,
        lnd_rpcserver=hub.rpcserver,
        lnd_tls_cert=hub.tls_cert,
        lnd_macaroon=macaroon,
        btcd_rpchost=regtest.btcd.info.rpchost,
        btcd_user=RPC_USER,
        btcd_pass=RPC_PASS,
        btcd_cert=regtest.btcd.info.cert,
        every_blocks=1,
        min_confirmations=K,
        sat_per_vbyte=1,
        poll_s=0.1,
        tls_dir=tls_helpers.TLS_DIR,
    )
    log_path = tmp_path / "anchor.log"
    with open(log_path, "wb") as log_file:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.anchor", cwd=REPO, env=env,
                                                    stdout=log_file, stderr=log_file)
    target = f"127.0.0.1:{grpc_port}"
    channel = tls_helpers.dial(target, "anchor")
    client = AnchorClient(target, tls=tls_helpers.tls_as(Identity("service", "settlement")))
    try:
        health = health_pb2_grpc.HealthStub(channel)

        async def serving() -> bool:
            assert proc.returncode is None, log_path.read_text()
            r = await health.Check(health_pb2.HealthCheckRequest(service="p2pep.v1.AnchorService"), timeout=1)
            return r.status == health_pb2.HealthCheckResponse.SERVING

        await wait_for(serving, 30, what="anchor service SERVING")
        terms = contract_terms(20, "svc")
        assert await client.add_leaves([("contract", t.contract_id, t.hash()) for t in terms]) == [True] * 20
        assert await client.add_leaf("contract", terms[0].contract_id, terms[0].hash()) is False

        await regtest.mine(1)  # the batch is one block old: the service closes it and publishes the root

        async def published() -> str | None:
            batches = await client.list_batches()
            if batches and batches[0].txid and batches[0].txid in await regtest.btcd.call("getrawmempool"):  # type: ignore[union-attr]
                return batches[0].txid
            return None

        txid = await wait_for(published, 30, what="anchor tx published by the service")
        [block] = await regtest.mine(1)

        async def proven(confirmed: bool) -> bool:
            status = await client.proof_status(terms[7].contract_id)
            return len(status) == 1 and status[0].confirmed == confirmed and status[0].proof.block_hash == block

        await wait_for(lambda: proven(False), 30, what="proof with 1 confirmation")
        await regtest.mine(K - 1)
        await wait_for(lambda: proven(True), 30, what=f"proof confirmed after {K} blocks")

        async with BtcdRpc(regtest.btcd.info.rpc_config()) as rpc:
            for t in terms:
                proofs = await client.proofs(t.contract_id, confirmed_only=True)
                assert len(proofs) == 1 and proofs[0].txid == txid and proofs[0].tree_size == 20
                doc = signed_document(t, proofs).to_json()
                report = await verify_document(doc, BtcdChain(rpc), K)
                assert report.ok, report.render()
            _, vsize, _ = await tx_fee_and_vsize(rpc, txid)

        [batch] = await client.list_batches()
        assert (batch.state, batch.size, batch.confirmations, batch.reanchors) == ("confirmed", 20, K, 0)
        text = await metrics_text(f"http://127.0.0.1:{http_port}")
        assert metric(text, "p2pep_anchor_vbytes_total") == vsize
        assert metric(text, 'p2pep_anchor_transactions_total{reason="new"}') == 1
        assert metric(text, "p2pep_anchor_leaves_pending") == 0
        assert metric(text, "p2pep_anchor_tip_height") == await regtest.btcd.height()
    finally:
        await client.close()
        await channel.close()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), 30)
    log = log_path.read_text()
    assert rc == 0, log[-3000:]
    assert '"event": "service stopped"' in log

