"""Hostile input to the pure edges and the command line (issue 11, "Hardening that belongs
here"): conversions and canonical encodings refuse what does not fit, `p2pep market clear`
and `p2pep verify` answer any malformed file with one line and a non-zero exit (never a
traceback), the console's times answer 400, and the regtest state file is owner-only."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pep.canonical import CanonicalError, canonical_json
from p2pep.cli import main
from p2pep.oneline import one_line
from p2pep.pbconv import duration_ms, int64, ms_ts, ts_ms
from p2pep.refusals import InvalidArgument
from p2pep.registration import check_address, check_meter_id, check_node_pubkey
from p2pep.regtest.run_dir import load_state, save_state
from p2pep.servicekit.errors import details_of
from p2pep.servicekit.http import BadParam, int_param

# -- conversions -------------------------------------------------------------------------------------


def test_timestamps_outside_years_1_to_9999_are_invalid_arguments() -> None:
    assert ts_ms(Timestamp(seconds=253_402_300_799, nanos=999_999_999)) == 253_402_300_799_999
    assert ms_ts(ts_ms(Timestamp(seconds=253_402_300_799))).seconds == 253_402_300_799
    for ts in (Timestamp(seconds=2**62), Timestamp(seconds=253_402_300_800), Timestamp(seconds=-2**62),
               Timestamp(seconds=1, nanos=-1), Timestamp(seconds=1, nanos=10**9)):
        with pytest.raises(InvalidArgument) as err:
            ts_ms(ts, "order.expiry")
        assert err.value.field == "order.expiry" and err.value.status == "INVALID_ARGUMENT"


def test_durations_and_uint64_beyond_range_are_invalid_arguments() -> None:
    assert duration_ms(Duration(seconds=-1, nanos=-500_000_000)) == -1500
    for d in (Duration(seconds=2**62), Duration(seconds=1, nanos=-1), Duration(seconds=0, nanos=10**9)):
        with pytest.raises(InvalidArgument):
            duration_ms(d, "window")
    assert int64("seq", 2**63 - 1) == 2**63 - 1
    with pytest.raises(InvalidArgument):
        int64("seq", 2**64 - 1)


def test_canonical_json_refuses_lone_surrogates_and_deep_nesting() -> None:
    for doc in ({"a": "\ud800"}, {"\udfff": 1}, ["x\udc00"], {"a": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}):
        with pytest.raises(CanonicalError):
            canonical_json(doc)
    assert canonical_json({"a": "\U0001f600"}) == '{"a":"\U0001f600"}'.encode()


def test_status_details_are_sendable() -> None:
    text = details_of(InvalidArgument("f\ud800", "x" * 5000))
    text.encode("utf-8")
    assert len(text) <= 1024


def test_one_line() -> None:
    assert one_line("a\nb\r\x00\u2028\ud800") == "a\\nb\\r\\x00\\u2028\\ud800"
    assert len(one_line("x" * 1000, 50)) == 50


@pytest.mark.parametrize("raw", ["\u00b2", "\u0663", "-1", "+1", " 1", "1 ", "1e3", "0x1", "", "1" * 400, "0", "501"])
def test_int_param_takes_only_ascii_digits_in_range(raw: str) -> None:
    with pytest.raises(BadParam) as err:
        int_param({"limit": raw}, "limit", 100, 1, 500)
    assert err.value.param == "limit" and str(err.value).count("\n") == 0


def test_int_param() -> None:
    assert int_param({}, "limit", 100, 1, 500) == 100
    assert int_param({"limit": "007"}, "limit", 100, 1, 500) == 7


@pytest.mark.parametrize("value", ["meter-1", "M.1_a", "x" * 64, "9"])
def test_meter_ids(value: str) -> None:
    assert check_meter_id(value) == value


@pytest.mark.parametrize("value", ["", "x" * 65, "m\ud800", "meter@1", "meter 1", ".m", "m\n"])
def test_bad_meter_ids(value: str) -> None:
    with pytest.raises(InvalidArgument):
        check_meter_id(value)


def test_node_pubkeys() -> None:
    assert check_node_pubkey("03" + "AB" * 32) == "03" + "ab" * 32
    for bad in ("", "03" + "ab" * 32 + "\n", "05" + "ab" * 32, "03" + "ab" * 33):
        with pytest.raises(InvalidArgument):
            check_node_pubkey(bad)


@pytest.mark.parametrize("value", ["[fe80::1]:1", "[ff02::1]:1", "[::ffff:0.0.0.0]:1", "255.255.255.255:1",
                                   "240.0.0.1:1", "1.2.3.4:01x", "host.:", "[::1]", "[zz]:1", "a..b:1"])
def test_addresses_nobody_can_serve_from(value: str) -> None:
    with pytest.raises(InvalidArgument):
        check_address(value)


# -- the regtest state file ---------------------------------------------------------------------------


def test_regtest_state_is_owner_only(tmp_path: Path) -> None:
    os.umask(0o022)
    stale = tmp_path / "state.tmp"
    stale.write_text("{}")
    stale.chmod(0o644)
    save_state(tmp_path, {"faucet": {"secret": "11" * 32}, "btcd": {"rpc_pass": "pw"}})
    mode = stat.S_IMODE((tmp_path / "state.json").stat().st_mode)
    assert mode == 0o600, oct(mode)
    assert load_state(tmp_path) == {"faucet": {"secret": "11" * 32}, "btcd": {"rpc_pass": "pw"}}
    (tmp_path / "state.json").chmod(0o644)  # written again: owner-only again
    save_state(tmp_path, {"faucet": {}})
    assert stat.S_IMODE((tmp_path / "state.json").stat().st_mode) == 0o600


# -- the command line: any malformed file gives one line and a non-zero exit ---------------------------


GOOD_ORDER = '{"id":"a","meter_id":"A","side":"supply","energy_wh":5,"price_msat_per_kwh":1}'
MALFORMED: list[bytes] = [
    b"", b"\x00\xff\xfe garbage \x80", b"\xff" * 100, b"{not json", b"[]", b"null", b"42", b'"x"',
    b"[" * 100_000, b"{" * 50_000, b"1" * 5000, b'{"version": 1}', b'{"version": 1e400}',
    b'{"version": 1, "version": 1}', b'{"a\\ud800": 1}', b'{"\\u2028\\n": [1]}',
    b'{"version":1,"terms":{},"contract_hash":"' + b"0" * 64 + b'","proofs":[{"leaf":"contract"}]}',
    b'{"version":1,"terms":{"x":"\\ud800"},"contract_hash":"' + b"0" * 64 + b'","proofs":[]}',
    b'{"version":1,"terms":[],"contract_hash":"' + b"0" * 64 + b'","proofs":{}}',
    b'{"id":"a","meter_id":"A","side":["supply"],"energy_wh":5,"price_msat_per_kwh":1}',
    b'{"id":"a","meter_id":"A","side":"supply","energy_wh":5,"price_msat_per_kwh":1,"partners":[{"x":1}]}',
    b'{"id":"a","meter_id":"A","side":"supply","energy_wh":5,"price_msat_per_kwh":1,"\\ud800\\n":1}',
    b'{"id":{"x":1},"meter_id":"A","side":"supply","energy_wh":5,"price_msat_per_kwh":1}',
    b'{"id":"a","meter_id":"A","side":"supply","energy_wh":1e999,"price_msat_per_kwh":NaN}',
    (GOOD_ORDER + "\n" + GOOD_ORDER).encode(),
    b'{"id":"a","meter_id":"A","side":"supply","energy_wh":99999999999999999999999,"price_msat_per_kwh":1}',
]


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], command: str) -> None:
    try:
        code = main(argv)
    except SystemExit as exc:  # pragma: no cover - what the test forbids
        pytest.fail(f"exited {exc.code} instead of returning")
    cap = capsys.readouterr()
    assert code != 0
    assert "Traceback" not in cap.err + cap.out
    if cap.out:  # a contract document whose content fails checks: verify's report, its last line the verdict
        assert command == "verify" and code == 1 and cap.err == ""
        assert "  PASS  document: " in cap.out, "a malformed document must be a one-line error, not a report"
        assert cap.out.splitlines()[-1].startswith("NOT VERIFIED: "), cap.out
        return
    lines = cap.err.splitlines()
    assert lines and all(line.startswith(("p2pep ", argv[-1])) for line in lines), cap.err
    assert lines[-1].startswith(f"p2pep {command}"), cap.err
    cap.err.encode("utf-8")


def _check_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], data: bytes) -> None:
    f = tmp_path / "input.json"
    f.write_bytes(data)
    _one_line_error(capsys, ["verify", "--offline", str(f)], "verify")
    if data != (GOOD_ORDER + "\n" + GOOD_ORDER).encode() and data.strip():
        _one_line_error(capsys, ["market", "clear", str(f)], "market clear")


@pytest.mark.parametrize("data", MALFORMED, ids=range(len(MALFORMED)))
def test_cli_malformed_files(tmp_path: Path, capsys: pytest.CaptureFixture[str], data: bytes) -> None:
    _check_file(tmp_path, capsys, data)


def test_cli_output_stays_short_for_huge_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "many.jsonl"
    f.write_text("garbage\n" * 10_000 + "x" * 100_000 + "\n")
    assert main(["market", "clear", str(f)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 22 and "... and 9981 more bad line(s)" in err[-2] and "10001 bad line(s)" in err[-1]
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (17 << 20))
    _one_line_error(capsys, ["verify", "--offline", str(big)], "verify")


def test_cli_missing_file_and_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for path in (tmp_path / "missing.json", tmp_path):
        _one_line_error(capsys, ["verify", "--offline", str(path)], "verify")
        _one_line_error(capsys, ["market", "clear", str(path)], "market clear")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20,
)


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["version", "terms", "contract_hash", "settlement", "settlement_hash",
                                     "proofs", "id", "meter_id", "side", "energy_wh", "price_msat_per_kwh",
                                     "partners"]), json_values, max_size=8).map(lambda v: json.dumps(v).encode()),
))
def test_cli_never_prints_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str], data: bytes) -> None:
    f = tmp_path / "input.json"
    f.write_bytes(data)
    for argv in (["verify", "--offline", str(f)], ["market", "clear", str(f)]):
        code = main(argv)
        cap = capsys.readouterr()
        assert "Traceback" not in cap.err
        if code != 0:
            lines = cap.err.splitlines()
            assert lines and lines[-1].startswith("p2pep "), (argv, cap.err)


# -- the console's times ------------------------------------------------------------------------------
