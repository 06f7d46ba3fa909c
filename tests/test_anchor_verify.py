"""verify_offline / verify_document: every failure is reported under the right check name."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from document_helpers import SETTLEMENT_KEY, SUPPLIER_KEY, signed_document, summary, summary_signature, terms
from fakes.chain import FakeChain, FakeWallet
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pep.anchor import opreturn
from p2pep.anchor.document import (
    AnchorProof,
    DocumentError,
    build_document,
    dumps_document,
    loads_document,
    parse_document,
)
from p2pep.anchor.merkle import MerkleTree
from p2pep.anchor.verify import verify_document, verify_offline
from p2pep.canonical import contract_hash, settlement_hash

SETTLEMENT = summary(0)


async def anchored(n: int = 5, confirmations: int = 3, with_settlement: bool = True
                   ) -> tuple[FakeChain, list[dict[str, Any]]]:
    """n contract documents anchored in one batch (settlement of contract 0 in a second one)."""
    chain = FakeChain()
    wallet = FakeWallet(chain)
    ts = [terms(i) for i in range(n)]
    tree = MerkleTree([contract_hash(t) for t in ts])
    txid = await wallet.send_op_return(opreturn.encode_payload(tree.root), 1)
    height = chain.mine()
    block = chain.blocks[height].hash
    docs = []
    for i, t in enumerate(ts):
        proofs = [AnchorProof("contract", contract_hash(t), i, n, tuple(tree.proof(i)), tree.root,
                              txid, block, height, 1)]
        settlement = None
        if i == 0 and with_settlement:
            settlement = SETTLEMENT
            st_tree = MerkleTree([settlement_hash(SETTLEMENT), contract_hash(terms(99))])
            st_txid = await wallet.send_op_return(opreturn.encode_payload(st_tree.root), 1)
            chain.mine()
            proofs.append(AnchorProof("settlement", settlement_hash(SETTLEMENT), 0, 2,
                                      tuple(st_tree.proof(0)), st_tree.root, st_txid,
                                      chain.blocks[-1].hash, chain.height, 1))
        docs.append(signed_document(t, settlement, proofs).to_json())
    chain.mine(confirmations - 1)  # the newest anchor block now has `confirmations`
    return chain, docs


def failed(report: Any) -> set[str]:
    return {c.name for c in report.failures}


async def test_valid_documents_verify_on_chain() -> None:
    chain, docs = await anchored()
    for doc in docs:
        report = await verify_document(doc, chain, min_confirmations=3)
        assert report.ok, report.render()
    report = await verify_document(docs[0], chain, min_confirmations=3)
    names = [c.name for c in report.checks]
    assert names[:9] == ["document", "contract_hash", "settlement_hash", "proofs.contract", "proofs.settlement",
                         "signatures.consumer", "signatures.supplier", "settlement.contract", "settlement.signature"]
    for p in ("proofs[0]", "proofs[1]"):
        for n in ("leaf_hash", "merkle_path", "tx_found", "op_return", "root_in_tx", "block",
                  "best_chain", "confirmations"):
            assert report.get(f"{p}.{n}").ok
    assert "VERIFIED" in report.render()


async def test_offline_verification_needs_no_chain() -> None:
    _, docs = await anchored()
    report = verify_offline(docs[1])
    assert report.ok and not any("tx_found" in c.name for c in report.checks)


async def test_document_round_trips_through_json_text() -> None:
    _, docs = await anchored()
    d = parse_document(docs[0])
    assert loads_document(dumps_document(d)) == d


@pytest.mark.parametrize(
    "mutate, check, message",
    [
        (lambda d: d["terms"].update(energy_wh=1), "contract_hash", "hash mismatch: canonical terms hash to"),
        (lambda d: d["settlement"].update(msat_paid=1), "settlement_hash", "hash mismatch: canonical settlement"),
        (lambda d: d["settlement"].update(msat_paid=1), "settlement.signature", "bad signature: settlement's"),
        (lambda d: d["terms"].update(supplier_node="02" + "ee" * 32), "signatures.supplier",
         "bad signature: the supplier signature does not verify"),
        (lambda d: d["terms"].update(supplier_node="02" + "ee" * 32), "signatures.consumer", "bad signature"),
        (lambda d: d["terms"].update(supplier_pubkey=SETTLEMENT_KEY.pubkey_hex), "signatures.supplier",
         "bad signature"),
        (lambda d: d["signatures"].pop("consumer"), "signatures.consumer", "has no consumer signature"),
        (lambda d: d["signatures"].update(supplier=d["signatures"]["consumer"]), "signatures.supplier",
         "bad signature"),
        (lambda d: d["terms"].update(consumer_pubkey="02abcd"), "signatures.consumer", "no valid consumer_pubkey"),
        (lambda d: d.update(settlement_signature=None), "settlement.signature", "not signed by settlement"),
        (lambda d: d.update(settlement_signature={"pubkey": SUPPLIER_KEY.pubkey_hex,
                                                  "signature": d["settlement_signature"]["signature"]}),
         "settlement.signature", "bad signature: settlement's signature does not verify"),
        (lambda d: d["signatures"].update(consumer="zz"), "document", "signatures.consumer: expected a DER"),
        (lambda d: d["signatures"].update(mallory="00"), "document", "signatures.mallory"),
        (lambda d: d.pop("signatures"), "document", "signatures: expected a JSON object"),
        (lambda d: d.update(settlement=None), "settlement_hash", "both be present or both null"),
        (lambda d: d["proofs"].pop(0), "proofs.contract", "no proof for the contract hash"),
        (lambda d: d["proofs"][0].update(leaf_hash="00" * 32), "proofs[0].leaf_hash", "leaf hash mismatch"),
        (lambda d: d["proofs"][0]["path"].__setitem__(0, "ff" * 32), "proofs[0].merkle_path", "path mismatch"),
        (lambda d: d["proofs"][0]["path"].pop(), "proofs[0].merkle_path", "path mismatch: malformed proof"),
        (lambda d: d["proofs"][0].update(leaf_index=1), "proofs[0].merkle_path", "path mismatch"),
        (lambda d: d["proofs"][0].update(tree_size=6), "proofs[0].merkle_path", "path mismatch"),
        (lambda d: d["proofs"][0].update(root="11" * 32), "proofs[0].root_in_tx", "root mismatch"),
        (lambda d: d["proofs"][0].update(txid="22" * 32), "proofs[0].tx_found", "tx not found"),
        (lambda d: d["proofs"][0]["op_return"].update(vout=0), "proofs[0].op_return",
         "output 0 is not a P2PEP OP_RETURN: output is not OP_RETURN"),
        (lambda d: d["proofs"][0]["op_return"].update(vout=7), "proofs[0].op_return",
         "output not OP_RETURN: tx has no output 7"),
        (lambda d: d["proofs"][0].update(block_hash="33" * 32), "proofs[0].block", "block mismatch"),
        (lambda d: d["proofs"][0].update(height=2), "proofs[0].block", "height mismatch"),
        (lambda d: d["proofs"][1].update(leaf="contract"), "proofs[1].leaf_hash", "leaf hash mismatch"),
        (lambda d: d["terms"].update(x=None) or d["terms"].update(energy_wh=1.5), "contract_hash",
         "no canonical encoding"),
        (lambda d: d["proofs"][0].update(path="ab"), "document", "proofs[0].path: expected a list"),
        (lambda d: d["proofs"][0].update(leaf_index=5), "document", "proofs[0].leaf_index: 5 out of range"),
        (lambda d: d.update(version=1), "document", "unsupported document version"),
        (lambda d: d.update(version=3), "document", "unsupported document version"),
    ],
)
async def test_each_tampering_fails_the_named_check(mutate: Any, check: str, message: str) -> None:
    chain, docs = await anchored()
    doc = copy.deepcopy(docs[0])
    mutate(doc)
    report = await verify_document(doc, chain, min_confirmations=3)
    assert not report.ok
    assert check in failed(report), report.render()
    assert message in report.get(check).message, report.get(check).message
    assert f"{check}: " in report.render().splitlines()[-1]


async def test_not_enough_confirmations() -> None:
    chain, docs = await anchored(confirmations=3, with_settlement=False)
    report = await verify_document(docs[1], chain, min_confirmations=4)
    assert failed(report) == {"proofs[0].confirmations"}
    assert report.get("proofs[0].confirmations").message == "not enough confirmations: 3 < 4 required"


async def test_orphaned_block_fails_block_check() -> None:
    chain, docs = await anchored(n=3, with_settlement=False)
    chain.reorg(chain.height)  # the anchor tx goes back to the mempool, as in btcd
    chain.mine(1)  # ...and is re-mined in a different block: the proof's block is stale
    report = await verify_document(docs[1], chain, min_confirmations=1)
    assert "proofs[0].block" in failed(report)
    assert "block mismatch: tx is in block" in report.get("proofs[0].block").message


async def test_orphaned_block_with_unmined_tx() -> None:
    chain, docs = await anchored(n=3, with_settlement=False)
    chain.reorg(chain.height)
    report = await verify_document(docs[1], chain, min_confirmations=1)
    assert failed(report) == {"proofs[0].block"}
    assert "is not in a block" in report.get("proofs[0].block").message
    assert report.get("proofs[0].best_chain").status == "skip"


async def test_best_chain_check_catches_stale_index() -> None:
    """A node whose tx index still points into an orphaned block must not pass best_chain."""
    chain, docs = await anchored(n=3, with_settlement=False)
    orig = chain.get_raw_transaction
    proof_block = docs[1]["proofs"][0]["block_hash"]

    async def stale(txid: str) -> dict[str, Any]:
        tx = await orig(txid)
        tx["blockhash"] = proof_block
        return tx

    chain.reorg(chain.height)
    chain.mine(2)
    chain.get_raw_transaction = stale  # type: ignore[method-assign]
    report = await verify_document(docs[1], chain, min_confirmations=1)
    assert failed(report) == {"proofs[0].best_chain"}
    assert "not in best chain" in report.get("proofs[0].best_chain").message


async def test_chain_unavailable_is_reported() -> None:
    chain, docs = await anchored()
    chain.unavailable = True
    report = await verify_document(docs[0], chain)
    assert report.chain_unavailable and "chain" in failed(report)
    assert report.get("proofs[1].tx_found").status == "skip"


async def test_a_forged_summary_does_not_verify() -> None:
    """The settlement (summary, its hash, its anchored proof, even settlement's signature) of
    another contract put into this contract's document: its contract hash is not the terms'."""
    chain, docs = await anchored(n=3, with_settlement=False)
    other = summary(1)  # contract 1's summary (as if it paid more) ...
    forged = copy.deepcopy(docs[0])  # ... in contract 0's document
    forged["settlement"] = other
    forged["settlement_hash"] = settlement_hash(other).hex()
    forged["settlement_signature"] = summary_signature(other).to_json()
    report = verify_offline(forged)
    assert "settlement.contract" in failed(report), report.render()
    assert "summary of another contract" in report.get("settlement.contract").message
    # the same summary rewritten to name contract 0 is not signed by settlement
    rewritten = {**other, "contract_id": "c-0", "contract_hash": docs[0]["contract_hash"]}
    forged.update(settlement=rewritten, settlement_hash=settlement_hash(rewritten).hex())
    report = verify_offline(forged)
    assert failed(report) >= {"settlement.signature"} and "settlement.contract" not in failed(report)
    # signed by a key of the forger's: fails when the operator's settlement key is pinned
    from p2pep.metering.signing import MeterKey

    forged["settlement_signature"] = summary_signature(rewritten, MeterKey.from_hex("77" * 32)).to_json()
    assert "settlement.signature" not in failed(verify_offline(forged))
    pinned = verify_offline(forged, settlement_pubkey=SETTLEMENT_KEY.pubkey_hex)
    assert "settlement.signature" in failed(pinned)
    assert "not by settlement's key" in pinned.get("settlement.signature").message


def test_anchoring_only_checks_skip_signatures() -> None:
    report = verify_offline(build_document(terms(0)).to_json(), signed=False)
    assert not any(c.name.startswith("signatures") for c in report.checks)
    assert failed(verify_offline(build_document(terms(0)).to_json())) >= {"signatures.consumer",
                                                                          "signatures.supplier"}


def test_parse_rejects_duplicate_keys() -> None:
    with pytest.raises(DocumentError, match="duplicate key"):
        loads_document('{"version": 1, "version": 1}')


SINGLE_FIELD_TAMPERING = {
    "leaf_hash": "proofs[0].leaf_hash",
    "root": "proofs[0].merkle_path",
    "txid": "proofs[0].tx_found",
    "block_hash": "proofs[0].block",
}


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 40), data=st.data())
async def test_property_tampered_documents_fail_named_check(n: int, data: st.DataObject) -> None:
    chain, docs = await anchored(n=n, with_settlement=False)
    i = data.draw(st.integers(0, n - 1))
    doc = copy.deepcopy(docs[i])
    proof = doc["proofs"][0]
    what = data.draw(st.sampled_from(["path", "index", "terms", *SINGLE_FIELD_TAMPERING]))
    if what == "path":
        if not proof["path"]:
            return
        k = data.draw(st.integers(0, len(proof["path"]) - 1))
        b = bytearray.fromhex(proof["path"][k])
        b[data.draw(st.integers(0, 31))] ^= 1 << data.draw(st.integers(0, 7))
        proof["path"][k] = b.hex()
        expected = "proofs[0].merkle_path"
    elif what == "index":
        proof["leaf_index"] = data.draw(st.integers(0, n - 1).filter(lambda j: j != i))
        expected = "proofs[0].merkle_path"
    elif what == "terms":
        doc["terms"]["energy_wh"] += data.draw(st.integers(1, 10**6))
        expected = "contract_hash"
    else:
        proof[what] = data.draw(st.binary(min_size=32, max_size=32)).hex()
        expected = SINGLE_FIELD_TAMPERING[what]
    report = await verify_document(json.loads(json.dumps(doc)), chain, min_confirmations=1)
    assert not report.ok
    assert expected in failed(report), (what, report.render())


async def test_compact_binary_proof_round_trips() -> None:
    _, docs = await anchored(n=7)
    for doc in docs:
        for p in parse_document(doc).proofs:
            b = p.to_bytes()
            assert len(b) == 144 + 32 * len(p.path)
            assert AnchorProof.from_bytes(b) == p
    p = parse_document(docs[3]).proofs[0]
    with pytest.raises(DocumentError, match="path bytes"):
        AnchorProof.from_bytes(p.to_bytes()[:-1])
    with pytest.raises(DocumentError, match="version"):
        AnchorProof.from_bytes(b"\x02" + p.to_bytes()[1:])
