"""The self-contained contract document: terms, hashes, settlement summary and proofs.

A verifier needs this JSON, the construction in ``docs/anchoring.md`` and a Bitcoin node;
nothing from P2PEP.  Shape (``version`` 2)::

    {
      "version": 2,
      "terms": {...canonical contract terms...},
      "contract_hash": "<64 hex>",          # tagged_hash("P2PEP/contract/v1", canonical_json(terms))
      "signatures": {"consumer": "<DER hex>", "supplier": "<DER hex>"},  # over contract_hash, by the
                                            # terms' consumer_pubkey / supplier_pubkey
      "settlement": {...summary...} | null,
      "settlement_hash": "<64 hex>" | null, # tagged_hash("P2PEP/settlement/v1", canonical_json(settlement))
      "settlement_signature": {"pubkey": "<66 hex>", "signature": "<DER hex>"} | null,
                                            # settlement's key over settlement_hash
      "proofs": [
        {"leaf": "contract" | "settlement",
         "leaf_hash": "<64 hex>",           # the contract_hash or settlement_hash
         "leaf_index": 17, "tree_size": 1000,
         "path": ["<64 hex>", ...],         # sibling nodes bottom-up (see merkle.py)
         "root": "<64 hex>",
         "txid": "<64 hex>", "block_hash": "<64 hex>", "height": 431,  # RPC (display) byte order
         "op_return": {"tag": "P2PEP", "version": 1, "vout": 0}}
      ]
    }

Parsing checks structure and types only and names the offending field; whether hashes,
paths and chain data are *right* is :mod:`p2pep.anchor.verify`'s job.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from p2pep.anchor import opreturn
from p2pep.anchor.merkle import MAX_TREE_SIZE, MerkleError, path_length
from p2pep.canonical import contract_hash, settlement_hash

DOCUMENT_VERSION = 2
"""2: the meters' signatures over the terms and settlement's signature over the summary."""
PARTIES = ("consumer", "supplier")
MAX_SIGNATURE_BYTES = 72  # a DER ECDSA signature over secp256k1
COMPACT_VERSION = 1
# version u8 | leaf kind u8 (0 contract, 1 settlement) | leaf_index u32 | tree_size u32 | height u32
# | vout u16 | leaf_hash 32 | root 32 | txid 32 | block_hash 32 | path: path_length(index, size) x 32
_COMPACT_HEAD = struct.Struct(">BBIIIH32s32s32s32s")
LeafKind = Literal["contract", "settlement"]
LEAF_KINDS: tuple[LeafKind, ...] = ("contract", "settlement")


class DocumentError(ValueError):
    """The document is not of the documented shape; ``field`` names where."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _hex32(value: Any, where: str) -> bytes:
    if not isinstance(value, str) or len(value) != 64:
        raise DocumentError(where, "expected 64 hex characters")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise DocumentError(where, "expected 64 hex characters") from None


def _txhash(value: Any, where: str) -> str:
    _hex32(value, where)
    return cast(str, value).lower()


def _int(value: Any, where: str, lo: int = 0, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DocumentError(where, "expected an integer")
    if value < lo or (hi is not None and value > hi):
        raise DocumentError(where, f"{value} out of range {lo}..{'' if hi is None else hi}")
    return value


def _sig(value: Any, where: str) -> bytes:
    if not isinstance(value, str) or not value or len(value) % 2 or len(value) > 2 * MAX_SIGNATURE_BYTES:
        raise DocumentError(where, f"expected a DER signature in hex (at most {MAX_SIGNATURE_BYTES} bytes)")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise DocumentError(where, "expected a DER signature in hex") from None


@dataclass(frozen=True)
class SummarySignature:
    """Settlement's signature over the settlement summary's hash, with its public key."""

    pubkey: str
    signature: bytes

    def to_json(self) -> dict[str, str]:
        return {"pubkey": self.pubkey, "signature": self.signature.hex()}

    @classmethod
    def from_json(cls, obj: Any, where: str) -> SummarySignature:
        d = _obj(obj, where)
        pubkey = d.get("pubkey")
        if not isinstance(pubkey, str) or len(pubkey) != 66:
            raise DocumentError(f"{where}.pubkey", "expected 66 hex characters")
        unknown = set(d) - {"pubkey", "signature"}
        if unknown:
            raise DocumentError(f"{where}.{sorted(unknown)[0]}", "unknown field")
        return cls(pubkey.lower(), _sig(d.get("signature"), f"{where}.signature"))


def _obj(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise DocumentError(where, "expected a JSON object")
    return value


@dataclass(frozen=True)
class AnchorProof:
    """Inclusion of one leaf in one anchored batch."""

    leaf: LeafKind
    leaf_hash: bytes
    leaf_index: int
    tree_size: int
    path: tuple[bytes, ...]
    root: bytes
    txid: str
    block_hash: str
    height: int
    vout: int

    def to_json(self) -> dict[str, Any]:
        return {
            "leaf": self.leaf,
            "leaf_hash": self.leaf_hash.hex(),
            "leaf_index": self.leaf_index,
            "tree_size": self.tree_size,
            "path": [p.hex() for p in self.path],
            "root": self.root.hex(),
            "txid": self.txid,
            "block_hash": self.block_hash,
            "height": self.height,
            "op_return": {
                "tag": opreturn.TAG.decode(),
                "version": opreturn.VERSION,
                "vout": self.vout,
            },
        }

    def to_bytes(self) -> bytes:
        """Compact binary form (for QR codes, logs, size budgets); JSON stays the exchange format.

        Integers big-endian; txid and block_hash in RPC (display) byte order, like the JSON.
        The path length is implied by (leaf_index, tree_size), so nothing is length-prefixed.
        """
        head = _COMPACT_HEAD.pack(
            COMPACT_VERSION, LEAF_KINDS.index(self.leaf), self.leaf_index, self.tree_size - 1,
            self.height, self.vout, self.leaf_hash, self.root, bytes.fromhex(self.txid),
            bytes.fromhex(self.block_hash))
        return head + b"".join(self.path)

    @classmethod
    def from_bytes(cls, data: bytes) -> AnchorProof:
        if len(data) < _COMPACT_HEAD.size:
            raise DocumentError("proof", f"compact proof is {len(data)} bytes, shorter than its header")
        version, kind, index, size_m1, height, vout, leaf, root, txid, block = _COMPACT_HEAD.unpack_from(data)
        if version != COMPACT_VERSION:
            raise DocumentError("proof.version", f"unsupported compact proof version {version}")
        if kind >= len(LEAF_KINDS):
            raise DocumentError("proof.leaf", f"unknown leaf kind {kind}")
        size = size_m1 + 1
        try:
            n = path_length(index, size)
        except MerkleError as exc:
            raise DocumentError("proof.leaf_index", str(exc)) from None
        rest = data[_COMPACT_HEAD.size:]
        if len(rest) != 32 * n:
            raise DocumentError("proof.path", f"{len(rest)} path bytes, index {index} of {size} needs {32 * n}")
        return cls(LEAF_KINDS[kind], leaf, index, size, tuple(rest[i:i + 32] for i in range(0, len(rest), 32)),
                   root, txid.hex(), block.hex(), height, vout)

    @classmethod
    def from_json(cls, obj: Any, where: str = "proof") -> AnchorProof:
        d = _obj(obj, where)
        leaf = d.get("leaf")
        if leaf not in LEAF_KINDS:
            raise DocumentError(f"{where}.leaf", f"expected one of {list(LEAF_KINDS)}")
        size = _int(d.get("tree_size"), f"{where}.tree_size", 1, MAX_TREE_SIZE)
        index = _int(d.get("leaf_index"), f"{where}.leaf_index", 0, size - 1)
        path = d.get("path")
        if not isinstance(path, list):
            raise DocumentError(f"{where}.path", "expected a list of 64-hex strings")
        op = _obj(d.get("op_return"), f"{where}.op_return")
        if op.get("tag") != opreturn.TAG.decode():
            raise DocumentError(f"{where}.op_return.tag", f"expected {opreturn.TAG.decode()!r}")
        if op.get("version") != opreturn.VERSION:
            raise DocumentError(
                f"{where}.op_return.version", f"unsupported layout version {op.get('version')!r}"
            )
        return cls(
            leaf=cast(LeafKind, leaf),
            leaf_hash=_hex32(d.get("leaf_hash"), f"{where}.leaf_hash"),
            leaf_index=index,
            tree_size=size,
            path=tuple(_hex32(p, f"{where}.path[{i}]") for i, p in enumerate(path)),
            root=_hex32(d.get("root"), f"{where}.root"),
            txid=_txhash(d.get("txid"), f"{where}.txid"),
            block_hash=_txhash(d.get("block_hash"), f"{where}.block_hash"),
            height=_int(d.get("height"), f"{where}.height"),
            vout=_int(op.get("vout"), f"{where}.op_return.vout"),
        )


@dataclass(frozen=True)
class ContractDocument:
    terms: Mapping[str, Any]
    contract_hash: bytes
    settlement: Mapping[str, Any] | None = None
    settlement_hash: bytes | None = None
    proofs: tuple[AnchorProof, ...] = field(default=())
    signatures: Mapping[str, bytes] = field(default_factory=dict)
    """The meters' DER signatures over ``contract_hash``, by party (``consumer``, ``supplier``)."""
    settlement_signature: SummarySignature | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": DOCUMENT_VERSION,
            "terms": dict(self.terms),
            "contract_hash": self.contract_hash.hex(),
            "signatures": {k: v.hex() for k, v in self.signatures.items()},
            "settlement": None if self.settlement is None else dict(self.settlement),
            "settlement_hash": None if self.settlement_hash is None else self.settlement_hash.hex(),
            "settlement_signature": None if self.settlement_signature is None else self.settlement_signature.to_json(),
            "proofs": [p.to_json() for p in self.proofs],
        }

    def unanchored(self) -> list[LeafKind]:
        """The leaves this document has a hash for but no proof of yet."""
        has = {p.leaf for p in self.proofs}
        want: list[LeafKind] = ["contract", "settlement"] if self.settlement_hash is not None else ["contract"]
        return [k for k in want if k not in has]


def build_document(
    terms: Mapping[str, Any],
    settlement: Mapping[str, Any] | None = None,
    proofs: Sequence[AnchorProof] = (),
    signatures: Mapping[str, bytes] | None = None,
    settlement_signature: SummarySignature | None = None,
) -> ContractDocument:
    """A document whose hashes are computed here (via p2pep.canonical) from the content."""
    return ContractDocument(
        terms=terms,
        contract_hash=contract_hash(terms),
        settlement=settlement,
        settlement_hash=None if settlement is None else settlement_hash(settlement),
        proofs=tuple(proofs),
        signatures=dict(signatures or {}),
        settlement_signature=settlement_signature,
    )


def parse_document(obj: Any) -> ContractDocument:
    """Structure-checked document; DocumentError names the first bad field."""
    d = _obj(obj, "$")
    if d.get("version") != DOCUMENT_VERSION:
        raise DocumentError("version", f"unsupported document version {d.get('version')!r}")
    terms = _obj(d.get("terms"), "terms")
    settlement = d.get("settlement")
    if settlement is not None:
        settlement = _obj(settlement, "settlement")
    sh = d.get("settlement_hash")
    proofs = d.get("proofs")
    if not isinstance(proofs, list):
        raise DocumentError("proofs", "expected a list")
    sigs = _obj(d.get("signatures"), "signatures")
    unknown = set(sigs) - set(PARTIES)
    if unknown:
        raise DocumentError(f"signatures.{sorted(unknown)[0]}", f"expected only {' and '.join(PARTIES)}")
    ss = d.get("settlement_signature")
    return ContractDocument(
        terms=terms,
        contract_hash=_hex32(d.get("contract_hash"), "contract_hash"),
        settlement=settlement,
        settlement_hash=None if sh is None else _hex32(sh, "settlement_hash"),
        proofs=tuple(AnchorProof.from_json(p, f"proofs[{i}]") for i, p in enumerate(proofs)),
        signatures={k: _sig(v, f"signatures.{k}") for k, v in sigs.items()},
        settlement_signature=None if ss is None else SummarySignature.from_json(ss, "settlement_signature"),
    )


def dumps_document(doc: ContractDocument) -> str:
    """Human-readable JSON (sorted keys, 2-space indent); hashes don't depend on this layout."""
    return json.dumps(doc.to_json(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # JSON parsers disagree on duplicate keys (first vs last wins); a document that reads
    # differently in different tools must not verify, so reject it outright.
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise DocumentError(k, "duplicate key in JSON object")
        out[k] = v
    return out


def loads_document(text: str | bytes) -> ContractDocument:
    """Parse a document from JSON text (duplicate keys rejected)."""
    try:
        obj = json.loads(text, object_pairs_hook=reject_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise DocumentError("$", f"not JSON: {exc}") from None
    return parse_document(obj)
