"""`p2pep verify`: output names what was checked; exit codes say what went wrong."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from document_helpers import SETTLEMENT_KEY, SUPPLIER_KEY, signed_document, summary, summary_signature, terms
from fakes.chain import P2WPKH_CHANGE, FakeChain

from p2pep.anchor import cli as anchor_cli
from p2pep.anchor import opreturn
from p2pep.anchor.document import AnchorProof, dumps_document
from p2pep.anchor.merkle import MerkleTree
from p2pep.canonical import contract_hash, settlement_hash
from p2pep.chain.btcd_rpc import BtcdRpcConfig
from p2pep.cli import main

TERMS = [terms(i) for i in range(3)]
CONN = ["--btcd-rpc", "127.0.0.1:1", "--btcd-user", "u", "--btcd-pass", "p"]


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("P2PEP_BTCD_RPC", "P2PEP_BTCD_USER", "P2PEP_BTCD_PASS", "P2PEP_BTCD_CERT",
                "P2PEP_MIN_CONFIRMATIONS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("P2PEP_RUN_DIR", str(tmp_path / "no-network"))


@pytest.fixture
def chain(monkeypatch: pytest.MonkeyPatch) -> FakeChain:
    c = FakeChain()
    seen: list[BtcdRpcConfig] = []

    async def fake_open(config: BtcdRpcConfig) -> tuple[FakeChain, Callable[[], Awaitable[None]]]:
        seen.append(config)

        async def close() -> None:
            return None

        return c, close

    monkeypatch.setattr(anchor_cli, "open_chain", fake_open)
    c.seen = seen  # type: ignore[attr-defined]
    return c


def write_doc(tmp_path: Path, chain: FakeChain, confirmations: int = 2) -> Path:
    tree = MerkleTree([contract_hash(t) for t in TERMS])
    txid = chain.add_tx([P2WPKH_CHANGE, opreturn.encode_script(tree.root).hex()])
    h = chain.mine()
    chain.mine(confirmations - 1)
    proof = AnchorProof("contract", contract_hash(TERMS[1]), 1, 3, tuple(tree.proof(1)), tree.root,
                        txid, chain.blocks[h].hash, h, 1)
    p = tmp_path / "contract.json"
    p.write_text(dumps_document(signed_document(TERMS[1], None, [proof])))
    return p


def cert(tmp_path: Path) -> list[str]:
    c = tmp_path / "rpc.cert"
    c.write_text("dummy")
    return CONN + ["--btcd-cert", str(c)]


def test_verified_document_exits_zero(tmp_path: Path, chain: FakeChain, capsys: Any) -> None:
    doc = write_doc(tmp_path, chain)
    assert main(["verify", str(doc), *cert(tmp_path), "--min-confirmations", "2"]) == 0
    out = capsys.readouterr().out
    assert "against btcd at 127.0.0.1:1, 2 confirmation(s) required" in out
    for name in ("contract_hash", "proofs[0].merkle_path", "proofs[0].tx_found", "proofs[0].op_return",
                 "proofs[0].confirmations"):
        assert f"PASS  {name}:" in out
    assert out.strip().endswith("VERIFIED: all checks passed")


def test_not_enough_confirmations_exits_one_naming_it(tmp_path: Path, chain: FakeChain, capsys: Any) -> None:
    doc = write_doc(tmp_path, chain, confirmations=1)
    assert main(["verify", str(doc), *cert(tmp_path), "--min-confirmations", "6"]) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == "NOT VERIFIED: proofs[0].confirmations: not enough confirmations: 1 < 6 required"


def test_changed_field_fails_with_hash_mismatch_json(tmp_path: Path, chain: FakeChain, capsys: Any) -> None:
    doc = write_doc(tmp_path, chain)
    d = json.loads(doc.read_text())
    d["terms"]["energy_wh"] += 1
    doc.write_text(json.dumps(d))
    assert main(["verify", str(doc), *cert(tmp_path), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    # the meters signed other terms, too
    assert out["ok"] is False and out["failed"] == ["contract_hash", "signatures.consumer", "signatures.supplier"]
    assert next(c for c in out["checks"] if c["name"] == "contract_hash")["message"].startswith("hash mismatch")


def test_forged_summary_and_unsigned_terms_exit_one(tmp_path: Path, chain: FakeChain, capsys: Any) -> None:
    doc = write_doc(tmp_path, chain)
    d = json.loads(doc.read_text())
    other = summary(2)  # another contract's summary, signed by settlement
    d.update(settlement=other, settlement_hash=settlement_hash(other).hex(),
             settlement_signature=summary_signature(other).to_json())
    doc.write_text(json.dumps(d))
    assert main(["verify", str(doc), "--offline"]) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("NOT VERIFIED: ") and "settlement.contract: summary of another contract" in last
    d = json.loads(write_doc(tmp_path, chain).read_text())
    d["signatures"]["supplier"] = d["signatures"]["consumer"]
    doc.write_text(json.dumps(d))
    assert main(["verify", str(doc), "--offline"]) == 1
    assert "signatures.supplier: bad signature" in capsys.readouterr().out.strip().splitlines()[-1]


def test_pinned_settlement_key(tmp_path: Path, chain: FakeChain, capsys: Any) -> None:
    doc = write_doc(tmp_path, chain)
    d = json.loads(doc.read_text())
    s = summary(1)
    d.update(settlement=s, settlement_hash=settlement_hash(s).hex(), settlement_signature=summary_signature(s).to_json())
    doc.write_text(json.dumps(d))
    assert main(["verify", str(doc), "--offline", "--settlement-pubkey", SETTLEMENT_KEY.pubkey_hex]) == 1
    out = capsys.readouterr().out
    assert "PASS  settlement.signature:" in out and "PASS  settlement.contract:" in out
    assert out.strip().splitlines()[-1] == "NOT VERIFIED: proofs.settlement: no proof for the settlement hash " \
                                           "(not anchored yet)"
    assert main(["verify", str(doc), "--offline", "--settlement-pubkey", SUPPLIER_KEY.pubkey_hex]) == 1
    assert "settlement.signature: bad signature: the summary is signed by" in capsys.readouterr().out
    assert main(["verify", str(doc), "--offline", "--settlement-pubkey", "02zz"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("p2pep verify: --settlement-pubkey") and "\n" not in err


def test_env_min_confirmations_and_connection(tmp_path: Path, chain: FakeChain, capsys: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    doc = write_doc(tmp_path, chain, confirmations=2)
    c = tmp_path / "env.cert"
    c.write_text("x")
    monkeypatch.setenv("P2PEP_BTCD_RPC", "10.0.0.1:18334")
    monkeypatch.setenv("P2PEP_BTCD_USER", "eu")
    monkeypatch.setenv("P2PEP_BTCD_PASS", "ep")
    monkeypatch.setenv("P2PEP_BTCD_CERT", str(c))
    monkeypatch.setenv("P2PEP_MIN_CONFIRMATIONS", "3")
    assert main(["verify", str(doc)]) == 1
    assert chain.seen[-1] == BtcdRpcConfig("10.0.0.1:18334", "eu", "ep", str(c))  # type: ignore[attr-defined]
    assert "not enough confirmations: 2 < 3" in capsys.readouterr().out


def test_regtest_state_gives_defaults(tmp_path: Path, chain: FakeChain, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("p2pep.regtest.run_dir")
    from p2pep.regtest.run_dir import save_state

    run_dir = tmp_path / "net"
    (run_dir / "btcd").mkdir(parents=True)
    (run_dir / "btcd" / "rpc.cert").write_text("x")
    save_state(run_dir, {"btcd": {"rpc_port": 18999, "p2p_port": 19000, "dir": str(run_dir / "btcd")}})
    monkeypatch.setenv("P2PEP_RUN_DIR", str(run_dir))
    doc = write_doc(tmp_path, chain)
    assert main(["verify", str(doc)]) == 0
    assert chain.seen[-1].host == "127.0.0.1:18999"  # type: ignore[attr-defined]


def test_offline_needs_no_connection(tmp_path: Path, chain: FakeChain, capsys: Any) -> None:
    doc = write_doc(tmp_path, chain)
    assert main(["verify", str(doc), "--offline"]) == 0
    assert "offline" in capsys.readouterr().out
    assert chain.seen == []  # type: ignore[attr-defined]


def test_missing_connection_is_a_usage_error(tmp_path: Path, chain: FakeChain, capsys: Any) -> None:
    doc = write_doc(tmp_path, chain)
    assert main(["verify", str(doc), "--btcd-rpc", "127.0.0.1:1"]) == 2
    assert "missing --btcd-user, --btcd-pass, --btcd-cert" in capsys.readouterr().err


def test_bad_environment_is_a_usage_error_in_one_line(tmp_path: Path, chain: FakeChain, capsys: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P2PEP_MIN_CONFIRMATIONS", "zero")
    assert main(["verify", str(write_doc(tmp_path, chain)), "--offline"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("p2pep verify: bad environment: P2PEP_MIN_CONFIRMATIONS: ") and err.count("\n") == 1


def test_unreadable_file_and_bad_json(tmp_path: Path, chain: FakeChain, capsys: Any) -> None:
    assert main(["verify", str(tmp_path / "nope.json"), "--offline"]) == 2
    assert "cannot read" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["verify", str(bad), "--offline"]) == 2
    cap = capsys.readouterr()
    assert cap.err.startswith(f"p2pep verify: {bad}: malformed document: $: not JSON") and cap.err.count("\n") == 1
    assert cap.out == ""


def test_chain_down_exits_three(tmp_path: Path, chain: FakeChain, capsys: Any) -> None:
    doc = write_doc(tmp_path, chain)
    chain.unavailable = True
    assert main(["verify", str(doc), *cert(tmp_path)]) == 3
    assert "chain: chain unavailable" in capsys.readouterr().out
