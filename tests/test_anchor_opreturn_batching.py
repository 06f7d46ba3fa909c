from __future__ import annotations

import pytest

from p2pep.anchor import opreturn
from p2pep.anchor.batching import BatchPolicy, PendingLeaf, close_batches

ROOT = bytes(range(32))


def test_payload_layout() -> None:
    p = opreturn.encode_payload(ROOT)
    assert p == b"P2PEP\x01" + ROOT
    assert len(p) == 38 <= 80
    assert opreturn.decode_payload(p) == ROOT


def test_script_layout_round_trip() -> None:
    s = opreturn.encode_script(ROOT)
    assert s[:2] == b"\x6a\x26" and len(s) == 40
    assert opreturn.decode_script(s) == ROOT


@pytest.mark.parametrize(
    "script, message",
    [
        (b"", "output script is empty"),
        (bytes.fromhex("0014") + b"\x11" * 20, "output is not OP_RETURN: script starts 0x00"),
        (b"\x6a", "OP_RETURN push is nothing"),
        (b"\x6a\x4c\x26" + b"P2PEP\x01" + ROOT, "OP_RETURN push is 0x4c, expected a direct push of 38"),
        (b"\x6a\x26" + b"P2PEX\x01" + ROOT, "payload tag is b'P2PEX'"),
        (b"\x6a\x26" + b"P2PEP\x02" + ROOT, "payload version is 2"),
        (b"\x6a\x26" + b"P2PEP\x01" + ROOT + b"\x00", "OP_RETURN script is 41 bytes"),
        (b"\x6a\x26" + b"P2PEP\x01" + ROOT[:31], "OP_RETURN script is 39 bytes"),
    ],
)
def test_script_errors_say_what_is_wrong(script: bytes, message: str) -> None:
    with pytest.raises(opreturn.OpReturnError, match=message.replace("(", r"\(")):
        opreturn.decode_script(script)


def test_payload_rejects_bad_root() -> None:
    with pytest.raises(opreturn.OpReturnError, match="root is 31 bytes"):
        opreturn.encode_payload(ROOT[:31])


def pend(n: int, height: int, start: int = 0) -> list[PendingLeaf[int]]:
    return [PendingLeaf(start + i, height) for i in range(n)]


def test_batch_closes_on_leaf_count_first() -> None:
    policy = BatchPolicy(every_blocks=10, max_leaves=3)
    out = close_batches(pend(7, 100), 100, policy)
    assert [b.keys for b in out] == [(0, 1, 2), (3, 4, 5)]
    assert [b.reason for b in out] == ["full", "full"]


def test_batch_closes_on_age_first() -> None:
    policy = BatchPolicy(every_blocks=2, max_leaves=100)
    leaves = pend(2, 100) + pend(1, 101, start=2)
    assert close_batches(leaves, 101, policy) == []
    (b,) = close_batches(leaves, 102, policy)
    assert b.keys == (0, 1, 2) and b.reason == "age"


def test_remainder_after_full_batch_ages_from_its_oldest_leaf() -> None:
    policy = BatchPolicy(every_blocks=1, max_leaves=2)
    out = close_batches(pend(3, 100), 100, policy)
    assert [b.keys for b in out] == [(0, 1)]
    out = close_batches(pend(1, 100, start=2), 101, policy)
    assert [(b.keys, b.reason) for b in out] == [((2,), "age")]


def test_nothing_pending_nothing_closes() -> None:
    assert close_batches([], 10**6, BatchPolicy()) == []


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="every_blocks"):
        BatchPolicy(every_blocks=0)
    with pytest.raises(ValueError, match="max_leaves"):
        BatchPolicy(max_leaves=0)
