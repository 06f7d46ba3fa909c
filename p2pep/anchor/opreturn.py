"""The OP_RETURN output that anchors one batch: only a tag, a version and the root.

Payload (38 bytes, well within the 80-byte standardness limit)::

    offset 0   5 bytes  b"P2PEP"        protocol tag (ASCII)
    offset 5   1 byte   0x01            layout version
    offset 6  32 bytes  root            merkle.MerkleTree(...).root, as raw bytes

Script (40 bytes): ``0x6a`` (OP_RETURN) ``0x26`` (direct push of 38 bytes) ``payload``.
The push is the minimal one for 38 bytes; decoding accepts exactly this form, so one
root has exactly one script.  Nothing else (no ids, amounts, readings) is ever on-chain.
"""

from __future__ import annotations

TAG = b"P2PEP"
VERSION = 1
ROOT_LEN = 32
PAYLOAD_LEN = len(TAG) + 1 + ROOT_LEN  # 38
OP_RETURN = 0x6A
SCRIPT_LEN = 2 + PAYLOAD_LEN  # 40


class OpReturnError(ValueError):
    """A script or payload that is not a P2PEP anchor of the documented layout."""


def encode_payload(root: bytes) -> bytes:
    if len(root) != ROOT_LEN:
        raise OpReturnError(f"root is {len(root)} bytes, expected {ROOT_LEN}")
    return TAG + bytes([VERSION]) + root


def decode_payload(payload: bytes) -> bytes:
    """The root carried by a payload; OpReturnError says what is wrong otherwise."""
    if len(payload) != PAYLOAD_LEN:
        raise OpReturnError(f"payload is {len(payload)} bytes, expected {PAYLOAD_LEN}")
    if payload[: len(TAG)] != TAG:
        raise OpReturnError(f"payload tag is {payload[:len(TAG)]!r}, expected {TAG!r}")
    version = payload[len(TAG)]
    if version != VERSION:
        raise OpReturnError(f"payload version is {version}, expected {VERSION}")
    return payload[len(TAG) + 1 :]


def encode_script(root: bytes) -> bytes:
    """scriptPubKey of the anchor output: OP_RETURN <38-byte payload>."""
    return bytes([OP_RETURN, PAYLOAD_LEN]) + encode_payload(root)


def decode_script(script: bytes) -> bytes:
    """The root in an anchor scriptPubKey; OpReturnError names the first mismatch."""
    if not script:
        raise OpReturnError("output script is empty, expected OP_RETURN (0x6a)")
    if script[0] != OP_RETURN:
        raise OpReturnError(f"output is not OP_RETURN: script starts 0x{script[0]:02x}, expected 0x6a")
    if len(script) < 2 or script[1] != PAYLOAD_LEN:
        got = f"0x{script[1]:02x}" if len(script) >= 2 else "nothing"
        raise OpReturnError(
            f"OP_RETURN push is {got}, expected a direct push of {PAYLOAD_LEN} bytes (0x{PAYLOAD_LEN:02x})"
        )
    if len(script) != SCRIPT_LEN:
        raise OpReturnError(f"OP_RETURN script is {len(script)} bytes, expected {SCRIPT_LEN}")
    return decode_payload(script[2:])
