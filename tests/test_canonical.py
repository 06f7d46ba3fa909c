from __future__ import annotations

import hashlib

import pytest

from p2pep.canonical import CanonicalError, canonical_json, contract_hash, reading_digest, tagged_hash


def test_canonical_json_is_sorted_and_compact() -> None:
    assert canonical_json({"b": 1, "a": [1, "x"], "c": {"z": True, "y": None}}) == (
        b'{"a":[1,"x"],"b":1,"c":{"y":null,"z":true}}'
    )


def test_floats_are_refused() -> None:
    with pytest.raises(CanonicalError, match=r"\$\.energy: floats"):
        canonical_json({"energy": 1.5})


def test_tagged_hash_matches_bip340_definition() -> None:
    t = hashlib.sha256(b"TAG").digest()
    assert tagged_hash("TAG", b"m") == hashlib.sha256(t + t + b"m").digest()


def test_domains_are_separated() -> None:
    doc = {"v": 1}
    assert contract_hash(doc) != tagged_hash("P2PEP/reading/v1", canonical_json(doc))
    assert reading_digest("m", 1, 2, 3, 4) != reading_digest("m", 1, 2, 3, 5)
