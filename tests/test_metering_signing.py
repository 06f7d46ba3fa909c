"""Meter keys and reading signatures (coincurve, DER ECDSA over the tagged digest)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import coincurve
import pytest

from p2pep.canonical import reading_digest
from p2pep.metering.readings import Reading, SignedReading
from p2pep.metering.signing import KeyFormatError, MeterKey, parse_pubkey, verify_digest, verify_reading

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
KEY = MeterKey.from_hex("11" * 32)
READING = Reading("meter-a", 7, 1234, 56, 1_750_000_000_000)


def test_signature_is_der_ecdsa_over_the_canonical_digest() -> None:
    signed = KEY.sign_reading(READING)
    digest = reading_digest("meter-a", 7, 1234, 56, 1_750_000_000_000)
    assert READING.digest() == digest
    pub = coincurve.PublicKey(bytes.fromhex(KEY.pubkey_hex))
    assert pub.verify(signed.signature, digest, hasher=None)
    assert signed.signature[0] == 0x30  # DER sequence
    assert verify_reading(signed, KEY.pubkey_hex)


@pytest.mark.parametrize(
    "changed",
    [
        Reading("meter-b", 7, 1234, 56, 1_750_000_000_000),
        Reading("meter-a", 8, 1234, 56, 1_750_000_000_000),
        Reading("meter-a", 7, 1235, 56, 1_750_000_000_000),
        Reading("meter-a", 7, 1234, 57, 1_750_000_000_000),
        Reading("meter-a", 7, 1234, 56, 1_750_000_000_001),
    ],
)
def test_any_changed_field_breaks_the_signature(changed: Reading) -> None:
    sig = KEY.sign_reading(READING).signature
    assert not verify_reading(SignedReading(changed, sig), KEY.pubkey_hex)


def test_wrong_key_and_garbage_do_not_verify() -> None:
    signed = KEY.sign_reading(READING)
    other = MeterKey.generate()
    assert not verify_reading(signed, other.pubkey_hex)
    assert not verify_reading(SignedReading(READING, b"\x30\x00"), KEY.pubkey_hex)
    assert not verify_reading(SignedReading(READING, b""), KEY.pubkey_hex)
    assert not verify_reading(signed, "not hex")
    assert not verify_reading(signed, "02" + "00" * 32)
    assert not verify_digest(signed.signature, b"short", KEY.pubkey_hex)


def test_signing_is_deterministic_and_low_s() -> None:
    a, b = KEY.sign_reading(READING), KEY.sign_reading(READING)
    assert a.signature == b.signature
    der = a.signature
    rlen = der[3]
    s_value = int.from_bytes(der[6 + rlen : 6 + rlen + der[5 + rlen]], "big")
    assert s_value <= SECP256K1_N // 2


def test_key_file_round_trip_and_permissions(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "meter.key"
    created = MeterKey.load_or_create(path)
    loaded = MeterKey.load_or_create(path)
    assert created.pubkey_hex == loaded.pubkey_hex
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert created.secret_hex not in repr(created)
    assert len(created.pubkey_hex) == 66 and created.pubkey_hex[:2] in ("02", "03")


@pytest.mark.parametrize("bad", ["zz", "11" * 31, "00" * 32, "ff" * 32])
def test_bad_private_keys_are_refused(bad: str) -> None:
    with pytest.raises(KeyFormatError):
        MeterKey.from_hex(bad)


@pytest.mark.parametrize("bad", ["", "04" + "11" * 32, "02" + "11" * 31, "xyz"])
def test_bad_public_keys_are_refused(bad: str) -> None:
    with pytest.raises(KeyFormatError):
        parse_pubkey(bad)
