"""Check a contract document: its hashes, signatures and Merkle proofs offline, then against the chain.

Signatures (``signed=True``, what ``p2pep verify`` always runs): each meter's signature over
the contract hash verifies against that meter's key as the terms name it (the key it
registered; the terms are what the hash commits to); the settlement summary is about these
terms (its ``contract_hash`` is the hash of the terms and its ``contract_id`` theirs); and
settlement's signature over the summary's hash verifies against the key the document gives
(or, pinned, the operator's settlement key). ``signed=False`` checks anchoring only (hashes
and proofs), for callers that anchor leaves of their own.

Every check has a stable name (``contract_hash``, ``proofs[0].merkle_path``,
``proofs[0].confirmations``...), a status (pass / fail / skip: not run because a check it
depends on failed) and an exact message.  The document is verified iff every check passes.

Trust: the node is the source of chain truth.  We check that the proof's transaction is in
the stated block, that the block is the best chain's block at the stated height and deep
enough, and that its OP_RETURN carries the root the leaf's path leads to.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from p2pep.anchor import opreturn
from p2pep.anchor.chain import ChainNotFound, ChainUnavailable, ChainView
from p2pep.anchor.document import (
    PARTIES,
    AnchorProof,
    ContractDocument,
    DocumentError,
    parse_document,
)
from p2pep.anchor.merkle import MerkleError, root_from_path
from p2pep.canonical import CanonicalError, contract_hash, settlement_hash
from p2pep.metering.signing import is_valid_pubkey, verify_digest

DEFAULT_MIN_CONFIRMATIONS = 1
Status = Literal["pass", "fail", "skip"]
CHAIN_CHECKS = ("tx_found", "op_return", "root_in_tx", "block", "best_chain", "confirmations")


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    message: str

    @property
    def ok(self) -> bool:
        return self.status == "pass"


@dataclass
class VerifyReport:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def chain_unavailable(self) -> bool:
        return any(c.name == "chain" and c.status == "fail" for c in self.checks)

    def get(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def add(self, name: str, ok: bool, message: str) -> bool:
        self.checks.append(Check(name, "pass" if ok else "fail", message))
        return ok

    def skip(self, names: Iterable[str], why: str) -> None:
        self.checks.extend(Check(n, "skip", f"not checked: {why}") for n in names)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checks": [{"name": c.name, "status": c.status, "message": c.message} for c in self.checks],
            "failed": [c.name for c in self.failures],
        }

    def render(self) -> str:
        lines = [f"  {c.status.upper():4}  {c.name}: {c.message}" for c in self.checks]
        if self.ok:
            lines.append("VERIFIED: all checks passed")
        else:
            failed = self.failures
            lines.append(
                "NOT VERIFIED: " + ("; ".join(f"{c.name}: {c.message}" for c in failed) if failed
                                    else "some checks were not run")
            )
        return "\n".join(lines)


def _hash_check(report: VerifyReport, name: str, what: str, compute: Any,
                content: Mapping[str, Any], stated: bytes) -> None:
    try:
        actual = compute(content)
    except CanonicalError as exc:
        report.add(name, False, f"{what} have no canonical encoding: {exc}")
        return
    if actual == stated:
        report.add(name, True, f"canonical {what} hash to {actual.hex()}")
    else:
        report.add(name, False, f"hash mismatch: canonical {what} hash to {actual.hex()}, "
                                f"the document says {stated.hex()}")


def check_proof_offline(report: VerifyReport, i: int, proof: AnchorProof,
                        expected_leaf: bytes | None) -> None:
    """``proofs[i].leaf_hash`` and ``proofs[i].merkle_path``."""
    p = f"proofs[{i}]"
    if expected_leaf is None:
        report.add(f"{p}.leaf_hash", False, f"proof is for the {proof.leaf}, but the document has none")
    elif proof.leaf_hash == expected_leaf:
        report.add(f"{p}.leaf_hash", True, f"leaf is the document's {proof.leaf}_hash")
    else:
        report.add(f"{p}.leaf_hash", False,
                   f"leaf hash mismatch: proof leaf is {proof.leaf_hash.hex()}, the document's "
                   f"{proof.leaf}_hash is {expected_leaf.hex()}")
    try:
        root = root_from_path(proof.leaf_hash, proof.leaf_index, proof.tree_size, proof.path)
    except MerkleError as exc:
        report.add(f"{p}.merkle_path", False, f"path mismatch: malformed proof: {exc}")
        return
    if root == proof.root:
        report.add(f"{p}.merkle_path", True,
                   f"leaf {proof.leaf_index} of {proof.tree_size} with {len(proof.path)} "
                   f"path elements leads to root {root.hex()}")
    else:
        report.add(f"{p}.merkle_path", False,
                   f"path mismatch: leaf {proof.leaf_index} of {proof.tree_size} with this path "
                   f"leads to root {root.hex()}, the proof says {proof.root.hex()}")


def _parse(doc: ContractDocument | Mapping[str, Any], report: VerifyReport) -> ContractDocument | None:
    if isinstance(doc, ContractDocument):
        return doc
    try:
        parsed = parse_document(doc)
    except DocumentError as exc:
        report.add("document", False, f"malformed document: {exc}")
        return None
    report.add("document", True, f"document version 2 with {len(parsed.proofs)} proof(s)")
    return parsed


def _hash_or_none(compute: Any, content: Mapping[str, Any]) -> bytes | None:
    try:
        return bytes(compute(content))
    except CanonicalError:
        return None


def check_signatures(report: VerifyReport, d: ContractDocument, settlement_pubkey: str | None = None) -> None:
    """``signatures.consumer``, ``signatures.supplier``, and with a summary ``settlement.contract``
    and ``settlement.signature``."""
    terms_hash = _hash_or_none(contract_hash, d.terms)
    for party in PARTIES:
        name, key = f"signatures.{party}", d.terms.get(f"{party}_pubkey")
        sig = d.signatures.get(party)
        if terms_hash is None:
            report.skip([name], "terms have no canonical encoding")
        elif not isinstance(key, str) or not is_valid_pubkey(key):
            report.add(name, False, f"bad signature: the terms give no valid {party}_pubkey")
        elif sig is None:
            report.add(name, False, f"bad signature: the document has no {party} signature over the terms")
        elif verify_digest(sig, terms_hash, key):
            report.add(name, True, f"the {party}'s key {key[:16]}... signed the terms")
        else:
            report.add(name, False, f"bad signature: the {party} signature does not verify against "
                                    f"{party}_pubkey {key} over the terms' hash")
    if d.settlement is None:
        return
    stated, cid = d.settlement.get("contract_hash"), d.settlement.get("contract_id")
    if terms_hash is None:
        report.skip(["settlement.contract"], "terms have no canonical encoding")
    elif stated != terms_hash.hex():
        report.add("settlement.contract", False, f"summary of another contract: its contract_hash {stated!r} is "
                                                 f"not the hash of the terms {terms_hash.hex()}")
    elif cid != d.terms.get("contract_id"):
        report.add("settlement.contract", False, f"summary of another contract: its contract_id {cid!r} is not "
                                                 f"the terms' {d.terms.get('contract_id')!r}")
    else:
        report.add("settlement.contract", True, "the summary's contract_hash is the hash of the terms")
    summary_hash = _hash_or_none(settlement_hash, d.settlement)
    ss = d.settlement_signature
    if summary_hash is None:
        report.skip(["settlement.signature"], "summary has no canonical encoding")
    elif ss is None:
        report.add("settlement.signature", False, "bad signature: the summary is not signed by settlement")
    elif settlement_pubkey is not None and ss.pubkey != settlement_pubkey.lower():
        report.add("settlement.signature", False, f"bad signature: the summary is signed by {ss.pubkey}, not by "
                                                  f"settlement's key {settlement_pubkey.lower()}")
    elif verify_digest(ss.signature, summary_hash, ss.pubkey):
        pinned = " (the pinned key)" if settlement_pubkey is not None else ""
        report.add("settlement.signature", True, f"settlement's key {ss.pubkey[:16]}...{pinned} signed the summary")
    else:
        report.add("settlement.signature", False, f"bad signature: settlement's signature does not verify against "
                                                  f"{ss.pubkey} over the summary's hash")


def _verify_offline(doc: ContractDocument | Mapping[str, Any], signed: bool = True,
                    settlement_pubkey: str | None = None) -> tuple[VerifyReport, ContractDocument | None]:
    report = VerifyReport()
    d = _parse(doc, report)
    if d is None:
        return report, None
    _hash_check(report, "contract_hash", "terms", contract_hash, d.terms, d.contract_hash)
    if d.settlement is None and d.settlement_hash is None:
        report.add("settlement_hash", True, "no settlement yet (contract not ended)")
    elif d.settlement is None or d.settlement_hash is None:
        report.add("settlement_hash", False, "settlement and settlement_hash must both be present or both null")
    else:
        _hash_check(report, "settlement_hash", "settlement summary", settlement_hash,
                    d.settlement, d.settlement_hash)
    kinds = {p.leaf for p in d.proofs}
    report.add("proofs.contract", "contract" in kinds,
               "contract hash has a proof" if "contract" in kinds else "no proof for the contract hash (not anchored yet)")
    if d.settlement_hash is not None:
        report.add("proofs.settlement", "settlement" in kinds,
                   "settlement hash has a proof" if "settlement" in kinds
                   else "no proof for the settlement hash (not anchored yet)")
    if signed:
        check_signatures(report, d, settlement_pubkey)
    for i, proof in enumerate(d.proofs):
        expected = d.contract_hash if proof.leaf == "contract" else d.settlement_hash
        check_proof_offline(report, i, proof, expected)
    return report, d


def verify_offline(doc: ContractDocument | Mapping[str, Any], *, signed: bool = True,
                   settlement_pubkey: str | None = None) -> VerifyReport:
    """Hashes, signatures (unless ``signed=False``), leaf hashes and Merkle paths; no chain access."""
    return _verify_offline(doc, signed, settlement_pubkey)[0]


def _find_root(tx: Mapping[str, Any], vout: int) -> bytes:
    """Root in output ``vout`` of a verbose tx; OpReturnError says what is wrong."""
    outs = tx.get("vout") or []
    for out in outs:
        if out.get("n") == vout:
            try:
                script = bytes.fromhex(out["scriptPubKey"]["hex"])
            except (KeyError, TypeError, ValueError):
                raise opreturn.OpReturnError(f"output {vout} has no readable scriptPubKey") from None
            return opreturn.decode_script(script)
    raise opreturn.OpReturnError(f"output not OP_RETURN: tx has no output {vout} (it has {len(outs)})")


async def check_proof_on_chain(report: VerifyReport, i: int, proof: AnchorProof,
                               chain: ChainView, min_confirmations: int, best_height: int) -> None:
    """The chain checks of one proof (ChainUnavailable propagates)."""
    p = f"proofs[{i}]"
    names = [f"{p}.{n}" for n in CHAIN_CHECKS]
    try:
        tx = await chain.get_raw_transaction(proof.txid)
    except ChainNotFound:
        report.add(names[0], False, f"tx not found: the node has no transaction {proof.txid}")
        report.skip(names[1:], "tx not found")
        return
    report.add(names[0], True, f"tx {proof.txid} found")

    try:
        root = _find_root(tx, proof.vout)
    except opreturn.OpReturnError as exc:
        msg = str(exc)
        report.add(names[1], False, msg if msg.startswith("output not OP_RETURN") else
                   f"output {proof.vout} is not a P2PEP OP_RETURN: {msg}")
        report.skip(names[2:3], "no anchor output")
    else:
        report.add(names[1], True, f"output {proof.vout} is OP_RETURN 'P2PEP' v{opreturn.VERSION} <root>")
        if root == proof.root:
            report.add(names[2], True, f"tx carries root {root.hex()}")
        else:
            report.add(names[2], False, f"root mismatch: output {proof.vout} carries root {root.hex()}, "
                                        f"the proof says {proof.root.hex()}")

    tx_block = tx.get("blockhash")
    if not tx_block:
        report.add(names[3], False, f"tx {proof.txid} is not in a block (unconfirmed, or its block "
                                    f"left the best chain)")
        report.skip(names[4:], "tx not in a block")
        return
    if tx_block != proof.block_hash:
        report.add(names[3], False, f"block mismatch: tx is in block {tx_block}, the proof says {proof.block_hash}")
        report.skip(names[4:], "block mismatch")
        return
    try:
        header = await chain.get_block_header(proof.block_hash)
    except ChainNotFound:
        report.add(names[3], False, f"block {proof.block_hash} not found")
        report.skip(names[4:], "block not found")
        return
    height = header.get("height")
    if height is not None and height != proof.height:
        report.add(names[3], False, f"height mismatch: block {proof.block_hash} is at height {height}, "
                                    f"the proof says {proof.height}")
        report.skip(names[4:], "height mismatch")
        return
    report.add(names[3], True, f"tx is in block {proof.block_hash}")

    try:
        at_height: str | None = await chain.get_block_hash(proof.height)
    except ChainNotFound:
        at_height = None
    confs_hdr = header.get("confirmations")
    in_best = at_height == proof.block_hash and (confs_hdr is None or confs_hdr > 0)
    if not in_best:
        now = f"height {proof.height} now has block {at_height}" if at_height else \
              f"the best chain is below height {proof.height}"
        report.add(names[4], False, f"not in best chain: block {proof.block_hash} was orphaned ({now})")
        report.skip(names[5:], "not in best chain")
        return
    report.add(names[4], True, f"block is the best chain's block at height {proof.height}")
    confs = best_height - proof.height + 1
    report.add(names[5], confs >= min_confirmations,
               f"{confs} confirmation(s), {min_confirmations} required" if confs >= min_confirmations
               else f"not enough confirmations: {confs} < {min_confirmations} required")


async def verify_document(doc: ContractDocument | Mapping[str, Any], chain: ChainView,
                          min_confirmations: int = DEFAULT_MIN_CONFIRMATIONS, *, signed: bool = True,
                          settlement_pubkey: str | None = None) -> VerifyReport:
    """All offline checks, then each proof against the chain."""
    report, d = _verify_offline(doc, signed, settlement_pubkey)
    if d is None or not d.proofs:
        return report
    try:
        best = await chain.get_best_height()
        for i, proof in enumerate(d.proofs):
            await check_proof_on_chain(report, i, proof, chain, min_confirmations, best)
    except ChainUnavailable as exc:
        done = {c.name for c in report.checks}
        report.add("chain", False, f"chain unavailable: {exc}")
        report.skip([f"proofs[{i}].{n}" for i in range(len(d.proofs)) for n in CHAIN_CHECKS
                     if f"proofs[{i}].{n}" not in done], "chain unavailable")
    return report
