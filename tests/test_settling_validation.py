"""Reading ingestion: forgeries, replays and backwards registers are refused with a
reason; identical resends are acknowledged as duplicates and stored once."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from p2pep.metering.readings import Reading, SignedReading
from p2pep.metering.signing import MeterKey
from p2pep.settling.validation import (
    Accepted,
    Duplicate,
    Rejected,
    RejectReason,
    StreamBook,
    StreamHead,
    validate_reading,
)

KEY_A = MeterKey.from_hex("a1" * 32)
KEY_B = MeterKey.from_hex("b2" * 32)


def book() -> StreamBook:
    return StreamBook({"a": KEY_A.pubkey_hex, "b": KEY_B.pubkey_hex})


def signed(seq: int, imp: int, exp: int = 0, ts: int | None = None, meter: str = "a", key: MeterKey = KEY_A) -> SignedReading:
    return key.sign_reading(Reading(meter, seq, imp, exp, 1000 * seq if ts is None else ts))


def reason(v: object) -> RejectReason | None:
    return v.reason if isinstance(v, Rejected) else None


def test_a_clean_stream_is_accepted() -> None:
    b = book()
    for seq in range(1, 6):
        v = b.submit(signed(seq, 10 * seq, seq))
        assert isinstance(v, Accepted) and v.ok and v.seq_gap == 0
    assert [r.seq for r in b.readings("a")] == [1, 2, 3, 4, 5]
    assert b.head("a") == StreamHead(5, 50, 5, 5000)


def test_identical_resend_is_an_idempotent_duplicate() -> None:
    b = book()
    first = signed(1, 10)
    b.submit(first)
    b.submit(signed(2, 20))
    again = b.submit(first)
    assert isinstance(again, Duplicate) and again.ok and again.duplicate
    assert [r.seq for r in b.readings("a")] == [1, 2]
    assert b.head("a") == StreamHead(2, 20, 0, 2000)


def test_reused_seq_with_other_content_is_a_replay() -> None:
    b = book()
    b.submit(signed(1, 10))
    b.submit(signed(2, 20))
    v = b.submit(signed(2, 25))
    assert reason(v) is RejectReason.REPLAYED_SEQUENCE and v.field == "seq"  # type: ignore[union-attr]
    assert reason(b.submit(signed(1, 25, ts=5000))) is RejectReason.REPLAYED_SEQUENCE
    assert [r.import_wh for r in b.readings("a")] == [10, 20]


def test_forgery_is_refused_before_anything_else() -> None:
    b = book()
    b.submit(signed(1, 10))
    forged = SignedReading(Reading("a", 2, 5, 0, 2000), KEY_B.sign_reading(Reading("a", 2, 5, 0, 2000)).signature)
    assert reason(b.submit(forged)) is RejectReason.FORGED_SIGNATURE
    tampered = SignedReading(Reading("a", 2, 999, 0, 2000), signed(2, 20).signature)
    assert reason(b.submit(tampered)) is RejectReason.FORGED_SIGNATURE
    assert reason(b.submit(SignedReading(Reading("a", 2, 20, 0, 2000), b"garbage"))) is RejectReason.FORGED_SIGNATURE
    other_key_claimed = KEY_B.sign_reading(Reading("a", 2, 20, 0, 2000))
    v = b.submit(other_key_claimed, claimed_pubkey_hex=KEY_B.pubkey_hex)
    assert reason(v) is RejectReason.FORGED_SIGNATURE and v.field == "pubkey"  # type: ignore[union-attr]
    assert isinstance(b.submit(signed(2, 20), claimed_pubkey_hex=KEY_A.pubkey_hex.upper()), Accepted)
    assert len(b.readings("a")) == 2


def test_registers_and_time_must_not_run_backwards() -> None:
    b = book()
    b.submit(signed(1, 100, 50))
    v = b.submit(signed(2, 99, 50))
    assert reason(v) is RejectReason.REGISTER_BACKWARDS and v.field == "import_wh"  # type: ignore[union-attr]
    v = b.submit(signed(2, 100, 49))
    assert reason(v) is RejectReason.REGISTER_BACKWARDS and v.field == "export_wh"  # type: ignore[union-attr]
    assert reason(b.submit(signed(2, 100, 50, ts=999))) is RejectReason.TIMESTAMP_BACKWARDS
    assert isinstance(b.submit(signed(2, 100, 50, ts=1000)), Accepted)  # standing still is fine


def test_unknown_meter_mismatch_and_malformed() -> None:
    b = book()
    key_c = MeterKey.generate()
    assert reason(b.submit(signed(1, 1, meter="c", key=key_c))) is RejectReason.UNKNOWN_METER
    assert reason(b.submit(signed(1, 1, meter="b", key=KEY_B), stream_meter_id="a")) is RejectReason.METER_MISMATCH
    assert reason(b.submit(signed(0, 1))) is RejectReason.MALFORMED
    assert reason(b.submit(signed(1, -1))) is RejectReason.MALFORMED
    assert reason(b.submit(SignedReading(Reading("a", 1, 1.5, 0, 0), b""))) is RejectReason.MALFORMED  # type: ignore[arg-type]
    b.register("c", key_c.pubkey_hex)
    assert isinstance(b.submit(signed(1, 1, meter="c", key=key_c)), Accepted)


def test_gaps_are_accepted_and_reported() -> None:
    b = book()
    b.submit(signed(1, 1))
    v = b.submit(signed(4, 2))
    assert isinstance(v, Accepted) and v.seq_gap == 2
    # a seq inside the gap was never stored: it cannot be a duplicate, so it is a replay
    assert reason(b.submit(signed(3, 2))) is RejectReason.REPLAYED_SEQUENCE


def test_pure_core_needs_stored_reading_for_duplicates() -> None:
    s = signed(3, 30)
    head = StreamHead(3, 30, 0, 3000)
    assert reason(validate_reading(s, pubkey_hex=KEY_A.pubkey_hex, head=head, stored=None)) is RejectReason.REPLAYED_SEQUENCE
    assert isinstance(validate_reading(s, pubkey_hex=KEY_A.pubkey_hex, head=head, stored=s.reading), Duplicate)


events = st.lists(
    st.one_of(
        st.tuples(st.just("next"), st.integers(0, 30), st.integers(0, 30)),
        st.tuples(st.just("resend"), st.integers(0, 50), st.just(0)),
        st.tuples(st.just("replay"), st.integers(0, 50), st.integers(1, 30)),
        st.tuples(st.just("backwards"), st.integers(1, 30), st.just(0)),
        st.tuples(st.just("forge"), st.integers(0, 30), st.just(0)),
    ),
    max_size=60,
)


@given(events)
def test_stream_property(evs: list[tuple[str, int, int]]) -> None:
    """Only honest new readings are stored; resends never add; attacks never store."""
    b = book()
    sent: list[SignedReading] = []
    imp = exp = 0
    for kind, x, y in evs:
        nxt = len(sent) + 1
        if kind == "next":
            imp, exp = imp + x, exp + y
            s = signed(nxt, imp, exp)
            assert isinstance(b.submit(s), Accepted)
            sent.append(s)
        elif kind == "resend" and sent:
            assert isinstance(b.submit(sent[x % len(sent)]), Duplicate)
        elif kind == "replay" and sent:
            old = sent[x % len(sent)].reading
            assert reason(b.submit(signed(old.seq, old.import_wh + y, old.export_wh))) is RejectReason.REPLAYED_SEQUENCE
        elif kind == "backwards" and imp > 0:
            assert reason(b.submit(signed(nxt, max(0, imp - x), exp))) is RejectReason.REGISTER_BACKWARDS
        elif kind == "forge":
            r = Reading("a", nxt, imp + x, exp, 1000 * nxt)
            assert reason(b.submit(KEY_B.sign_reading(r))) is RejectReason.FORGED_SIGNATURE
        assert b.readings("a") == [s.reading for s in sent]
