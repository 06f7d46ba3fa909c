"""Anchoring benchmark: on-chain vbytes per contract, proof size, verify time per proof.

Run: ``.venv/bin/python bench/bench_anchor.py [--json bench/results/anchor.json]``

Transaction shapes (serialized for real below, weight = 3 * base size + total size, BIP 141):
one input spent from the operator's wallet, one OP_RETURN output (value 0, the 40-byte
P2PEP script) and one change output, version 2, locktime 0.

* P2WPKH: empty scriptSig; witness = <72-byte DER signature incl. sighash byte> <33-byte
  compressed key> (72 is the common upper size; LND grinds low-R signatures to 71, so
  real transactions can be 0.25 vB smaller); change to P2WPKH (22-byte script).
* P2TR key path: empty scriptSig; witness = <64-byte Schnorr signature> (SIGHASH_DEFAULT);
  change to P2TR (34-byte script).

The baseline is one such transaction per contract.  A contract that also has a settlement
anchors two leaves; the "with settlement" column counts both.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import struct
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from p2pep.anchor import opreturn
from p2pep.anchor.document import AnchorProof, build_document
from p2pep.anchor.merkle import MerkleTree, verify_proof
from p2pep.anchor.verify import verify_offline
from p2pep.canonical import contract_hash

SIZES = (1, 100, 1_000, 100_000)


def varint(n: int) -> bytes:
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + struct.pack("<H", n)
    return b"\xfe" + struct.pack("<I", n)


def tx_weight(witness_items: list[int], change_script_len: int) -> tuple[int, int, int]:
    """(base size, total size, weight) of the 1-in, OP_RETURN + change, segwit tx."""
    outpoint = b"\x00" * 36
    txin = outpoint + varint(0) + b"\xff\xff\xff\xff"
    op_ret = opreturn.encode_script(b"\x00" * 32)
    outs = [struct.pack("<q", 0) + varint(len(op_ret)) + op_ret,
            struct.pack("<q", 10_000) + varint(change_script_len) + b"\x00" * change_script_len]
    body = varint(1) + txin + varint(len(outs)) + b"".join(outs)
    base = struct.pack("<i", 2) + body + struct.pack("<I", 0)
    witness = varint(len(witness_items)) + b"".join(varint(n) + b"\x00" * n for n in witness_items)
    total = struct.pack("<i", 2) + b"\x00\x01" + body + witness + struct.pack("<I", 0)
    return len(base), len(total), 3 * len(base) + len(total)


SHAPES = {
    "p2wpkh": tx_weight([72, 33], 22),
    "p2tr": tx_weight([64], 34),
}


def vbytes(shape: str) -> int:
    return math.ceil(SHAPES[shape][2] / 4)


def median_ns(fn: Any, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t0)
    return statistics.median(samples)


def bench_size(n: int, samples: int) -> dict[str, Any]:
    terms = [{"v": 1, "contract_id": f"c-{i}", "energy_wh": 1000 + i, "price_msat_per_kwh": 150_000}
             for i in range(n)]
    leaves = [contract_hash(t) for t in terms]
    t0 = time.perf_counter()
    tree = MerkleTree(leaves)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    paths = tree.proofs()
    all_proofs_s = time.perf_counter() - t0

    step = max(1, n // samples)
    idxs = sorted(set(range(0, n, step)) | {n - 1})
    txid, block = "ab" * 32, "cd" * 32
    json_sizes, path_sizes, compact_sizes, raw_ns, doc_ns = [], [], [], [], []
    for i in idxs:
        proof = AnchorProof("contract", leaves[i], i, n, tuple(paths[i]), tree.root, txid, block, 840_000, 1)
        pj = proof.to_json()
        json_sizes.append(len(json.dumps(pj, separators=(",", ":"))))
        path_sizes.append(32 * len(paths[i]))
        compact_sizes.append(len(proof.to_bytes()))
        raw_ns.append(median_ns(lambda i=i: verify_proof(leaves[i], i, n, paths[i], tree.root), 21))
        doc = build_document(terms[i], None, [proof]).to_json()
        assert verify_offline(doc, signed=False).ok
        doc_ns.append(median_ns(lambda doc=doc: verify_offline(doc, signed=False), 11))
    return {
        "contracts_per_batch": n,
        "vbytes_per_contract": {s: vbytes(s) / n for s in SHAPES},
        "vbytes_per_contract_with_settlement": {s: 2 * vbytes(s) / n for s in SHAPES},
        "baseline_vbytes_per_contract": {s: vbytes(s) for s in SHAPES},
        "proof_json_bytes_max": max(json_sizes),
        "proof_json_bytes_median": statistics.median(json_sizes),
        "path_raw_bytes_max": max(path_sizes),
        "proof_compact_bytes_max": max(compact_sizes),
        "path_elements_max": max(path_sizes) // 32,
        "verify_path_us_median": statistics.median(raw_ns) / 1000,
        "verify_offline_doc_us_median": statistics.median(doc_ns) / 1000,
        "tree_build_s": build_s,
        "all_proofs_s": all_proofs_s,
        "sampled_proofs": len(idxs),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=200, help="proofs sampled per batch size")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    for s, (base, total, weight) in SHAPES.items():
        print(f"{s:7} anchor tx: base {base} B, total {total} B, weight {weight} WU, {vbytes(s)} vB")
    rows = [bench_size(n, args.samples) for n in SIZES]
    print()
    print("| contracts/batch | vB/contract P2WPKH | P2TR | with settlement (P2WPKH) | baseline vB/contract "
          "| proof JSON B (max) | proof binary B (max) | path raw B (max) | verify path µs | verify_offline doc µs |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        v = r["vbytes_per_contract"]
        print(f"| {r['contracts_per_batch']:,} | {v['p2wpkh']:.4f} | {v['p2tr']:.4f} "
              f"| {r['vbytes_per_contract_with_settlement']['p2wpkh']:.4f} "
              f"| {r['baseline_vbytes_per_contract']['p2wpkh']} / {r['baseline_vbytes_per_contract']['p2tr']} "
              f"| {r['proof_json_bytes_max']} | {r['proof_compact_bytes_max']} | {r['path_raw_bytes_max']} "
              f"| {r['verify_path_us_median']:.1f} | {r['verify_offline_doc_us_median']:.1f} |")
    big = rows[-1]
    print(f"\n100,000 leaves: tree built in {big['tree_build_s'] * 1000:.0f} ms, all proofs in "
          f"{big['all_proofs_s'] * 1000:.0f} ms")
    at1000 = next(r for r in rows if r["contracts_per_batch"] == 1000)
    goals = {
        "< 0.2 vB/contract at 1,000 (P2WPKH)": at1000["vbytes_per_contract"]["p2wpkh"] < 0.2,
        "proof < 1 KB at 100,000 (compact binary proof)": big["proof_compact_bytes_max"] < 1024,
        "proof < 1 KB at 100,000 (JSON, hex)": big["proof_json_bytes_max"] < 1024,
        "verify < 1 ms per proof (offline, whole document)": all(
            r["verify_offline_doc_us_median"] < 1000 for r in rows),
    }
    for g, ok in goals.items():
        print(f"  {'MET ' if ok else 'MISS'} {g}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"shapes": SHAPES, "rows": rows, "goals": goals}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
